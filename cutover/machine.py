"""Runs transitions between stages: gate, compare-and-set, steps, record. Generic: the
stages' transitions are data (`Transition`s built in `cutover.steps`), so milestone 2 adds
its own and tests drive the machine with steps of their own.

A transition is started by writing it into the stage row (compare-and-set on the row's
version: of two operators, one wins, the other gets `Refused` naming the winner); after each
step the row records the step reached, so a SIGKILL leaves "in transition, step k of n".
`advance` to the same stage again resumes at step k; `rollback` undoes it by running the
reverse transition's steps (every step is idempotent: a step run twice, or a reverse step
for something never done, does nothing more). While a transition runs, its owner renews a
heartbeat in the row; another operator may take it over only once the heartbeat is older
than `LEASE_S` (the owner was killed). The stage changes only when the last step is done.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cutover.state import Conflict, StageState, StageStore, TransitionLog, now_ms
from settings import Settings

log = logging.getLogger(__name__)

LEASE_S = 15.0  # a transition whose owner has not renewed its heartbeat for this long is free


class Refused(Exception):
    """The machine will not do what was asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Gate:
    """The condition to enter a stage, evaluated now, with its evidence."""

    name: str  # what it checks, e.g. "3 consecutive clean daily audits (legacy vs shadow)"
    passed: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    audit_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "evidence": self.evidence,
            "audit_ids": list(self.audit_ids),
        }


@dataclass
class Context:
    """What a step gets: the settings, the transition's epoch (entries into m1 so far, this
    one included) and a way to say what it does."""

    settings: Settings
    epoch: int
    say: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    says: str  # one line for `plan` and progress
    run: Callable[[Context], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class Transition:
    source: str
    target: str
    kind: Literal["advance", "rollback"]
    steps: tuple[Step, ...]
    gate: Callable[[Settings], Gate] | None = None  # rollbacks are never gated
    new_epoch: bool = False  # entering m1: a fresh live topic and fresh serving jobs


Transitions = dict[tuple[str, str], Transition]


@dataclass(frozen=True, slots=True)
class Plan:
    transition: Transition
    gate: Gate | None
    resume_at: int  # the first step to run (0: from the start)
    undo_of: dict[str, Any] | None = None  # rollback of an unfinished transition

    def to_dict(self) -> dict[str, Any]:
        t = self.transition
        return {
            "from": t.source,
            "to": t.target,
            "kind": t.kind,
            "gate": self.gate.to_dict() if self.gate else None,
            "resume_at_step": self.resume_at + 1,
            "undo_of": self.undo_of,
            "steps": [
                {"step": i + 1, "name": s.name, "says": s.says, "done": i < self.resume_at}
                for i, s in enumerate(t.steps)
            ],
        }


@dataclass
class Outcome:
    action: str  # "advanced", "rolled back", "preview", "unchanged"
    stage: str
    plan: Plan | None
    results: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "stage": self.stage,
            "plan": self.plan.to_dict() if self.plan else None,
            "results": self.results,
            "forced": self.forced,
        }


def describe_transition(t: dict[str, Any], now: int | None = None) -> str:
    """'in transition shadow -> m1 (advance), step 3 of 5, by ops@host (heartbeat 2 s ago)'."""
    age = ((now or now_ms()) - int(t.get("heartbeat_ms") or 0)) / 1000
    return (
        f"in transition {t['from']} -> {t['to']} ({t['kind']}), step {t['step'] + 1} of "
        f"{len(t['steps'])} ({t['steps'][min(t['step'], len(t['steps']) - 1)]}), "
        f"by {t['who']}@{t['host']} pid {t['pid']} (heartbeat {age:.0f} s ago)"
    )


