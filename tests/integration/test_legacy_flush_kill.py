"""The Big Bertha flusher SIGKILLed between its Cassandra write and its Redis delete (the
chaos knob `kill_flush`), on the real servers: legacy's documented flaw, measured.

Only the flusher process is killed (by itself), never a server: it runs on the shared
servers with an isolated Env (its own queues, Redis prefix and keyspace).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from counting import Recount
from counting.generate import GeneratorConfig, generate
from legacy.app import WorkerOptions
from legacy.bertha import DEFAULT_LEASE_S
from legacy.chaos import Chaos
from legacy.producer import publish_lines
from legacy.status import Status, read_status
from legacy.worker import WorkerProcess, start_flusher, start_worker
from settings.model import Settings
from tests.integration.legacy_env import Env, isolated

pytestmark = pytest.mark.integration

WINDOW = 2  # partition chunks written at once: the batch takes many windows
DEADLINE_S = 180.0


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    narrow = settings.model_copy(
        update={"cassandra": settings.cassandra.model_copy(update={"write_concurrency": WINDOW})}
    )
    with isolated(narrow, tmp_path, names="tfk") as e:
        yield e


def wait_until(
    what: str, ok: Callable[[], bool], observed: Callable[[], str], timeout_s: float = DEADLINE_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s: {observed()}"
        time.sleep(0.3)


def status(env: Env) -> Status:
    return read_status(env.settings, ask_workers=False)


def test_a_flusher_killed_between_write_and_delete_over_counts_exactly_that_window(
    env: Env,
) -> None:
    config = GeneratorConfig(n=300, seed=13, companies=5, customers=40, facets=4)
    lines = [json.dumps(e, ensure_ascii=False) for e in generate(config)]
    truth = Recount()
    for line in lines:
        truth.add_raw(line)
    want: dict[object, tuple[int, int]] = {c.key: (c.count, c.uniques) for c in truth.account()}
    # the worker counts every event into Big Bertha without flushing (no flush thread)
    worker = start_worker(
        env.settings, WorkerOptions(concurrency=2, flush_interval_s=0), env.tmp / "worker.log"
    )
    flushers: list[WorkerProcess] = []
    try:
        publish_lines(env.settings.rabbitmq, lines)
        wait_until(
            "the worker did not process every event",
            lambda: (
                status(env).stats.get("processed", 0) + status(env).stats.get("dead_lettered", 0)
                >= len(lines)
            ),
            lambda: f"{status(env).to_dict()}\n{worker.log_tail()}",
        )
        pending = status(env).pending_fields
        assert pending == 2 * len(want), status(env).to_dict()  # a c and a u field per key

        # a flusher with the knob on takes the whole as one batch and kills itself after
        # its first window of chunks is in Cassandra, before deleting it from the batch
        chaos = Chaos(kill_flush=1.0)
        first = start_flusher(env.settings, env.tmp / "flusher-1.log", 0.2, chaos)
        flushers.append(first)
        wait_until("the flusher did not die", lambda: not first.alive(), first.log_tail)
        assert first.process.returncode == -signal.SIGKILL, first.log_tail()
        assert "chaos: killing the flusher" in first.log_tail()
        killed = status(env)
        stats = killed.stats
        assert stats.get("chaos_killed_flushes") == 1, stats
        # partly written: the store holds exactly the killed window (at most WINDOW
        # partition chunks), the batch still holds everything, that window included
        written = env.account()
        assert 0 < len(written) < len(want), (len(written), len(want))
        assert killed.batches == 1 and killed.pending_fields == pending, killed.to_dict()
        assert stats["chaos_unconfirmed_keys"] == len(written)
        assert stats["chaos_unconfirmed_count"] == sum(c for c, _ in written.values())
        assert stats["chaos_unconfirmed_uniques"] == sum(u for _, u in written.values())
        assert all(written[k] == want[k] for k in written)  # that window was written right
        assert any("killed between write and delete" in e for e in killed.chaos), killed.chaos

        # a new flusher (the knob still on) claims the batch once its lease expired and
        # finishes it: the batch killed a flusher already, it does not kill this one
        began = time.monotonic()
        second = start_flusher(env.settings, env.tmp / "flusher-2.log", 0.2, chaos)
        flushers.append(second)
        wait_until(
            "Big Bertha did not empty after the lease expired",
            lambda: (s := status(env)).pending_fields == 0 and s.batches == 0,
            lambda: f"{status(env).to_dict()}\n{second.log_tail()}",
            timeout_s=DEFAULT_LEASE_S + DEADLINE_S,
        )
        assert second.alive(), second.log_tail()
        assert time.monotonic() - began > DEFAULT_LEASE_S / 2  # it waited for the lease
        assert status(env).stats.get("chaos_killed_flushes") == 1
    finally:
        for process in [worker, *flushers]:
            if process.alive():
                process.stop()

    # legacy = the truth + the killed window written twice: nothing lost, and the excess is
    # exactly what the killed flusher recorded
    got = env.account()
    assert got.keys() == want.keys()
    assert got == {
        k: (c + written.get(k, (0, 0))[0], u + written.get(k, (0, 0))[1])
        for k, (c, u) in want.items()
    }
    under = {k: (got[k], want[k]) for k in want if got[k][0] < want[k][0]}
    assert not under
    excess = sum(c for c, _ in got.values()) - sum(c for c, _ in want.values())
    assert excess == stats["chaos_unconfirmed_count"] > 0
    assert env.customer() == {c.key: c.count for c in truth.customer()}
