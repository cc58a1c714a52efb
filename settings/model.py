from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from settings.names import check_keyspace, check_keyspace_prefix, check_replication
from settings.output import visible


class _Model(BaseModel):
    """A settings section: an unknown key is an error (a typo is never silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def user_data_dir() -> Path:
    """The per-user data directory: `$XDG_DATA_HOME/abacus`, else `~/.local/share/abacus`
    (a relative XDG_DATA_HOME is ignored, as the XDG spec says)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "abacus"


# the source tree this code runs from, when it is a git checkout (an editable install)
_CHECKOUT = Path(__file__).resolve().parents[1]


def checkout_data_dir() -> Path | None:
    """`.abacus` in the git checkout this code runs from (`pip install -e`, `make`), so a
    checkout is one installation wherever its commands are run; None for an installed
    package."""
    if (_CHECKOUT / ".git").exists() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / ".abacus"
    return None


def _section_data_dir() -> Path:
    """A section's own default (Settings resolves the real one: `_absolute_paths`)."""
    return checkout_data_dir() or user_data_dir()


class ServicesSettings(_Model):
    """The local servers that `abacus services` runs (ignored for remote clusters)."""

    # everything the installation keeps (pid files, jars, job state, audits' work...):
    # absolute once loaded (see Settings._absolute_paths), never the current directory's
    data_dir: Path = Field(default_factory=_section_data_dir)
    kafka_version: str = "4.1.1"
    cassandra_version: str = "5.0.6"
    flink_kafka_connector: str = "org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2"
    kafka_heap_mb: int = 512
    cassandra_heap_mb: int = 1024
    start_timeout_s: float = 180.0
    # how long-running commands log (`--log-format` overrides): text, or JSON one event a
    # line; the processes a command starts get its settings, so they log the same way
    log_format: Literal["text", "json"] = "text"
    # a local Prometheus server (services/prometheus.py) that scrapes the bridge's and the
    # read API's metrics and evaluates the alert rules: started by `services up` when true
    # (or `services up --prometheus`), on 127.0.0.1:prometheus_port
    prometheus: bool = False
    prometheus_port: int = Field(default=19090, ge=1, le=65535)
    prometheus_scrape_s: float = Field(default=15.0, ge=1.0)  # scrape and rule interval


