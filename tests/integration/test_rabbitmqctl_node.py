"""rabbitmqctl against a node named by the settings (as for a RabbitMQ cluster that
`abacus services` does not run): the node's name and Erlang cookie from the settings, the
cookie never on a command line; here the local node, seen from a data directory that has no
cookie of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from legacy.handover import HandoverError, QueueCounts, queue_counts, rabbitmqctl
from services.rabbitmq import EPMD_PORT, RabbitService
from settings.model import RabbitSettings, Settings

pytestmark = pytest.mark.integration


def test_a_named_node_with_its_cookie(
    settings: Settings, services_up: object, tmp_path: Path
) -> None:
    local = RabbitService(settings)
    cookie = (local.dir / ".erlang.cookie").read_text()
    elsewhere = settings.model_copy(
        update={"services": settings.services.model_copy(update={"data_dir": tmp_path})}
    )
    with pytest.raises(HandoverError, match="ctl_node"):  # no cookie under this data dir
        rabbitmqctl(elsewhere, "list_queues", "name")
    named = elsewhere.model_copy(
        update={
            "rabbitmq": settings.rabbitmq.model_copy(
                update={
                    "ctl_node": local.nodename,
                    "ctl_cookie": SecretStr(cookie),
                    "ctl_epmd_port": EPMD_PORT,
                }
            )
        }
    )
    assert "name" in rabbitmqctl(named, "list_queues", "name", "--formatter", "json")
    assert queue_counts(named, "no.such.queue.anywhere") == QueueCounts(0, 0, 0)
    wrong = named.model_copy(
        update={"rabbitmq": named.rabbitmq.model_copy(update={"ctl_cookie": SecretStr("x" * 20)})}
    )
    with pytest.raises(HandoverError) as refused:
        rabbitmqctl(wrong, "list_queues", "name")
    assert "x" * 20 not in str(refused.value) and cookie not in str(refused.value)


def test_a_node_name_is_checked() -> None:
    for bad in ("-n evil", "rabbit", "rabbit@host; rm", "--erlang-cookie=x@y", "-n@mq"):
        with pytest.raises(ValidationError):
            RabbitSettings(ctl_node=bad)
    assert RabbitSettings(ctl_node="rabbit@mq-1.internal").ctl_node == "rabbit@mq-1.internal"
