"""The read API's pure parts: parameter validation, the buckets a query names, and how the
experiment judges a sample (control, candidate, control again)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counting import bucket_label
from serve.experiment import Experiment
from serve.metrics import Metrics
from serve.queries import (
    MAX_BUCKETS,
    BadParameter,
    Query,
    buckets_between,
    keys_of,
    parse_query,
)


def test_a_valid_query_defaults_to_the_total() -> None:
    q = parse_query("C", "s", "hour", "2025-12-01T00", "2025-12-01T03")
    assert (q.facet, q.value, q.customer, q.level) == ("", "", None, "account")
    assert [k.bucket for k in keys_of(q)] == [f"2025-12-01T0{h}" for h in range(4)]
    assert q.to_dict()["from"] == "2025-12-01T00"
    facet = parse_query("C", "s", "day", "2025-12-01", "2025-12-01", "ip", "")
    assert (facet.facet, facet.value) == ("ip", "")  # the empty value is a facet value
    customer = parse_query("C", "s", "month", "2025-11", "2026-02", customer="U")
    assert [k.bucket for k in keys_of(customer)] == ["2025-11", "2025-12", "2026-01", "2026-02"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((None, "s", "day", "2025-12-01", "2025-12-01"), "missing parameter: company"),
        (("", "s", "day", "2025-12-01", "2025-12-01"), "company must be 1..64"),
        (("C", "s" * 65, "day", "2025-12-01", "2025-12-01"), "statistic must be 1..64"),
        (("C", "s", "week", "2025-12-01", "2025-12-01"), "resolution must be one of"),
        (("C", "s", "day", "2025-12-01T00", "2025-12-01"), "from must be a day label"),
        (("C", "s", "hour", "2025-12-01T24", "2025-12-01T24"), "not a real hour"),
        (("C", "s", "month", "2025-12", "2025-1"), "to must be a month label"),
        (("C", "s", "day", "2025-12-02", "2025-12-01"), "is after"),
        (("C", "s", "day", "2020-01-01", "2025-01-01"), "at most 1000"),
        (("C", "s", "month", "2020-01", "2025-01"), "more than 3 years"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", "ip", None), "go together"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", None, "x"), "go together"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", "k" * 65, "x"), "facet must be 1..64"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", "ip", "v" * 257), "at most 256"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", "ip", "v", "U"), "not customer counts"),
        (("C", "s", "day", "2025-12-01", "2025-12-01", None, None, "u" * 65), "customer must"),
    ],
)
def test_bad_parameters_say_what_is_wrong(args: tuple[Any, ...], says: str) -> None:
    with pytest.raises(BadParameter) as bad:
        parse_query(*args)
    assert says in str(bad.value)
    assert "\n" not in str(bad.value)


def test_the_bound_is_inclusive() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    last = (start + timedelta(hours=MAX_BUCKETS - 1)).strftime("%Y-%m-%dT%H")
    assert len(keys_of(parse_query("C", "s", "hour", "2025-01-01T00", last))) == MAX_BUCKETS
    too_far = (start + timedelta(hours=MAX_BUCKETS)).strftime("%Y-%m-%dT%H")
    with pytest.raises(BadParameter):
        parse_query("C", "s", "hour", "2025-01-01T00", too_far)


@settings(deadline=None)  # a 400-day hour range lists 9,600 labels: slow on a busy machine
@given(
    st.sampled_from(["hour", "day", "month"]),
    st.integers(min_value=946_684_800, max_value=4_000_000_000),
    st.integers(min_value=0, max_value=400 * 86400),
)
def test_buckets_between_are_the_labels_of_the_range(resolution: str, ts: int, span: int) -> None:
    """Every UTC label from first to last is listed once, in order, nothing else."""
    first, last = bucket_label(ts, "UTC", resolution), bucket_label(ts + span, "UTC", resolution)
    got = buckets_between(resolution, first, last)
    assert got[0] == first and got[-1] == last
    assert got == sorted(set(got))
    step = {"hour": 3600, "day": 86400}.get(resolution)
    if step is not None:  # each hour/day of the span has its label listed
        assert len(got) == (ts + span) // step - ts // step + 1


class Script:
    """A read function answering from a script: (store, query) -> the next answer."""

    def __init__(self, answers: dict[str, list[list[dict[str, Any]]]]) -> None:
        self.answers = answers

    def __call__(self, store: str, query: Query) -> list[dict[str, Any]]:
        return self.answers[store].pop(0)


def _answer(count: int) -> list[dict[str, Any]]:
    return [{"bucket": "2025-12-01", "count": count, "uniques": 1}]


def _wait_idle(experiment: Experiment) -> None:
    deadline = time.monotonic() + 30
    while not experiment.idle():
        assert time.monotonic() < deadline, experiment.snapshot()
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("candidate", "control", "outcome"),
    [
        # round 1: candidate, control again; round 2 (a differing sample, settle_s later):
        # control, candidate, control again. The request's own control answer is 5.
        ([5], [5], "matches"),
        ([6, 6], [5, 5, 5], "mismatches"),  # differs from a control that held still
        ([9], [8], "ignored"),  # the control moved in round 1: noise, not judged
        ([4, 5], [5, 5, 5], "lagged"),  # differed, then caught up
        ([4, 5], [5, 6, 7], "ignored"),  # the control moved in round 2
    ],
)
def test_a_mismatch_counts_only_when_the_control_held_still(
    candidate: list[int], control: list[int], outcome: str
) -> None:
    q = parse_query("C", "s", "day", "2025-12-01", "2025-12-01")
    script = Script(
        {"shadow": [_answer(n) for n in candidate], "legacy": [_answer(n) for n in control]}
    )
    experiment = Experiment(script, 1.0, Metrics(), settle_s=0.0)
    experiment.start()
    try:
        assert not experiment.offer(q, "legacy", "legacy", None, _answer(5))  # no candidate
        assert experiment.offer(q, "shadow", "legacy", "shadow", _answer(5))
        _wait_idle(experiment)
    finally:
        experiment.stop()
    report = experiment.snapshot()
    assert script.answers == {"shadow": [], "legacy": []}  # every read the rounds make
    outcomes = ("matches", "mismatches", "ignored", "lagged", "errors")
    assert {k: report[k] for k in outcomes} == {k: int(k == outcome) for k in outcomes}
    assert report["compared"] == 1
    assert report["noise_floor"] == (1.0 if outcome == "ignored" else 0.0)
    if outcome == "mismatches":
        (sample,) = report["samples"]
        assert sample["differs"] == [
            {
                "bucket": "2025-12-01",
                "control": {"count": 5, "uniques": 1},
                "candidate": {"count": 6, "uniques": 1},
            }
        ]
    else:
        assert report["samples"] == []


def test_a_recheck_waits_for_the_settle_delay() -> None:
    q = parse_query("C", "s", "day", "2025-12-01", "2025-12-01")
    script = Script({"shadow": [_answer(4), _answer(5)], "legacy": [_answer(5)] * 3})
    experiment = Experiment(script, 1.0, Metrics(), settle_s=0.5)
    experiment.start()
    try:
        offered = time.monotonic()
        assert experiment.offer(q, "shadow", "legacy", "shadow", _answer(5))
        _wait_idle(experiment)
        waited = time.monotonic() - offered
    finally:
        experiment.stop()
    assert experiment.snapshot()["lagged"] == 1
    assert waited >= 0.5  # the re-check ran after the delay, not before (an order, not a speed)


def test_a_full_queue_drops_and_counts() -> None:
    q = parse_query("C", "s", "day", "2025-12-01", "2025-12-01")
    experiment = Experiment(Script({}), 1.0, Metrics(), queue_size=2)  # not started: no worker
    offered = [experiment.offer(q, "shadow", "legacy", "shadow", _answer(1)) for _ in range(5)]
    assert offered == [True, True, False, False, False]
    assert experiment.snapshot()["dropped"] == 3


def test_the_share_samples() -> None:
    q = parse_query("C", "s", "day", "2025-12-01", "2025-12-01")
    none = Experiment(Script({}), 0.0, Metrics(), queue_size=10_000)
    assert not any(none.offer(q, "shadow", "legacy", "shadow", _answer(1)) for _ in range(100))
    some = Experiment(Script({}), 0.3, Metrics(), queue_size=10_000, rng=random.Random(1))
    taken = sum(some.offer(q, "shadow", "legacy", "shadow", _answer(1)) for _ in range(2000))
    assert 400 < taken < 800
