"""The shadow run's supervisor without servers: a dead component is started again within a
budget (then the run fails with the reason), and what a job's restores cost is read from
the counter files across its processes (`shadow.restores`), laid out as the JVM sink
writes them. The real kills are in tests/faults/test_shadow_supervision.py."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from legacy.worker import WorkerProcess
from shadow import components as comp
from shadow.restores import increments


def _counter(
    directory: Path, kind: str, attempt: int, subtask: int, value: int, total: int = 0, pid: int = 1
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-a{attempt}-s{subtask}-{pid}-abcd1234"
    path.write_bytes(struct.pack("<qq", value, total))


def test_a_killed_process_restored_at_its_total_reapplies_nothing_but_its_pending_is_unknown(
    tmp_path: Path,
) -> None:
    # measured: the dead process wrote 1368, had 180 more in its windows; the new one
    # restored at 1368 and wrote 3135 (the store ended 165 over the truth)
    root = tmp_path / "job.progress"
    _counter(root / "100", "fanned", 0, 0, 1548)
    _counter(root / "100", "written", 0, 0, 1368, 1368)
    _counter(root / "200", "fanned", 0, 0, 3135)
    _counter(root / "200", "written", 0, 0, 3135, 4503)
    got = increments(root)
    assert (got.processes, got.reapplied, got.uncertain) == (2, 0, 180), got
    assert got.reapplied + got.uncertain >= 165


def test_a_restore_behind_the_dead_process_total_is_reapplied(tmp_path: Path) -> None:
    root = tmp_path / "job.progress"
    # process 1: attempt 0 failed, attempt 1 (in-process restore) re-applied 7
    _counter(root / "100", "written", 0, 0, 50, 50)
    _counter(root / "100", "written", 1, 0, 30, 73)  # restored at 43, wrote 30
    _counter(root / "100", "fanned", 1, 0, 30)
    _counter(root / "100", "reapplied", 1, 0, 7)
    _counter(root / "100", "written", 0, 1, 5, 5)  # every task restarts together
    _counter(root / "100", "written", 1, 1, 15, 20)  # restored at 5, wrote 15
    _counter(root / "100", "fanned", 1, 1, 20)  # 5 pending when the process died
    # process 2 restored at 60 + 15 = 75 of the 93 written: 18 written again
    _counter(root / "200", "written", 0, 0, 10, 70)
    _counter(root / "200", "written", 0, 1, 4, 19)
    _counter(root / "200", "fanned", 0, 0, 10)
    _counter(root / "200", "fanned", 0, 1, 4)
    got = increments(root)
    assert got.reapplied_across == 18 and got.reapplied == 7 + 18, got
    assert got.uncertain_across == 5 and got.uncertain == 5, got
    assert increments(tmp_path / "none").processes == 0


class _Inst:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.records = tmp, []
        self.settings: Any = None

    def log_path(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def record(self, **extra: Any) -> None:
        self.records.append(extra)


def _dead(tmp: Path, code: int) -> WorkerProcess:
    log = tmp / "bridge.log"
    log.write_text("bridge: Traceback\nRuntimeError: lost the broker\n")
    process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    process.wait()
    return WorkerProcess(process, log)


def test_the_bridge_is_restarted_within_its_budget_then_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = _Inst(tmp_path)
    monkeypatch.setattr(comp, "_start_bridge", lambda _inst: _dead(tmp_path, 3))
    components = comp.Components(inst, budget=2)  # type: ignore[arg-type]
    components.bridge = _dead(tmp_path, 3)
    for n in (1, 2):
        (restart,) = components.supervise()
        assert restart.component == "bridge" and restart.exit == "exit code 3", restart
        assert "lost the broker" in restart.reason
        assert len(components.restarts) == n and inst.records[-1]["restarts"][-1]["pid"]
    with pytest.raises(comp.StartFailure, match=r"(?s)bridge exited \(exit code 3\).*budget is 2"):
        components.supervise()
    assert comp.describe_exit(-9) == "signal 9 (SIGKILL)"
