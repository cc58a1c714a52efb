"""Legacy's pure parts (no servers): Redis key encoding, chaos selection, the consumer's
screen of messages, dead-letter records, trace arithmetic, settings for child processes,
and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.message import Message
from kombu.serialization import prepare_accept_content
from pydantic import SecretStr

from counting import AccountKey, key_id
from counting.corpus import tricky_lines
from legacy import deadletter
from legacy.app import WorkerOptions
from legacy.chaos import Chaos
from legacy.cli import legacy as legacy_group
from legacy.consumer import screen
from legacy.keys import RedisKeys, decode_key, encode_key
from legacy.trace import Traces
from legacy.worker import worker_args
from services.procs import settings_env
from settings.model import Settings
from tests.poison_amqp import HOSTILE_HEADERS
from wire.task import task_message

ABACUS = [sys.executable, "-c", "import cli; cli.main()"]

keys = st.builds(
    AccountKey, *[st.text(max_size=8, alphabet=st.sampled_from('ab\x1f"\\é,[]')) for _ in range(6)]
)


@given(keys, keys)
def test_key_encoding_round_trips_and_is_injective(a: AccountKey, b: AccountKey) -> None:
    assert encode_key(a) == key_id(a)  # legacy's Redis text is counting's key identity
    assert decode_key(encode_key(a)) == a
    assert decode_key(encode_key(a).encode("utf-8")) == a
    assert (encode_key(a) == encode_key(b)) == (a == b)


def test_uniqueness_sets_do_not_collide_on_separators() -> None:
    rk = RedisKeys("p:legacy:")
    assert rk.uniques("a\x1fb", "c") != rk.uniques("a", "b\x1fc")
    assert RedisKeys("x*[y]:").pattern == "x\\*\\[y\\]:*"


def test_chaos_selection_is_deterministic_and_proportional() -> None:
    ids = [f"event-{i}" for i in range(20_000)]
    chaos = Chaos(redeliver=0.1, crash=0.0, drop_flush=1.0)
    hit = [i for i in ids if chaos.redelivers(i)]
    assert hit == [i for i in ids if Chaos(redeliver=0.1).redelivers(i)]
    assert 1800 < len(hit) < 2200
    assert not any(chaos.crashes(i) for i in ids)
    assert all(chaos.drops(i) for i in ids)
    assert not Chaos().active and chaos.active
    # the knobs pick independent events
    other = {i for i in ids if Chaos(crash=0.1).crashes(i)}
    assert len(other & set(hit)) < 400
    with pytest.raises(ValueError, match="within"):
        Chaos(crash=1.5)


ACCEPT = prepare_accept_content(["json"])


def message(
    body: bytes, content_type: str = "application/json", headers: dict[str, object] | None = None
) -> Message:
    good = task_message(tricky_lines()[0])
    return Message(
        body=body,
        content_type=content_type,
        content_encoding="utf-8",
        headers=good.headers if headers is None else headers,
        accept=ACCEPT,
    )


class _Trap:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_screen_passes_a_task_and_names_what_is_wrong_with_the_rest(tmp_path: Path) -> None:
    raw = tricky_lines()[0]
    good = task_message(raw).body
    assert screen(message(good)) is None
    assert screen(message(task_message("{not json").body)) is None  # the task dead-letters it
    marker = tmp_path / "unpickled"
    pickled = pickle.dumps(((_Trap(marker),), {}, {}))
    cases = {
        deadletter.CONTENT_DISALLOWED: [
            message(pickled, "application/x-python-serialize"),
            message(good, "application/x-yaml"),
            message(good, None),
        ],  # type: ignore[arg-type]
        deadletter.UNDECODABLE: [message(good[:-3]), message(b"\xff\xfe")],
        deadletter.UNKNOWN_TASK: [
            message(good, headers={}),
            message(good, headers={"task": "celery.ping"}),
        ],
        deadletter.BAD_TASK_MESSAGE: [
            message(b"{}"),
            message(json.dumps([[raw, raw], {}, {}]).encode()),
            message(json.dumps([[], {}, {}]).encode()),
            message(json.dumps([[1], {}, {}]).encode()),
            message(json.dumps([[raw], {"x": 1}, {}]).encode()),
            message(json.dumps([[raw], {}]).encode()),
        ],
    }
    for reason, messages in cases.items():
        for m in messages:
            problem = screen(m)
            assert problem is not None and problem[0] == reason, (reason, m.body[:40])
            assert problem[1]
    assert not marker.exists(), "a pickle body was deserialized"


def test_dead_letter_records_keep_the_body() -> None:
    text = deadletter.record("not_json", "x" * 5000, body=b'[["{"], {}, {}]', event_id=None)
    assert text["body"] == '[["{"], {}, {}]' and len(text["detail"]) == 2000
    binary = deadletter.record(
        deadletter.CONTENT_DISALLOWED,
        "pickle",
        body=b"\x80\x04.",
        task_id="t1",
        content_type="application/x-python-serialize",
    )
    assert binary["body"] == "\\x80\x04." and binary["body_b64"] == "gAQu"
    assert binary["escaped"] is True and "escaped" not in text
    assert json.loads(json.dumps(binary)) == binary


@pytest.mark.parametrize("value", ["\ud800", "x\udfff", b"COM-\xff", b"\xed\xa0\x80", "ok\x00"])
def test_a_dead_letter_can_be_written_for_any_input(value: str | bytes) -> None:
    """Lone surrogates and invalid UTF-8 in any field: the letter encodes, says it escaped."""
    text = value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
    letter = deadletter.record(
        "not_json",
        "detail " + text,
        body=value,
        event_id=text,
        task_id=text,
        content_type=text,
        extra={"failed_step": text, "n": 3},
    )
    encoded = deadletter.encode(letter)
    assert json.loads(encoded.decode("utf-8")) == letter
    assert deadletter.amqp_message(letter).body == encoded
    assert letter.get("escaped", False) is (value != "ok\x00")
    if isinstance(value, bytes):
        assert letter["body_b64"]  # the exact bytes are kept too


def test_a_huge_body_is_kept_cut_with_its_size() -> None:
    letter = deadletter.record("too_large", "big", body=b"x" * (5 * 1024 * 1024))
    assert letter["body_bytes"] == 5 * 1024 * 1024 and letter["body_truncated"]
    assert len(deadletter.encode(letter)) < deadletter.MAX_KEPT_BODY_BYTES + 2000


def test_screen_rejects_a_body_too_large_before_parsing_it() -> None:
    from legacy.consumer import MAX_TASK_BODY_BYTES

    raw = tricky_lines()[0]
    # garbage of the limit's size + 1: too_large, though it is not even JSON
    assert screen(message(b"[" * (MAX_TASK_BODY_BYTES + 1)))[0] == deadletter.TOO_LARGE  # type: ignore[index]
    # a 1 MiB event of control characters still fits a task body
    prefix = raw[:-1] + ', "pad": "' + "\\u0001" * 10 + '"'
    padded = prefix + "\x01" * (1024 * 1024 - len(prefix.encode()) - 1) + "}"
    assert len(padded.encode()) == 1024 * 1024
    assert len(task_message(padded).body) <= MAX_TASK_BODY_BYTES
    assert screen(message(task_message(padded).body)) is None
    nested = b'[["x"], {}, {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]"
    assert screen(message(nested))[0] == deadletter.UNDECODABLE  # type: ignore[index]
    huge = b'[["x"], {}, {"a": ' + b"9" * 5000 + b"}]"
    assert screen(message(huge))[0] == deadletter.BAD_TASK_MESSAGE  # type: ignore[index]


def test_retry_policy_retries_transient_errors_only_within_its_budget() -> None:
    import redis

    from legacy.retry import RetryPolicy, ambiguous, transient

    calls: list[int] = []
    noted: list[BaseException] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.ConnectionError("refused")
        return "ok"

    policy = RetryPolicy(budget_s=5.0, first_backoff_s=0.01)
    assert policy.run(flaky, noted.append) == "ok" and len(calls) == 3 and len(noted) == 2

    def always() -> None:
        calls.append(1)
        raise redis.TimeoutError("timeout")

    calls.clear()
    with pytest.raises(redis.TimeoutError):
        RetryPolicy(budget_s=0.05, first_backoff_s=0.01).run(always, noted.append)
    assert 2 <= len(calls) < 10

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug, not a blip")

    calls.clear()
    with pytest.raises(ValueError):
        policy.run(broken, noted.append)
    assert len(calls) == 1
    assert transient(redis.ConnectionError()) and not transient(ValueError())
    assert ambiguous(redis.TimeoutError()) and not ambiguous(redis.ConnectionError())


def test_a_dead_worker_says_why_from_its_log(tmp_path: Path) -> None:
    from legacy.worker import WorkerProcess

    log = tmp_path / "w.log"
    log.write_text(
        "noise\n[2026-11-27 10:00:00,000: CRITICAL/MainProcess] Unrecoverable error: "
        "UnicodeDecodeError('utf-8', b'\\xff', 0, 1, 'invalid start byte')\n"
        'Traceback (most recent call last):\n  File "x", line 1\n'
        "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff\n"
    )
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    reason = WorkerProcess(done, log).failure()
    assert reason is not None and "Unrecoverable error: UnicodeDecodeError" in reason
    from shadow.monitor import legacy_problem  # what `shadow run` stops on, at once

    said = legacy_problem(WorkerProcess(done, log))
    assert said is not None and reason in said and str(log) in said


def test_redis_runs_with_an_append_only_file_synced_every_second(tmp_path: Path) -> None:
    from services.redis import RedisService

    settings = Settings().model_copy(
        update={"services": Settings().services.model_copy(update={"data_dir": tmp_path})}
    )
    service = RedisService(settings)
    service.dir.mkdir(parents=True, exist_ok=True)
    service.configure()
    conf = (service.dir / "redis.conf").read_text().splitlines()
    assert "appendonly yes" in conf and "appendfsync everysec" in conf


def test_visible_time_is_the_customer_write_and_the_next_flush(tmp_path: Path) -> None:
    (tmp_path / "worker-1.trace").write_text(
        "task a 10.0 10.5\ntask b 10.9 11.0\ntask c 12.5 12.6\ntask a 30.0 30.1\ntask d 1"
    )
    (tmp_path / "flusher-1.trace").write_text("flush x 11.0 11.2\nflush y 12.0 12.3\n")
    traces = Traces.read(tmp_path)
    visible = traces.visible_at()
    assert visible["a"] == 11.2  # first completion; flush x took its increments
    assert visible["b"] == 11.2  # its customer write (11.0) came before flush x was written
    assert "c" not in visible  # no flush after it yet: not visible
    assert "d" not in traces.tasks  # a line cut by a crash


def test_settings_travel_whole_to_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings().model_copy(
        update={
            "rabbitmq": Settings().rabbitmq.model_copy(
                update={"legacy_queue": "q.x", "password": SecretStr("s3cr3t")}
            ),
            "redis": Settings().redis.model_copy(update={"prefix": "t:1:"}),
        }
    )
    for name, value in settings_env(original).items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.rabbitmq.legacy_queue == "q.x" and child.redis.prefix == "t:1:"
    assert child.rabbitmq.password.get_secret_value() == "s3cr3t"
    assert child.model_dump() == original.model_dump()


def test_worker_arguments_parse_back_to_the_same_options(tmp_path: Path) -> None:
    options = WorkerOptions(
        concurrency=3,
        pool="threads",
        prefetch_multiplier=4,
        flush_interval_s=0.5,
        chaos=Chaos(0.1, 0.2, 0.3),
        trace_dir=tmp_path,
        loglevel="INFO",
        hostname="w1@h",
        retry_budget_s=2.5,
        redis_timeout_s=0.75,
    )
    args = worker_args(options)
    assert args[:2] == ["legacy", "worker"]
    worker_command = legacy_group.commands["worker"]
    ctx = worker_command.make_context("worker", args[2:])
    p = ctx.params
    assert (p["concurrency"], p["pool"], p["prefetch_multiplier"], p["flush_interval_s"]) == (
        3,
        "threads",
        4,
        0.5,
    )
    assert Chaos(p["chaos_redeliver"], p["chaos_crash"], p["chaos_drop_flush"]) == options.chaos
    assert p["trace_dir"] == tmp_path and p["hostname"] == "w1@h"
    assert (p["retry_budget_s"], p["redis_timeout_s"]) == (2.5, 0.75)
    with pytest.raises(ValueError, match="pool"):
        WorkerOptions(pool="gevent")
    with pytest.raises(click.BadParameter):
        worker_command.make_context("worker", ["--chaos-crash", "2"])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ABACUS, *args], capture_output=True, text=True, check=False, env={**os.environ}
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["produce"], "exactly one of --events FILE or --generate N"),
        (["produce", "--generate", "10"], "--generate needs --events-out FILE"),
        (["produce", "--generate", "10", "--rate", "-1"], "--rate"),
        (["legacy", "worker", "--pool", "gevent"], "--pool"),
        (["legacy", "flush", "--interval-s", "0"], "--interval-s"),
    ],
)
def test_wrong_arguments_exit_non_zero_with_one_line(args: list[str], says: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr


@pytest.mark.parametrize(("name", "value"), HOSTILE_HEADERS)
def test_screen_refuses_headers_celery_would_drop_or_die_on(name: str, value: object) -> None:
    good = task_message(tricky_lines()[0])
    problem = screen(message(good.body, headers={**good.headers, name: value}))
    assert problem is not None and problem[0] == deadletter.BAD_TASK_MESSAGE, problem
    assert name in problem[1]


def test_status_reports_a_worker_failure_until_a_worker_starts_after_it() -> None:
    from legacy.status import Status

    def status(workers: dict[str, dict[str, object]]) -> Status:
        return Status(
            queue="q",
            ready=3,
            consumers=0,
            unacked=0,
            dead_letter_queue="d",
            dead_letters=0,
            pending_fields=0,
            batches=0,
            workers=workers,
        )

    died = {"state": "failed", "at": 20.0, "reason": "Unrecoverable error: UnicodeDecodeError"}
    now = status({"a": {"state": "running", "at": 10.0}, "b": died})
    assert now.failed_workers == {"b": died["reason"]}
    assert any("UnicodeDecodeError" in p for p in now.problems)
    assert any("no consumer" in p for p in now.problems)
    later = status({"b": died, "c": {"state": "running", "at": 30.0}})
    assert later.failed_workers == {}
    assert later.to_dict()["problems"] == ["3 messages wait in q with no consumer"]


def test_flusher_kills_are_selected_per_batch_and_reported_by_status() -> None:
    from legacy.status import Status

    ids = [f"batch-{i}" for i in range(10_000)]
    assert all(Chaos(kill_flush=1.0).kills_flush(i) for i in ids)
    assert not any(Chaos(drop_flush=1.0).kills_flush(i) for i in ids)
    assert 400 < sum(Chaos(kill_flush=0.05).kills_flush(i) for i in ids) < 600
    stats = {
        "chaos_killed_flushes": 2,
        "chaos_unconfirmed_keys": 7,
        "chaos_unconfirmed_count": 31,
        "chaos_unconfirmed_uniques": 9,
    }

    def status_of(stats: dict[str, int]) -> Status:
        return Status("q", 0, 1, 0, "d", 0, pending_fields=0, batches=0, stats=stats)

    status = status_of(stats)
    assert status.chaos == [
        "2 flusher(s) killed between write and delete: 7 keys written unconfirmed, "
        "31 count and 9 uniques increments written twice"
    ]
    assert status.to_dict()["chaos"] == status.chaos and not status.problems
    assert status_of({"processed": 3}).chaos == []
