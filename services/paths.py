"""Where the local servers keep their jars, configuration, data and logs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from settings.model import Settings


def data_dir(settings: Settings) -> Path:
    """The absolute data directory the installation owns (`services.data_dir`: absolute once
    the settings are loaded; a copy given a relative one is taken from the current directory)."""
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


# The jobs' Java code (the counter sink, the drain counter UDF), built from source by
# `abacus services install`.
JVM_SOURCE = Path(__file__).resolve().parents[1] / "abacus" / "jvm"


def jvm_source_hash() -> str:
    """A digest of its pom and main sources: the jar's name carries it, so a change to the
    sources means a new build, never a stale jar (its tests, src/test, are not in the jar)."""
    digest = hashlib.sha256()
    sources = sorted((JVM_SOURCE / "src" / "main").rglob("*.java"))
    files = [JVM_SOURCE / "pom.xml", *sources]
    for path in files:
        digest.update(path.relative_to(JVM_SOURCE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def jvm_jar(settings: Settings, must_exist: bool = True) -> Path:
    """The jar built from the current Java sources (FileNotFoundError when not built)."""
    path = lib_dir(settings, "flink") / f"abacus-jvm-{jvm_source_hash()}.jar"
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `abacus services install`")
    return path
