"""The cutover's stage row on a real Cassandra: compare-and-set, and the transition log."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from cutover.state import INITIAL, Conflict, StageStore, TransitionLog
from settings.model import Settings
from tests.integration.cutover_env import private_ops

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ops(settings: Settings, services_up: object) -> Iterator[tuple[Settings, object]]:
    with private_ops(settings) as (isolated, session, _):
        yield isolated, session


def test_no_row_is_legacy_and_writes_are_compare_and_set(ops: tuple[Settings, object]) -> None:
    settings, session = ops
    store = StageStore(session, settings.cassandra, level=f"l{uuid.uuid4().hex[:6]}")
    assert store.get() == INITIAL
    first = store.write(INITIAL, transition={"to": "shadow", "step": 0})
    assert first.version == 1
    assert store.get(serial=True).transition == {"to": "shadow", "step": 0}
    # a second writer that read the row before the first write loses, and is told what is there
    with pytest.raises(Conflict) as lost:
        store.write(INITIAL, transition={"to": "shadow", "step": 0})
    assert lost.value.current.version == 1
    done = store.write(first, stage="shadow", transition=None, since_ms=1)
    assert (done.stage, done.version, done.transition) == ("shadow", 2, None)
    with pytest.raises(Conflict):
        store.write(first, stage="m1")  # stale: read at version 1
    assert store.get().stage == "shadow"


def test_concurrent_writers_one_wins(ops: tuple[Settings, object]) -> None:
    """Eight threads write from the same version at once: exactly one applies."""
    settings, session = ops
    store = StageStore(session, settings.cassandra, level=f"l{uuid.uuid4().hex[:6]}")
    base = store.write(INITIAL, stage="legacy")
    won, lost = [], []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            won.append(store.write(base, transition={"owner": i}))
        except Conflict:
            lost.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(lost)) == (1, 7), f"won {won}, lost {lost}"
    assert store.get(serial=True).transition == won[0].transition


def test_transition_log_newest_first(ops: tuple[Settings, object]) -> None:
    settings, session = ops
    log = TransitionLog(session, settings.cassandra, level=f"l{uuid.uuid4().hex[:6]}")
    ids = []
    for to in ("shadow", "m1"):
        at = log.new_id()
        ids.append(at)
        log.start(
            at,
            {
                "kind": "advance",
                "from_stage": "legacy",
                "to_stage": to,
                "who": "ops",
                "host": "h",
                "audit_ids": ["a1"],
                "forced": False,
                "reason": None,
                "state": "running",
                "steps": [],
            },
        )
    log.end(ids[0], "done", [{"name": "x", "ms": 3}])
    rows = log.history()
    assert [r["id"] for r in rows] == ids[::-1]
    assert rows[1]["state"] == "done" and rows[1]["steps"] == [{"name": "x", "ms": 3}]
    assert rows[0]["state"] == "running" and rows[0]["audit_ids"] == ["a1"]
    assert rows[1]["at_ms"] <= rows[0]["at_ms"]
