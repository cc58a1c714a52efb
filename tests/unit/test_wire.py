"""The shared wire format (pure): the aggregation task's envelope, checked once for legacy's
worker and the bridge alike, and the message producers publish."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu.message import Message
from kombu.serialization import prepare_accept_content

from bridge.decode import Bad, Good, Incoming, Reason, decode
from legacy import deadletter
from legacy.consumer import screen
from wire.task import (
    MAX_TASK_BODY_BYTES,
    NOT_ONE_EVENT,
    NOT_PROTOCOL_2,
    TASK_NAME,
    arguments_problem,
    envelope_problem,
    task_message,
)

RAW = json.dumps({"event_id": "E1", "company_id": "C", "statistic_id": "s", "timestamp": 1})
EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

ENVELOPES: list[tuple[Any, str | None]] = [
    ([[RAW], {}, EMBED], None),
    ([[RAW], {}, None], None),
    ([[""], {}, {}], None),  # an empty event is a task; the contract rejects it later
    ([RAW], NOT_PROTOCOL_2),
    ({"args": [RAW]}, NOT_PROTOCOL_2),
    ([[RAW], {}], NOT_PROTOCOL_2),
    ([[RAW], {}, {}, {}], NOT_PROTOCOL_2),
    ([RAW, {}, {}], NOT_PROTOCOL_2),
    ([[RAW], [], {}], NOT_PROTOCOL_2),
    ([[], {}, {}], NOT_ONE_EVENT),
    ([[RAW, RAW], {}, {}], NOT_ONE_EVENT),
    ([[RAW], {"x": 1}, {}], NOT_ONE_EVENT),
    ([[{"event_id": "E1"}], {}, {}], NOT_ONE_EVENT),
    ([[7], {}, {}], NOT_ONE_EVENT),
    ([[None], {}, {}], NOT_ONE_EVENT),
]


@pytest.mark.parametrize(("body", "problem"), ENVELOPES)
def test_envelope_problem_names_what_is_wrong(body: Any, problem: str | None) -> None:
    assert envelope_problem(body) == problem


def test_arguments_problem_is_the_task_call_check() -> None:
    assert arguments_problem((RAW,), {}) is None
    assert arguments_problem([RAW], {}) is None
    assert arguments_problem((), {}) == NOT_ONE_EVENT
    assert arguments_problem((RAW,), {"raw": RAW}) == NOT_ONE_EVENT
    assert arguments_problem((b"bytes",), {}) == NOT_ONE_EVENT
    assert TASK_NAME in NOT_ONE_EVENT


def test_the_published_task_passes_and_fits_the_body_bound() -> None:
    m = task_message(RAW, task_id="T-1")
    body = json.loads(m.body)
    assert envelope_problem(body) is None and body[0][0] == RAW
    assert m.task_id == "T-1" and m.headers["task"] == TASK_NAME
    assert len(task_message("\x7f" * 1024 * 1024).body) <= MAX_TASK_BODY_BYTES


def _kombu(body: bytes, headers: dict[str, Any]) -> Message:
    return Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        accept=prepare_accept_content(["json"]),
    )


@pytest.mark.parametrize(("body", "problem"), ENVELOPES)
def test_legacy_and_the_bridge_refuse_the_same_envelopes_for_the_same_reason(
    body: Any, problem: str | None
) -> None:
    m = task_message(RAW, task_id="T-1")
    data = json.dumps(body).encode()
    bridged = decode(Incoming(data, {**m.properties, "headers": m.headers}), 0)
    screened = screen(_kombu(data, m.headers))
    if problem is None:
        assert isinstance(bridged, Good) and screened is None
    else:
        assert isinstance(bridged, Bad)
        assert (bridged.reason, bridged.detail) == (Reason.BAD_ENVELOPE, problem)
        assert screened == (deadletter.BAD_TASK_MESSAGE, problem)
