"""A cutover machine with steps of its own, for the machine's tests: each step appends its
name to a journal file (so a test sees what ran, and how often), and a step named `wait`
blocks until a `go` file appears (so a test can SIGKILL the operator in the middle).

Run: python -m tests.integration.cutover_fake DIR KEYSPACE_PREFIX LEASE_S advance|rollback [TO]
Exit 0 done, 1 refused (the message on stderr), 3 gate failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cutover.machine import Context, Gate, GateFailed, Machine, Refused, Step, Transition
from settings import load_settings
from storage import connect


def transitions(root: Path) -> dict[tuple[str, str], Transition]:
    def step(name: str) -> Step:
        def run(ctx: Context) -> dict[str, object]:
            with (root / "journal").open("a") as f:
                f.write(f"{name} epoch={ctx.epoch}\n")
            if name.endswith("wait"):
                deadline = time.monotonic() + 120
                while not (root / "go").exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("no go file after 120 s")
                    time.sleep(0.05)
            return {"ran": name}

        return Step(name, f"the fake step {name}", run)

    def gate(settings: object) -> Gate:
        ok = (root / "gate-open").exists()
        return Gate("the gate-open file exists", ok, {"file": str(root / "gate-open")}, ("a1",))

    return {
        ("legacy", "shadow"): Transition(
            "legacy", "shadow", "advance", (step("up1"), step("up2-wait"), step("up3")), gate
        ),
        ("shadow", "legacy"): Transition(
            "shadow", "legacy", "rollback", (step("down1"), step("down2"))
        ),
        ("shadow", "m1"): Transition(
            "shadow", "m1", "advance", (step("m1-a"),), None, new_epoch=True
        ),
        ("m1", "shadow"): Transition("m1", "shadow", "rollback", (step("m1-back"),)),
    }


def main() -> int:
    root, prefix, lease_s, action = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    settings = load_settings()
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": prefix})
    settings = settings.model_copy(update={"cassandra": cass})
    session = connect(cass)
    machine = Machine(settings, session, transitions(root), print, who="tester", lease_s=lease_s)
    try:
        if action == "advance":
            force = "--force" in sys.argv
            out = machine.advance(
                sys.argv[5], yes=True, force=force, reason="test" if force else None
            )
        else:
            out = machine.rollback(yes=True)
        print(out.action, out.stage, flush=True)
        return 0
    except GateFailed as exc:
        print(exc, file=sys.stderr)
        return 3
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        session.cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
