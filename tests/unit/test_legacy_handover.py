"""The pure parts of legacy's hand-over: when the workers count as released or consuming,
and how rabbitmqctl's JSON values are read."""

from __future__ import annotations

import pytest

from legacy.handover import Observation, _address, _client_property


def observation(**changes: object) -> Observation:
    base: dict[str, object] = {
        "workers": ["a@h", "b@h"],
        "holding": [],
        "reserved": 0,
        "active": 0,
        "ready": 7,
        "consumers": 0,
        "unacked": 0,
    }
    return Observation(**{**base, **changes})  # type: ignore[arg-type]


def test_released_only_when_nothing_is_held_anywhere() -> None:
    assert observation().released
    assert observation(unacked=None).released  # RabbitMQ not asked (yet)
    for held in (
        {"holding": ["a@h"]},
        {"consumers": 1},  # a consumer no worker admits to (not replying, not a worker)
        {"reserved": 1},
        {"active": 1},
        {"unacked": 3},  # RabbitMQ still waits for acks
    ):
        assert not observation(**held).released, held


def test_consuming_when_every_replying_worker_holds_the_queue() -> None:
    assert observation(holding=["a@h", "b@h"], consumers=2).consuming
    assert not observation(holding=["a@h"], consumers=1).consuming
    assert not observation(workers=[], holding=[]).consuming  # nobody answered


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([127, 0, 0, 1], "127.0.0.1"),
        ([0, 0, 0, 0, 0, 0, 0, 1], "::1"),
        ("10.1.2.3", "10.1.2.3"),
        (None, None),
    ],
)
def test_addresses_from_rabbitmqctl_json(value: object, text: object) -> None:
    assert _address(value) == text


def test_client_properties_in_either_shape() -> None:
    listed = [["product", "longstr", "py-amqp"], ["connection_name", "longstr", "bridge-1"]]
    assert _client_property(listed, "connection_name") == "bridge-1"
    assert _client_property({"connection_name": "x"}, "connection_name") == "x"
    assert _client_property(listed, "missing") is None
    assert _client_property(None, "connection_name") is None
