"""The functions other code calls: ensure_up, stop, status (the CLI only renders them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.base import (
    NotInstalledError,
    Progress,
    Service,
    ServiceError,
    ServiceStatus,
    StartError,
    StartResult,
    StopResult,
)
from services.cassandra import CassandraService
from services.kafka import KafkaService
from services.prometheus import PrometheusService
from services.rabbitmq import RabbitService
from services.redis import RedisService
from settings.model import Settings

# Slowest first, so it starts first.
SERVICES: dict[str, type[Service]] = {
    "cassandra": CassandraService,
    "kafka": KafkaService,
    "rabbitmq": RabbitService,
    "redis": RedisService,
    "prometheus": PrometheusService,
}
NAMES: tuple[str, ...] = ("kafka", "cassandra", "rabbitmq", "redis")
# started only when asked (services.prometheus, `up --prometheus` or by name); part of the
# default set when asked or running, so `down` and `status` see one started by `up --prometheus`
OPTIONAL: tuple[str, ...] = ("prometheus",)
ALL: tuple[str, ...] = NAMES + OPTIONAL
MEMORY_BUDGET_BYTES = 4 * 1024**3


def default_names(settings: Settings) -> tuple[str, ...]:
    """The four servers, and Prometheus when the settings ask for it or it runs."""
    on = settings.services.prometheus or PrometheusService(settings).pid() is not None
    return NAMES + (OPTIONAL if on else ())


def services(settings: Settings, names: Iterable[str] | None = None) -> list[Service]:
    """Service objects for `names` (default: `default_names`), slowest first."""
    wanted = set(names or default_names(settings))
    unknown = wanted - set(SERVICES)
    if unknown:
        raise ServiceError(f"unknown service(s): {', '.join(sorted(unknown))}; known: {ALL}")
    return [cls(settings) for name, cls in SERVICES.items() if name in wanted]


def ensure_up(
    settings: Settings,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[StartResult]:
    """Start the named servers (default all) unless ours already run; return once all serve.

    Checks first, before starting anything: everything installed, and no port held by a
    process abacus did not start (PortInUseError). Then starts the servers concurrently and
    waits until each answers a real client round trip. Raises StartError naming each server
    that died or timed out, with its log file and last lines; the others are left running.
    """
    chosen = services(settings, names)
    to_start = [svc for svc in chosen if svc.pid() is None]
    for svc in to_start:
        missing = svc.missing()
        if missing:
            raise NotInstalledError(
                f"{svc.name} is not installed ({missing}): run `abacus services install`"
            )
    for svc in to_start:
        svc.check_ports()
    timeout_s = settings.services.start_timeout_s
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = [(svc, pool.submit(svc.start, timeout_s, progress)) for svc in chosen]
    results, errors = [], []
    for svc, future in futures:
        try:
            results.append(future.result())
        except ServiceError as exc:
            errors.append(str(exc))
        except Exception as exc:  # a bug or an OS error: still name the service
            errors.append(f"{svc.name}: {type(exc).__name__}: {exc}\n{svc.log_excerpt()}")
    if errors:
        raise StartError("\n\n".join(errors))
    return results


def stop(
    settings: Settings, names: Sequence[str] | None = None, purge: bool = False
) -> list[StopResult]:
    """Stop the named servers (default all) concurrently; `purge` also deletes their data."""
    chosen = services(settings, names)
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        return list(pool.map(lambda svc: svc.stop(purge=purge), chosen))


@dataclass(frozen=True, slots=True)
class StatusReport:
    services: list[ServiceStatus]
    total_rss_bytes: int
    budget_bytes: int = MEMORY_BUDGET_BYTES

    @property
    def all_running(self) -> bool:
        return all(s.state == "running" for s in self.services)

    def as_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return {
            "services": [asdict(s) for s in self.services],
            "total_rss_bytes": self.total_rss_bytes,
            "budget_bytes": self.budget_bytes,
            "within_budget": self.total_rss_bytes <= self.budget_bytes,
            "all_running": self.all_running,
        }


def status(settings: Settings, names: Sequence[str] | None = None) -> StatusReport:
    """State, address, pid(s), version (from a live probe) and RSS of each server."""
    chosen = services(settings, names)
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        found = list(pool.map(lambda svc: svc.status(), chosen))
    order = {name: i for i, name in enumerate(ALL)}
    found.sort(key=lambda s: order[s.name])
    return StatusReport(found, sum(s.rss_bytes for s in found))
