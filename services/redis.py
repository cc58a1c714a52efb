"""Redis from the Debian package, with persistence suited to Big Bertha.

Legacy keeps state in Redis that exists nowhere else: Big Bertha's pending increments and
unfinished batches (account counts not yet in Cassandra) and the Check Uniques sets. So
Redis writes an append-only file synced every second (`appendonly yes`, `appendfsync
everysec`): a restart or a crash of Redis loses at most the last second of writes, rather
than everything. RDB snapshots stay off (the AOF is the copy; its rewrites start with an
RDB preamble to load fast).
"""

from __future__ import annotations

import shutil

from services.base import Service


class RedisService(Service):
    name = "redis"
    stop_grace_s = 30.0

    @property
    def host(self) -> str:
        return self.settings.redis.host

    def ports(self) -> dict[str, int]:
        return {"client": self.settings.redis.port}

    def missing(self) -> str | None:
        return None if shutil.which("redis-server") else "redis-server (apt package redis-server)"

    def configure(self) -> None:
        # A config file (mode 0600) rather than argv, so a password never shows in ps or logs.
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            'appendfilename "appendonly.aof"',
            'appenddirname "appendonlydir"',
            "aof-use-rdb-preamble yes",
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 64mb",
            "daemonize no",
            "set-proc-title no",
            f'dir "{self.dir}"',
            'logfile ""',
        ]
        if self.settings.redis.password is not None:
            lines.append(f"requirepass {self.settings.redis.password.get_secret_value()}")
        conf = self.dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", str(self.dir / "redis.conf")]

    def probe(self) -> str:
        import redis

        client = redis.Redis(**self.settings.redis.client_kwargs(), socket_timeout=5)
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
            info: dict[str, object] = client.info("server")  # type: ignore[assignment]
            return str(info["redis_version"])
        finally:
            client.close()
