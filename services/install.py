"""`abacus services install`: Debian packages and Maven jars, skipping what is present."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from services import maven
from services.base import ServiceError
from services.cassandra import CassandraService
from services.kafka import KafkaService
from services.paths import JVM_SOURCE, data_dir, jvm_jar, lib_dir
from settings.model import Settings

APT_PACKAGES = {
    "rabbitmq-server": "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "redis-server": "/usr/bin/redis-server",
    "wrk": "/usr/bin/wrk",  # the HTTP load generator of `abacus bench serve`
    "kcat": "/usr/bin/kcat",  # reads the topics and the DLQ with their headers (README)
    # Prometheus (the metrics server) and promtool, which checks and tests
    # the alert rules (services/rules/alerts.yml); its own daemon is not started
    "prometheus": "/usr/bin/promtool",
    # the real browser the console page's test loads it in (headless)
    "chromium": "/usr/bin/chromium",
}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
Say = Callable[[str], None]


def install(settings: Settings, say: Say = print) -> None:
    """Install everything `abacus services up` and the Flink jobs need; idempotent."""
    install_debian_packages(say)
    install_jars(settings, say)


def install_debian_packages(say: Say = print) -> None:
    missing = [pkg for pkg, binary in APT_PACKAGES.items() if not Path(binary).exists()]
    if not missing:
        say(f"skip apt: {', '.join(APT_PACKAGES)} already installed")
        return
    if os.geteuid() != 0:
        raise ServiceError(f"installing {', '.join(missing)} needs root: sudo apt-get install")
    say(f"apt-get install {' '.join(missing)} (daemons not auto-started)")
    # A policy-rc.d exiting 101 keeps the packages' postinst from starting the default daemons
    # on 5672/6379. Ours is removed afterwards; an existing one is left as it is.
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        if _apt(["install", "-y", "--no-install-recommends", *missing]) != 0:
            say("apt-get install failed: running apt-get update and retrying")
            _apt(["update"])
            if _apt(["install", "-y", "--no-install-recommends", *missing]) != 0:
                raise ServiceError(f"apt-get install {' '.join(missing)} failed")
    finally:
        if ours:
            POLICY_RC_D.unlink(missing_ok=True)


def _apt(args: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = shutil.which("apt-get") or "apt-get"
    return subprocess.run([apt, "-q", *args], env=env, check=False).returncode


def install_jars(settings: Settings, say: Say = print) -> None:
    versions = settings.services
    kafka = KafkaService(settings)
    if kafka.missing() is None:
        say(f"skip kafka {versions.kafka_version}: jars in {kafka.lib}")
    else:
        say(f"mvn: kafka {versions.kafka_version} -> {kafka.lib}")
        maven.copy_dependencies("kafka", {"kafka.version": versions.kafka_version}, kafka.lib)
    cassandra = CassandraService(settings)
    if cassandra.missing() is None:
        say(f"skip cassandra {versions.cassandra_version}: jars in {cassandra.lib}")
    else:
        say(f"mvn: cassandra {versions.cassandra_version} -> {cassandra.lib}")
        maven.copy_dependencies(
            "cassandra", {"cassandra.version": versions.cassandra_version}, cassandra.lib
        )
    _group, artifact, version = versions.flink_kafka_connector.split(":")
    jar = lib_dir(settings, "flink") / f"{artifact}-{version}.jar"
    if jar.is_file():
        say(f"skip flink connector: {jar}")
    else:
        say(f"mvn: {versions.flink_kafka_connector} -> {jar.parent}")
        maven.copy_artifact(versions.flink_kafka_connector, jar.parent)
    built = jvm_jar(settings, must_exist=False)  # the jobs' Java code, from source
    if built.is_file():
        say(f"skip the jobs' java code: {built}")
    else:
        say(f"mvn: build the jobs' java code ({JVM_SOURCE}) -> {built}")
        for old in built.parent.glob("abacus-jvm-*.jar"):
            old.unlink()
        maven.package(
            JVM_SOURCE, data_dir(settings) / "build" / "abacus-jvm", "abacus-jvm-1.jar", built
        )
