"""The aggregation task's message: Celery protocol 2, JSON only (pure, no I/O).

Producers publish one task message per event; its single argument is the *raw* event text,
exactly as it stands in the event log. Every consumer (the legacy worker, the bridge and,
through Kafka, Abacus) hands that same text to `counting.parse_event`, so all three sides
of an audit validate identical bytes and agree on every rejection reason. What a task
message must hold to carry an event is checked here once (`envelope_problem`,
`arguments_problem`), by the legacy worker and the bridge alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from counting.events import MAX_INPUT_BYTES

TASK_NAME = "legacy.aggregate"
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
# The largest task body that can hold an event of the contract's largest size (1 MiB): JSON
# may escape each byte of the event text into at most 6 (`\u007f`), plus the envelope
# `[[...], {}, {...}]` (a protocol-2 task's headers travel as AMQP headers). Every consumer
# refuses a larger body before parsing it, so its parsing cost is bounded.
MAX_TASK_BODY_BYTES = 6 * MAX_INPUT_BYTES + 64 * 1024

NOT_PROTOCOL_2 = "body is not a Celery protocol-2 [args, kwargs, embed] list"
NOT_ONE_EVENT = f"{TASK_NAME} takes exactly one argument, the raw event text"


def envelope_problem(body: Any) -> str | None:
    """Why a decoded task body does not carry one event, else None: it must be protocol 2's
    `[args, kwargs, embed]` (a list, an object, anything) with `arguments_problem` None.
    The event is then `body[0][0]`."""
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
    ):
        return NOT_PROTOCOL_2
    return arguments_problem(body[0], body[1])


def arguments_problem(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """Why a call of the aggregation task is not `(raw_event_text,)`, else None."""
    if len(args) != 1 or kwargs or not isinstance(args[0], str):
        return NOT_ONE_EVENT
    return None


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """What an AMQP publish carries: body bytes, Celery headers, AMQP properties."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]

    @property
    def task_id(self) -> str:
        return str(self.headers["id"])


def task_message(raw_event: str, task_id: str | None = None, origin: str = "abacus") -> TaskMessage:
    """A Celery protocol-2 message for the aggregation task of one raw event."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps(
        [[raw_event], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        ensure_ascii=False,
    ).encode(CONTENT_ENCODING)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "(<event>,)",
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
    }
    properties = {
        "correlation_id": task_id,
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "delivery_mode": 2,
        "priority": 0,
    }
    return TaskMessage(body, headers, properties)
