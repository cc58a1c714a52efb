"""Where the local servers keep their jars, configuration, data and logs."""

from __future__ import annotations

from pathlib import Path

from settings.model import Settings


def data_dir(settings: Settings) -> Path:
    """The absolute data directory the project owns (`services.data_dir`, default ./.abacus)."""
    return settings.services.data_dir.expanduser().resolve()


def lib_dir(settings: Settings, name: str) -> Path:
    """Downloaded jars of one component: kafka, cassandra or flink (git-ignored)."""
    return data_dir(settings) / "lib" / name


def service_dir(settings: Settings, name: str) -> Path:
    """Configuration, data, pid file and log of one running service."""
    return data_dir(settings) / name


def flink_kafka_connector_jar(settings: Settings) -> Path:
    """The Flink Kafka SQL connector jar installed by `abacus services install`.

    Pass it to PyFlink as `env.add_jars(path.as_uri())`. Raises FileNotFoundError when it has
    not been installed yet.
    """
    _group, artifact, version = settings.services.flink_kafka_connector.split(":")
    path = lib_dir(settings, "flink") / f"{artifact}-{version}.jar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `abacus services install`")
    return path