class Machine:
    def __init__(
        self,
        settings: Settings,
        session: Any,
        transitions: Transitions,
        say: Callable[[str], None] = lambda line: None,
        who: str | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.settings, self.transitions, self.say = settings, transitions, say
        self.store = StageStore(session, settings.cassandra)
        self.log = TransitionLog(session, settings.cassandra)
        self.who = who or _user()
        self.host = socket.gethostname()
        self.lease_s = lease_s

    # -- what would happen ---------------------------------------------------------------

    def plan_advance(self, to: str, state: StageState | None = None) -> Plan:
        state = state or self.store.get(serial=True)
        if state.transition is not None:
            t = state.transition
            if t["kind"] == "advance" and t["to"] == to:
                return Plan(self.transitions[(t["from"], t["to"])], None, t["step"])
            raise Refused(
                f"{describe_transition(t)}: finish it with `abacus cutover "
                f"{'advance --to ' + t['to'] if t['kind'] == 'advance' else 'rollback'}` "
                + ("or undo it with `abacus cutover rollback`" if t["kind"] == "advance" else "")
            )
        if state.stage == to:
            raise Refused(f"already at stage {to}")
        transition = self.transitions.get((state.stage, to))
        if transition is None or transition.kind != "advance":
            onward = [
                t
                for (s, t), tr in self.transitions.items()
                if s == state.stage and tr.kind == "advance"
            ]
            raise Refused(
                f"no advance from {state.stage} to {to}: from {state.stage} the next stage is "
                + (", ".join(onward) if onward else "none")
            )
        gate = transition.gate(self.settings) if transition.gate else None
        return Plan(transition, gate, 0)

    def plan_rollback(self, state: StageState | None = None) -> Plan:
        state = state or self.store.get(serial=True)
        t = state.transition
        if t is not None:
            if t["kind"] == "rollback":  # a rollback that was interrupted: resume it
                return Plan(self.transitions[(t["from"], t["to"])], None, t["step"])
            reverse = self.transitions.get((t["to"], t["from"]))
            if reverse is None:
                raise Refused(f"{describe_transition(t)} has no rollback")
            return Plan(reverse, None, 0, undo_of=t)
        back = [
            tr
            for (s, _), tr in self.transitions.items()
            if s == state.stage and tr.kind == "rollback"
        ]
        if not back:
            raise Refused(f"stage {state.stage} has no rollback")
        return Plan(back[0], None, 0)

    # -- doing it -------------------------------------------------------------------------

    def advance(
        self, to: str, yes: bool, force: bool = False, reason: str | None = None
    ) -> Outcome:
        state = self.store.get(serial=True)
        plan = self.plan_advance(to, state)
        if force and not reason:
            raise Refused("--force needs --reason TEXT (it is recorded)")
        gate_failed = plan.gate is not None and not plan.gate.passed
        if gate_failed and not force:
            assert plan.gate is not None
            raise GateFailed(plan)
        if not yes:
            return Outcome("preview", state.stage, plan, forced=gate_failed)
        return self._run(state, plan, forced=gate_failed, reason=reason)

    def rollback(self, yes: bool, reason: str | None = None) -> Outcome:
        state = self.store.get(serial=True)
        plan = self.plan_rollback(state)
        if not yes:
            return Outcome("preview", state.stage, plan)
        return self._run(state, plan, forced=False, reason=reason)

    def _run(self, state: StageState, plan: Plan, forced: bool, reason: str | None) -> Outcome:
        tr = plan.transition
        owner = uuid.uuid4().hex
        t = state.transition
        if t is not None:
            age_s = (now_ms() - int(t.get("heartbeat_ms") or 0)) / 1000
            if age_s < self.lease_s:
                raise Refused(
                    f"{describe_transition(t)}: its owner is alive (heartbeat within "
                    f"{self.lease_s:.0f} s); wait for it, or retry once it stopped"
                )
        if plan.undo_of is not None or t is None:
            epoch = state.epoch + 1 if tr.new_epoch else state.epoch
            if plan.undo_of is not None:
                epoch = int(plan.undo_of.get("epoch", state.epoch))
            log_id = self.log.new_id()
            t = {
                "kind": tr.kind,
                "from": tr.source,
                "to": tr.target,
                "steps": [s.name for s in tr.steps],
                "step": 0,
                "epoch": epoch,
                "log_id": log_id,
                "audit_ids": list(plan.gate.audit_ids) if plan.gate else [],
                "forced": forced,
                "reason": reason,
                "results": [],
            }
            if plan.undo_of is not None:
                t["undo_of"] = {k: plan.undo_of[k] for k in ("from", "to", "step", "log_id")}
        else:
            log_id = t["log_id"]
        t = {
            **t,
            "owner": owner,
            "who": self.who,
            "host": self.host,
            "pid": os.getpid(),
            "heartbeat_ms": now_ms(),
        }
        lease = _Lease(self.store, state, self.lease_s)
        try:
            lease.write(transition=t)
        except Conflict as exc:
            now = exc.current.transition
            raise Refused(
                "another operator changed the stage first: "
                + (describe_transition(now) if now else f"stage is now {exc.current.stage}")
            ) from exc
        if state.transition is None or plan.undo_of is not None:
            if plan.undo_of is not None:
                self.log.end(plan.undo_of["log_id"], "rolled back", plan.undo_of.get("results", []))
            self.log.start(
                log_id,
                {
                    "kind": tr.kind if plan.undo_of is None else "undo",
                    "from_stage": tr.source,
                    "to_stage": tr.target,
                    "who": self.who,
                    "host": self.host,
                    "audit_ids": t["audit_ids"],
                    "forced": forced,
                    "reason": reason,
                    "state": "running",
                    "steps": [],
                },
            )
        lease.start()
        results: list[dict[str, Any]] = list(t.get("results", []))
        try:
            context = Context(self.settings, int(t["epoch"]), self.say)
            for i in range(int(t["step"]), len(tr.steps)):
                step = tr.steps[i]
                self.say(f"step {i + 1} of {len(tr.steps)}: {step.says}")
                started = time.monotonic()
                out = step.run(context) or {}
                results.append(
                    {
                        "step": i + 1,
                        "name": step.name,
                        "s": round(time.monotonic() - started, 1),
                        **out,
                    }
                )
                t = {**t, "step": i + 1, "results": results}
                lease.write(transition=t)
            final_stage = tr.target
            lease.stop()
            lease.write(
                stage=final_stage,
                epoch=int(t["epoch"]),
                since_ms=now_ms(),
                transition=None,
            )
        except Conflict as exc:
            raise Refused(
                "another operator took this transition over (this one's heartbeat was late): "
                + (describe_transition(exc.current.transition) if exc.current.transition else "")
            ) from exc
        finally:
            lease.stop()
        self.log.end(log_id, "done", results)
        action = "rolled back" if tr.kind == "rollback" else "advanced"
        return Outcome(action, tr.target, plan, results, forced)

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.log.history(limit)


class GateFailed(Refused):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        gate = plan.gate
        assert gate is not None
        super().__init__(
            f"gate to {plan.transition.target} not passed: {gate.name}; "
            "nothing changed (`--force --reason TEXT` passes it, recorded as forced)"
        )


class _Lease:
    """The owner's handle on the stage row: every write is a compare-and-set on the version
    it last wrote, and a thread renews the heartbeat meanwhile."""

    def __init__(self, store: StageStore, state: StageState, lease_s: float) -> None:
        self._store, self._state, self._lease_s = store, state, lease_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: Conflict | None = None

    def write(self, **changes: Any) -> StageState:
        with self._lock:
            if self.lost is not None:
                raise self.lost
            self._state = self._store.write(self._state, **changes)
            return self._state

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="cutover-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
            self._thread = None

    def _renew(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            with self._lock:
                t = self._state.transition
                if t is None or self.lost is not None:
                    return
                try:
                    self._state = self._store.write(
                        self._state, transition={**t, "heartbeat_ms": now_ms()}
                    )
                except Conflict as exc:
                    self.lost = exc
                    return
                except Exception:  # Cassandra busy: the next renewal tries again
                    log.warning("cutover heartbeat not renewed; retrying", exc_info=True)


def _user() -> str:
    try:
        return os.environ.get("ABACUS_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
