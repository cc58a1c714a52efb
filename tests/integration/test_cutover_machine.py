"""The cutover machine on a real Cassandra, with steps of its own (tests/integration/
cutover_fake.py): preview without --yes, gates and --force, SIGKILL halfway then resume or
rollback, two operators at once. The real stages' steps are exercised by the e2e test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutover.machine import GateFailed, Machine, Refused
from cutover.state import StageStore, TransitionLog
from settings.model import Settings
from storage import connect
from tests.integration.cutover_env import private_ops
from tests.integration.cutover_fake import transitions
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

LEASE_S = 2.0


@pytest.fixture
def env(
    settings: Settings, services_up: object, tmp_path: Path
) -> Iterator[tuple[Settings, Path, str]]:
    with private_ops(settings) as (isolated, _, prefix):
        yield isolated, tmp_path, prefix


def operator(root: Path, prefix: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.cutover_fake",
            str(root),
            prefix,
            str(LEASE_S),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def journal(root: Path) -> list[str]:
    path = root / "journal"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def lease_expired(store: StageStore) -> None:
    """Wait until the killed owner's heartbeat is older than the lease."""

    def age_s() -> float:
        t = store.get().transition
        assert t is not None, "the transition disappeared"
        return (time.time() * 1000 - t["heartbeat_ms"]) / 1000

    wait_until(f"the heartbeat older than {LEASE_S} s", lambda: age_s() > LEASE_S + 0.2)


def stage_store(settings: Settings):  # type: ignore[no-untyped-def]
    session = connect(settings.cassandra)
    return (
        StageStore(session, settings.cassandra),
        TransitionLog(session, settings.cassandra),
        session,
    )


def test_preview_gate_and_force(env: tuple[Settings, Path, str]) -> None:
    settings, root, _ = env
    store, log, session = stage_store(settings)
    try:
        machine = Machine(settings, session, transitions(root), who="ops", lease_s=LEASE_S)
        (root / "go").touch()
        with pytest.raises(GateFailed) as failed:
            machine.advance("shadow", yes=True)
        assert "the gate-open file exists" in str(failed.value)
        with pytest.raises(Refused, match="--reason"):
            machine.advance("shadow", yes=True, force=True)
        (root / "gate-open").touch()
        preview = machine.advance("shadow", yes=False)  # without --yes nothing changes
        assert preview.action == "preview" and store.get().stage == "legacy"
        assert journal(root) == [] and log.history() == []
        (root / "gate-open").unlink()
        done = machine.advance("shadow", yes=True, force=True, reason="audits late, ok'd by X")
        assert (done.action, done.stage, done.forced) == ("advanced", "shadow", True)
        assert journal(root) == ["up1", "up2-wait", "up3"]
        (entry,) = log.history()
        assert entry["forced"] is True and entry["reason"] == "audits late, ok'd by X"
        assert (entry["from_stage"], entry["to_stage"], entry["who"], entry["state"]) == (
            "legacy",
            "shadow",
            "ops",
            "done",
        )
        assert entry["audit_ids"] == ["a1"] and [s["name"] for s in entry["steps"]] == [
            "up1",
            "up2-wait",
            "up3",
        ]
        with pytest.raises(Refused, match="no advance from shadow to legacy"):
            machine.advance("legacy", yes=True)
        # m1 starts a new epoch, rollback keeps it; advancing again starts the next
        assert machine.advance("m1", yes=True).stage == "m1" and store.get().epoch == 1
        assert machine.rollback(yes=True).stage == "shadow" and store.get().epoch == 1
        machine.advance("m1", yes=True)
        assert store.get().epoch == 2
        assert journal(root)[-3:] == ["m1-a", "m1-back", "m1-a"]
    finally:
        session.cluster.shutdown()


def killed_in_step_two(root: Path, prefix: str) -> None:
    (root / "gate-open").touch()
    proc = operator(root, prefix, "advance", "shadow")
    wait_until("the operator reached step 2", lambda: "up2-wait" in journal(root))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_halfway_then_advance_resumes(env: tuple[Settings, Path, str]) -> None:
    settings, root, prefix = env
    killed_in_step_two(root, prefix)
    store, log, session = stage_store(settings)
    try:
        t = store.get().transition
        assert t is not None and t["step"] == 1 and store.get().stage == "legacy"
        (root / "go").touch()
        # at once: the dead owner's heartbeat is still fresh, so another operator waits
        code, _out, err = finish(operator(root, prefix, "advance", "shadow"))
        if code == 1:
            assert "owner is alive" in err, err
            lease_expired(store)
            code, _out, err = finish(operator(root, prefix, "advance", "shadow"))
        assert code == 0, err
        assert store.get().stage == "shadow" and store.get().transition is None
        # step 1 ran once, the interrupted step again (idempotent), step 3 once
        assert journal(root) == ["up1", "up2-wait", "up2-wait", "up3"]
        (entry,) = log.history()
        assert entry["state"] == "done" and [s["name"] for s in entry["steps"]] == [
            "up1",
            "up2-wait",
            "up3",
        ]
    finally:
        session.cluster.shutdown()


def test_sigkill_halfway_then_rollback_undoes(env: tuple[Settings, Path, str]) -> None:
    settings, root, prefix = env
    killed_in_step_two(root, prefix)
    store, log, session = stage_store(settings)
    try:
        lease_expired(store)
        code, _out, err = finish(operator(root, prefix, "rollback"))
        assert code == 0, err
        assert store.get().stage == "legacy" and store.get().transition is None
        assert journal(root) == ["up1", "up2-wait", "down1", "down2"]
        undo, advance = log.history()
        assert advance["state"] == "rolled back" and (advance["to_stage"] == "shadow")
        assert undo["kind"] == "undo" and undo["state"] == "done"
    finally:
        session.cluster.shutdown()


def test_two_operators_at_once_one_wins(env: tuple[Settings, Path, str]) -> None:
    settings, root, prefix = env
    (root / "gate-open").touch()
    procs = [operator(root, prefix, "advance", "shadow") for _ in range(2)]
    wait_until("an operator reached step 2", lambda: "up2-wait" in journal(root))
    (root / "go").touch()
    results = sorted(finish(p) for p in procs)
    (won, lost) = results
    assert won[0] == 0 and lost[0] == 1, results
    assert "another operator" in lost[2] or "owner is alive" in lost[2], lost[2]
    assert journal(root) == ["up1", "up2-wait", "up3"]
    store, _, session = stage_store(settings)
    try:
        assert store.get().stage == "shadow"
    finally:
        session.cluster.shutdown()