class KafkaSettings(_Model):
    bootstrap_servers: str = "127.0.0.1:19092"
    topic: str = "abacus.events"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # topics are created with this min.insync.replicas (<= replication_factor)
    min_insync_replicas: int = Field(default=1, ge=1)
    dlq_topic: str = "abacus.dlq"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) is above "
                f"replication_factor ({self.replication_factor}): every write "
                "with acks=all would fail"
            )
        return self

    def client_config(self) -> dict[str, Any]:
        """librdkafka configuration (confluent-kafka) for these settings."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf


class CassandraSettings(_Model):
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    port: int = 19042
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    ssl_cafile: Path | None = None
    local_dc: str | None = None
    keyspace_prefix: str = ""
    replication: dict[str, Any] = Field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1}
    )
    request_timeout_s: float = 30.0
    write_concurrency: int = Field(default=16, ge=1)
    # most partitions one write batch may span: several small partitions per request cut
    # the per-request cost (client and server) ~4x here; 1 = single-partition batches only
    batch_partitions: int = Field(default=20, ge=1)

    @field_validator("keyspace_prefix")
    @classmethod
    def _prefix_is_an_identifier(cls, value: str) -> str:
        return check_keyspace_prefix(value)

    @field_validator("replication")
    @classmethod
    def _replication_is_safe_cql(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_replication(value)

    def keyspace(self, name: str) -> str:
        """The physical keyspace of a logical one (legacy, shadow, serving, m2, ops),
        checked: it goes into CQL text unquoted (a copy made with `model_copy(update=...)`
        is not validated, so the check is here too)."""
        return check_keyspace(f"{self.keyspace_prefix}{name}")


class RabbitSettings(_Model):
    host: str = "127.0.0.1"
    port: int = 5673
    vhost: str = "/"
    username: str = "guest"
    password: SecretStr = SecretStr("guest")
    ssl: bool = False
    exchange: str = "abacus.events"
    routing_key: str = "aggregate"
    legacy_queue: str = "legacy.aggregate"
    shadow_queue: str = "bridge.shadow"
    dead_letter_queue: str = "legacy.dead_letter"
    prefetch: int = Field(default=256, ge=1)
    # the bridge's mirror queue is bounded (x-max-length) so a stopped bridge never fills
    # RabbitMQ up to its memory alarm (which would block legacy's publishers); what
    # overflows is dead-lettered to mirror_overflow_queue and counted there
    mirror_max_length: int = Field(default=1_000_000, ge=1)
    # and at most this many bytes of message bodies (x-max-length-bytes), whichever first
    mirror_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    mirror_overflow_queue: str = "bridge.shadow.overflow"
    # who consumes the legacy queue, and its unacked count, come from rabbitmqctl (the
    # cutover's hand-over checks them): None = the node `abacus services` runs; for a
    # cluster, its node name (rabbit@mq-1) and Erlang cookie (a secret: never on a command
    # line, never printed), with epmd and the distribution port reachable from here
    ctl_node: str | None = Field(default=None, pattern=r"^\w[\w.\-]*@[\w.\-]+$")
    ctl_cookie: SecretStr | None = None
    ctl_epmd_port: int = Field(default=4369, ge=1, le=65535)

    def url(self) -> str:
        """AMQP URL with the password in it: pass to clients only, never print it. User,
        password and vhost are percent-encoded, so a `/ # ? @ :` in one of them can neither
        move the password into the host or path (where a client's error would show it) nor
        change the address."""
        scheme = "amqps" if self.ssl else "amqp"
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        user = quote(self.username, safe="")
        pw = quote(self.password.get_secret_value(), safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}:{pw}@{host}:{self.port}/{vhost}"


class RedisSettings(_Model):
    host: str = "127.0.0.1"
    port: int = 16379
    db: int = 0
    password: SecretStr | None = None
    ssl: bool = False
    prefix: str = "abacus:"
    uniques_ttl_s: int = Field(default=40 * 86400, ge=1)

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "password": self.password.get_secret_value() if self.password else None,
            "ssl": self.ssl,
        }


class FlinkSettings(_Model):
    jobmanager: str | None = None  # host:port of a remote cluster's REST API; None = MiniCluster
    parallelism: int = Field(default=1, ge=1)
    # default <services.data_dir>/flink/checkpoints (see Settings._absolute_paths)
    checkpoint_dir: Path = Field(
        default_factory=lambda: _section_data_dir() / "flink" / "checkpoints"
    )
    checkpoint_interval_ms: int = Field(default=10_000, ge=100)
    window_ms: int = Field(default=1_000, ge=10)  # the sinks write their sums this often
    dedup_ttl_s: int = Field(default=7 * 86400, ge=1)
    uniques_ttl_s: int = Field(default=40 * 86400, ge=1)  # as legacy's Redis sets
    heap_mb: int = Field(default=640, ge=256)  # per local job JVM
    managed_mb: int = Field(default=192, ge=64)  # bounds RocksDB
    # a failing job is restarted this many times, after restart_delay_s doubling up to
    # restart_max_delay_s, then ends FAILED; the count starts again once the job has run
    # restart_reset_s without failing. 0: a failure ends the job at once
    restart_attempts: int = Field(default=3, ge=0)
    restart_delay_s: float = Field(default=5.0, gt=0)
    restart_max_delay_s: float = Field(default=60.0, gt=0)
    restart_reset_s: float = Field(default=600.0, gt=0)
    # a local job's Flink Prometheus reporter (the job's and Flink's own metrics): 0 = a
    # free port, announced to the local Prometheus (services/targets.py), None = off
    metrics_port: int | None = Field(default=0, ge=0, le=65535)


class BridgeSettings(_Model):
    # Prometheus metrics: 0 = a free port (announced to the local Prometheus through
    # services/targets.py), None = off
    metrics_port: int | None = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # the metrics server binds here (0.0.0.0 only if set)


class LegacySettings(_Model):
    """The legacy Celery workers (`abacus legacy worker`)."""

    # Celery task events (task-received/started/succeeded... and the worker's heartbeats),
    # for Flower and `celery events`: one more message per task and state, so off by default
    task_events: bool = False
    # each worker's Prometheus metrics (its pool's children summed): 0 = a free port,
    # announced to the local Prometheus (services/targets.py), None = off
    metrics_port: int | None = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class CutoverSettings(_Model):
    """The staged cutover (`abacus cutover`)."""

    gate_days: int = Field(default=3, ge=1)  # consecutive clean daily audits to enter m1
    # the live bridge's topic; each entry into m1 uses a fresh `<live_topic>.e<epoch>`
    live_topic: str = "abacus.live"
    handover_timeout_s: float = Field(default=300.0, gt=0)  # each wait of a hand-over step


class ServeSettings(_Model):
    """The read API (`abacus serve`)."""

    host: str = "127.0.0.1"  # bind address (another only if set)
    port: int = Field(default=8470, ge=1, le=65535)
    token: SecretStr | None = None  # bearer token every request must carry; None: no auth
    experiment_share: float = Field(default=0.0, ge=0.0, le=1.0)  # also read the candidate
    stage_refresh_s: float = Field(default=1.0, gt=0)  # how stale the stage may be


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ABACUS_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    services: ServicesSettings = ServicesSettings()
    kafka: KafkaSettings = KafkaSettings()
    cassandra: CassandraSettings = CassandraSettings()
    rabbitmq: RabbitSettings = RabbitSettings()
    redis: RedisSettings = RedisSettings()
    flink: FlinkSettings = FlinkSettings()
    bridge: BridgeSettings = BridgeSettings()
    legacy: LegacySettings = LegacySettings()
    cutover: CutoverSettings = CutoverSettings()
    serve: ServeSettings = ServeSettings()

    _data_dir_origin: str = PrivateAttr(default="")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path()
        if path is not None:
            sources.append(_TomlFile(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        """The data directory made absolute once, so no command depends on the directory it
        is run from: `services.data_dir` as given (relative: to its TOML file's directory,
        or else to the current directory now); else the git checkout's own `.abacus` when
        the code runs from one (as it always was there, whatever the config file); else
        `.abacus` beside the config file in effect; else the per-user `user_data_dir()`.
        `flink.checkpoint_dir` likewise, by default under the data directory."""
        config = _config_path()
        if "data_dir" in self.services.model_fields_set:
            data_dir = self.services.data_dir.expanduser().resolve()
            self._data_dir_origin = _data_dir_origin(config)
        elif (checkout := checkout_data_dir()) is not None:
            data_dir = checkout
            self._data_dir_origin = "the checkout's own (the code runs from a git checkout)"
        elif config is not None and config.is_file():
            data_dir = config.resolve().parent / ".abacus"
            self._data_dir_origin = f"beside the config file {config.resolve()}"
        else:
            data_dir = user_data_dir().expanduser().resolve()
            self._data_dir_origin = "the per-user default (no config file in effect)"
        self.services = self.services.model_copy(update={"data_dir": data_dir})
        if "checkpoint_dir" in self.flink.model_fields_set:
            checkpoints = self.flink.checkpoint_dir.expanduser().resolve()
        else:
            checkpoints = data_dir / "flink" / "checkpoints"
        self.flink = self.flink.model_copy(update={"checkpoint_dir": checkpoints})
        return self

    @property
    def data_dir_origin(self) -> str:
        """Where `services.data_dir` came from, in words (for `config show`)."""
        return self._data_dir_origin

    def masked(self) -> dict[str, Any]:
        """The settings as plain data, secrets replaced by '**********'."""
        return self.model_dump(mode="json")


# path settings that a TOML file may give relative to its own directory
_FILE_RELATIVE = (("services", "data_dir"), ("flink", "checkpoint_dir"))


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file, a relative path among `_FILE_RELATIVE` taken from the file's
    directory (the same file means the same installation wherever a command runs)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        base = Path(file_path).resolve().parent
        for section, key in _FILE_RELATIVE:
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                table[key] = str(base / Path(table[key]).expanduser())
        return data


def _data_dir_origin(config: Path | None) -> str:
    """Which source gave `services.data_dir` (environment before the file), in words."""
    env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith("ABACUS_SERV")}
    if "ABACUS_SERVICES__DATA_DIR" in env:
        return "ABACUS_SERVICES__DATA_DIR"
    if "ABACUS_SERVICES" in env:
        try:
            given = json.loads(env["ABACUS_SERVICES"])
        except ValueError:
            given = None
        if isinstance(given, dict) and "data_dir" in given:
            return "ABACUS_SERVICES (the settings of the process that started this one)"
    if config is not None and config.is_file():
        try:
            table = tomllib.loads(config.read_text(encoding="utf-8")).get("services", {})
        except (OSError, ValueError):
            table = {}
        if isinstance(table, dict) and "data_dir" in table:
            return f"services.data_dir in {config.resolve()}"
    return "set by the program"


_CONFIG_OVERRIDE: Path | None = None


def _config_path() -> Path | None:
    if _CONFIG_OVERRIDE is not None:
        return _CONFIG_OVERRIDE
    env = os.environ.get("ABACUS_CONFIG")
    if env:
        return Path(env)
    default = Path("abacus.toml")
    return default if default.is_file() else None


class SettingsError(ValueError):
    """Invalid settings, said in one line that names each wrong field and what it should
    be, never the value given (pydantic's own message prints input values: a wrongly typed
    secret would be shown)."""


def describe(exc: ValidationError, most: int = 3) -> str:
    """One line naming each invalid field and what is wrong with it, without the input."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        msg = error["msg"].removeprefix("Value error, ")
        parts.append(visible(f"{where}: {msg}"))
    more = len(parts) - most
    return "; ".join(parts[:most]) + (f" (and {more} more)" if more > 0 else "")


def load_settings(config: Path | None = None) -> Settings:
    """Compose the settings once (the CLI does this); `config` overrides ABACUS_CONFIG.
    Raises `SettingsError` (one line, no values) when the settings are invalid."""
    global _CONFIG_OVERRIDE
    if config is not None and not config.is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    _CONFIG_OVERRIDE = config
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
    finally:
        _CONFIG_OVERRIDE = None
