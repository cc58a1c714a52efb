"""The cutover's pure parts: stages, the stores each stage reads, the gate's last date."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cutover.stages import STAGES, next_stage, previous_stage, read_stores
from cutover.steps import TRANSITIONS, last_audited_date


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_gate_ends_at_the_last_date_over_everywhere() -> None:
    # yesterday ends at UTC-12 at noon UTC today; before that, the day before yesterday
    assert last_audited_date(ts("2026-11-27T11:59:59")) == "2026-11-25"
    assert last_audited_date(ts("2026-11-27T12:00:00")) == "2026-11-26"
    assert last_audited_date(ts("2026-11-27T23:59:59")) == "2026-11-26"


def test_stages_reads_and_transitions() -> None:
    assert STAGES == ("legacy", "shadow", "m1")
    assert read_stores("legacy") == ("legacy", None)
    assert read_stores("shadow") == ("legacy", "shadow")
    assert read_stores("m1") == ("serving", "shadow")
    with pytest.raises(ValueError, match="unknown stage"):
        read_stores("m3")
    # every stage but the last advances to the next, every stage but the first rolls back
    for stage in STAGES:
        if (nxt := next_stage(stage)) is not None:
            assert TRANSITIONS[(stage, nxt)].kind == "advance"
            assert TRANSITIONS[(nxt, stage)].kind == "rollback"
        if (prev := previous_stage(stage)) is not None:
            assert (stage, prev) in TRANSITIONS
    # only entering m1 opens a new epoch (a fresh live topic and fresh serving jobs); only
    # rollbacks are ungated
    assert [t.new_epoch for t in TRANSITIONS.values()].count(True) == 1
    assert TRANSITIONS[("shadow", "m1")].new_epoch
    assert all((t.gate is None) == (t.kind == "rollback") for t in TRANSITIONS.values())


def test_serving_is_a_name_for_legacys_tables() -> None:
    from settings import CassandraSettings
    from storage import keyspace_of, statements

    cass = CassandraSettings(keyspace_prefix="x_")
    assert keyspace_of(cass, "serving") == keyspace_of(cass, "legacy") == "x_abacus_legacy"
    assert not any("abacus_serving" in cql for cql in statements(cass))
