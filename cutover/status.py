"""What `abacus cutover status` says (and the console page shows): the stage, since when,
what runs and whether it is healthy, the transition in progress, and the gate to the next
stage with its evidence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from settings import Settings


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_doc(settings: Settings, machine: Any) -> dict[str, Any]:
    from cutover.machine import Refused, describe_transition
    from cutover.stages import next_stage, previous_stage, read_stores
    from cutover.steps import health

    state = machine.store.get(serial=True)
    doc: dict[str, Any] = {
        "stage": state.stage,
        "since": when(state.since_ms),
        "epoch": state.epoch,
        "version": state.version,
        "reads": dict(zip(("control", "candidate"), read_stores(state.stage), strict=True)),
        "transition": None,
        "components": health(settings, state.stage, state.epoch),
        "next": None,
        "rollback_to": previous_stage(state.stage),
    }
    if state.transition is not None:
        t = state.transition
        doc["transition"] = {
            "summary": describe_transition(t),
            "kind": t["kind"],
            "from": t["from"],
            "to": t["to"],
            "step": t["step"] + 1,
            "of": len(t["steps"]),
            "steps": t["steps"],
            "who": t["who"],
            "host": t["host"],
        }
    following = next_stage(state.stage)
    if following is not None and state.transition is None:
        try:
            plan = machine.plan_advance(following, state)
            doc["next"] = {"stage": following, "gate": plan.gate.to_dict() if plan.gate else None}
        except Refused as exc:
            doc["next"] = {"stage": following, "refused": str(exc)}
    doc["healthy"] = state.transition is None and all(c["ok"] for c in doc["components"])
    return doc
