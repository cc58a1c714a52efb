"""The stages of the cutover and which stores the read path reads in each: pure data.

The whole pipeline moves between stages (both levels together): one legacy queue feeds the
account and the customer level, so there is no clean hand-over point for one level alone.
Milestone 2 appends `m2-shadow`, `m2` and `done` to `STAGES`.
"""

from __future__ import annotations

LEVEL = "pipeline"  # the key of the stage row: the whole pipeline moves

STAGES: tuple[str, ...] = ("legacy", "shadow", "m1")
FIRST = STAGES[0]

# stage -> (the store every read is answered from, the candidate an experiment may read)
_READS: dict[str, tuple[str, str | None]] = {
    "legacy": ("legacy", None),
    "shadow": ("legacy", "shadow"),
    # m1 continues legacy's counter tables (`serving` names them): reads do not move, and
    # the shadow jobs keep running on the mirror, so the shadow store stays a candidate
    "m1": ("serving", "shadow"),
}


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    return stage


def read_stores(stage: str) -> tuple[str, str | None]:
    """(control, candidate or None): the store names (`storage.STORES`) the read path uses."""
    return _READS[check_stage(stage)]


def next_stage(stage: str) -> str | None:
    i = STAGES.index(check_stage(stage))
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def previous_stage(stage: str) -> str | None:
    i = STAGES.index(check_stage(stage))
    return STAGES[i - 1] if i > 0 else None
