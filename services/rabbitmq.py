"""RabbitMQ from the Debian package, run as the current user from /usr/lib/rabbitmq/bin.

The /usr/sbin wrappers re-exec as user rabbitmq; calling the scripts under /usr/lib directly
with HOME set to the service directory keeps the node, its cookie and any CLI call consistent.
"""

from __future__ import annotations

from pathlib import Path

from services import procs
from services.base import Service

BIN = Path("/usr/lib/rabbitmq/bin")
EPMD_PORT = 4370  # not the default 4369, so a system Erlang node does not collide
# One scheduler (and one dirty CPU scheduler) is plenty for tests on a 2-core machine;
# rabbitmq-server already passes +sbwt none (no busy-waiting).
ERL_ARGS = "+S 1:1 +SDcpu 1:1"
VM_MEMORY_HIGH_WATERMARK_BYTES = 1024**3


class RabbitService(Service):
    name = "rabbitmq"
    stop_grace_s = 60.0

    @property
    def host(self) -> str:
        return self.settings.rabbitmq.host

    def ports(self) -> dict[str, int]:
        port = self.settings.rabbitmq.port
        return {"amqp": port, "dist": port + 20000, "epmd": EPMD_PORT}

    @property
    def nodename(self) -> str:
        """One node name per AMQP port, so two instances can share the epmd."""
        return f"abacus-{self.port}@localhost"

    def shareable(self, role: str, owners: set[int]) -> bool:
        return role == "epmd" and all(
            procs.command_line(p).endswith("epmd -daemon") for p in owners
        )

    def missing(self) -> str | None:
        server = BIN / "rabbitmq-server"
        return None if server.is_file() else f"{server} (apt package rabbitmq-server)"

    def configure(self) -> None:
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("# abacus: everything is set by env vars\n")
        # Memory is load-driven (queued messages); 1 GiB keeps the four servers in the 4 GiB
        # budget: above half of it queues page to disk, above it publishers are blocked.
        # Measured as memory allocated by the VM, not RSS: after a burst the Erlang allocators
        # keep their carriers, RSS stays at the peak and an RSS-based alarm never clears.
        (self.dir / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 50MB\n"
            f"vm_memory_high_watermark.absolute = {VM_MEMORY_HIGH_WATERMARK_BYTES}\n"
            "vm_memory_calculation_strategy = allocated\n"
        )

    def environment(self) -> dict[str, str]:
        ports = self.ports()
        return {
            "HOME": str(self.dir),  # .erlang.cookie lives here, shared by server and CLI
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(ports["amqp"]),
            "RABBITMQ_DIST_PORT": str(ports["dist"]),
            "ERL_EPMD_PORT": str(ports["epmd"]),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(self.dir / "beam.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
        }

    def command(self) -> list[str]:
        return [str(BIN / "rabbitmq-server")]

    def probe(self) -> str:
        import amqp

        cfg = self.settings.rabbitmq
        conn = amqp.Connection(
            host=self.address,
            userid=cfg.username,
            password=cfg.password.get_secret_value(),
            virtual_host=cfg.vhost,
            connect_timeout=5,
        )
        conn.connect()
        try:
            version = conn.server_properties.get("version", b"unknown")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            conn.close()
