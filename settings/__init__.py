"""Settings: one object per external system, from a TOML file and ABACUS_* variables.

Precedence (highest first): ABACUS_* environment variables (nested with ``__``, e.g.
``ABACUS_KAFKA__BOOTSTRAP_SERVERS``), the TOML file (``--config``, ``ABACUS_CONFIG`` or
``./abacus.toml``), then the defaults below, which point at the local servers that
``abacus services up`` starts. Secrets are ``SecretStr``: they never reach ``repr``, logs
or ``abacus config show``. ``services.data_dir`` (everything the installation keeps) is
absolute once loaded and never the current directory's: see ``Settings._absolute_paths``.
"""

from settings.model import (
    BridgeSettings,
    CassandraSettings,
    CutoverSettings,
    FlinkSettings,
    KafkaSettings,
    LegacySettings,
    RabbitSettings,
    RedisSettings,
    ServeSettings,
    ServicesSettings,
    Settings,
    load_settings,
)

__all__ = [
    "BridgeSettings",
    "CassandraSettings",
    "CutoverSettings",
    "FlinkSettings",
    "KafkaSettings",
    "LegacySettings",
    "RabbitSettings",
    "RedisSettings",
    "ServeSettings",
    "ServicesSettings",
    "Settings",
    "load_settings",
]
