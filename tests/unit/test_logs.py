"""settings.logs: the JSON formatter and the redaction of secrets, in both formats."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from settings import Settings
from settings.logs import (
    MASK,
    Redactor,
    configure,
    handler,
    log_line,
    secrets_of,
    uvicorn_log_config,
    with_log_format,
)

RMQ, CASS, KAFKA, REDIS, TOKEN = (
    "rmq-Pa55word",
    "cass/Pa55:word",
    "kafka pa55 word",
    "redis@Pa55",
    "tok3n-of-serve",
)
ALL = (RMQ, CASS, KAFKA, REDIS, TOKEN)


def _settings(**services: object) -> Settings:
    return Settings.model_validate(
        {
            "rabbitmq": {"password": RMQ},
            "cassandra": {"username": "c", "password": CASS},
            "kafka": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "k",
                "sasl_password": KAFKA,
            },
            "redis": {"password": REDIS},
            "serve": {"token": TOKEN},
            "services": services,
        }
    )


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test.logs")
    log.propagate = False
    yield log
    log.handlers.clear()
    log.propagate = True


def _capture(log: logging.Logger, fmt: str, settings: Settings) -> io.StringIO:
    out = io.StringIO()
    log.handlers[:] = [handler(fmt, secrets_of(settings), stream=out)]  # type: ignore[arg-type]
    log.setLevel(logging.DEBUG)
    return out


def _events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_secrets_of_finds_every_secret_of_the_settings() -> None:
    assert sorted(secrets_of(_settings())) == sorted(ALL)
    assert secrets_of(Settings()) == ["guest"]  # the default RabbitMQ password only


def test_json_event_has_the_fields_and_the_extras(logger: logging.Logger) -> None:
    out = _capture(logger, "json", Settings())
    logger.info("moved %d of %s", 3, "x", extra={"queue": "q", "n": 3, "lags": {"a": 1}})
    (event,) = _events(out)
    assert event["level"] == "INFO" and event["logger"] == "test.logs"
    assert event["msg"] == "moved 3 of x"
    assert event["queue"] == "q" and event["n"] == 3 and event["lags"] == {"a": 1}
    assert str(event["ts"]).endswith("Z") and str(event["ts"])[10] == "T"
    assert "exc" not in event


def test_json_one_line_per_event_even_with_newlines_and_an_exception(
    logger: logging.Logger,
) -> None:
    out = _capture(logger, "json", Settings())
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        logger.exception("failed\nbadly", extra={"obj": object()})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["msg"] == "failed\nbadly"
    assert "ValueError: first\nsecond" in str(event["exc"])
    assert str(event["obj"]).startswith("<object object")  # not JSON: its str


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("secret", ALL)
def test_each_secret_is_masked_in_message_args_extras_and_exceptions(
    logger: logging.Logger, fmt: str, secret: str
) -> None:
    out = _capture(logger, fmt, _settings())
    logger.warning("in the message: " + secret)
    logger.warning("in the args: %s and %r", secret, {"p": secret})
    logger.warning("in an extra", extra={"detail": f"x {secret} y"})
    try:
        raise RuntimeError(f"login failed with {secret}")
    except RuntimeError:
        logger.exception("in an exception")
    logger.warning("in the stack", stack_info=True, extra={"also": secret})
    text = out.getvalue()
    assert secret not in text
    assert text.count(MASK) >= (6 if fmt == "json" else 4)  # text shows no extras
    if fmt == "json":
        assert len(_events(out)) == 5


@pytest.mark.parametrize(
    "url",
    [
        "amqp://user:s3cr3t@mq:5672//",
        "redis://:s3cr3t@127.0.0.1:6379/0",
        "postgresql+psycopg://u:s3cr3t@db/x",
        "amqps://u:s%2Fcr%40t@mq/vh",
    ],
)
def test_url_shaped_passwords_are_masked_even_when_not_configured(url: str) -> None:
    redact = Redactor()
    said = redact(f"cannot connect to {url}: refused")
    assert "s3cr3t" not in said and "s%2Fcr%40t" not in said
    assert f":{MASK}@" in said
    assert redact("amqp://guest:**@127.0.0.1:5672//") == f"amqp://guest:{MASK}@127.0.0.1:5672//"


def test_url_quoted_secret_and_the_url_the_settings_build_are_masked() -> None:
    settings = _settings()
    redact = Redactor(secrets_of(settings))
    said = redact(f"broker {settings.rabbitmq.url()} and {quote(CASS, safe='')}")
    for secret in ALL:
        assert secret not in said
    assert "Pa55" not in said


def test_text_without_secrets_is_unchanged() -> None:
    redact = Redactor(secrets_of(Settings()))
    for text in ("published 3 events to abacus.events", "http://127.0.0.1:8470/counts"):
        assert redact(text) == text


def test_a_short_secret_is_masked_only_as_a_url_password() -> None:
    redact = Redactor(["ab"])
    assert redact("about abc") == "about abc"
    assert redact("amqp://u:ab@h") == f"amqp://u:{MASK}@h"


def test_configure_replaces_root_handlers_and_keeps_the_text_format() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        out = io.StringIO()
        configure("text", logging.INFO, [RMQ], text_format="%(levelname)s %(message)s", stream=out)
        logging.getLogger("test.logs.root").info("pw %s", RMQ)
        assert out.getvalue() == f"INFO pw {MASK}\n"
        assert len(root.handlers) == 1
    finally:
        root.handlers[:] = before
        root.setLevel(level)


def test_formatter_masks_extras_that_are_not_json(logger: logging.Logger) -> None:
    class Conn:
        def __str__(self) -> str:
            return f"<Conn amqp://u:p4ss@h {RMQ}>"

    out = _capture(logger, "json", _settings())
    logger.warning("connection", extra={"conn": Conn(), "conns": [Conn()]})
    (event,) = _events(out)
    assert "p4ss" not in out.getvalue() and RMQ not in out.getvalue()
    assert event["conn"] == f"<Conn amqp://u:{MASK}@h {MASK}>"


def test_with_log_format_travels_in_the_settings_and_the_env() -> None:
    settings = with_log_format(Settings(), "json")
    assert settings.services.log_format == "json"
    assert with_log_format(settings, None) is settings
    from services.procs import settings_env

    env = settings_env(settings)
    assert json.loads(env["ABACUS_SERVICES"])["log_format"] == "json"
    assert Settings().services.log_format == "text"


def test_log_line_in_each_format() -> None:
    assert log_line(_settings(), "a.b", f"start {RMQ}") == f"start {MASK}\n"
    line = log_line(_settings(log_format="json"), "a.b", f"start {RMQ}")
    event = json.loads(line)
    assert line.endswith("\n") and event["msg"] == f"start {MASK}" and event["logger"] == "a.b"


def test_uvicorn_config_keeps_its_format_and_adds_the_filter() -> None:
    config = uvicorn_log_config(_settings())
    assert config["formatters"]["default"]["()"] == "uvicorn.logging.DefaultFormatter"
    assert all("redact" in h["filters"] for h in config["handlers"].values())
    logging.config.dictConfig(config)  # valid as uvicorn would apply it
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()


def test_every_long_running_command_has_log_format() -> None:
    from cli import root

    runner = CliRunner()
    for args in (
        ["legacy", "worker"],
        ["legacy", "flush"],
        ["bridge", "run"],
        ["bridge", "start"],
        ["job", "run"],
        ["serve"],
        ["shadow", "run"],
    ):
        result = runner.invoke(root, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "--log-format [text|json]" in result.output, args


def test_job_runner_logs_in_the_requests_format(tmp_path: Path) -> None:
    """abacus.runner's own logging: the request's settings say the format (a request that
    fails at once, before PyFlink: its one line is still a JSON event, masked)."""
    settings = _settings(log_format="json")
    from services.procs import settings_env

    request = {"settings": json.loads(json.dumps(settings.model_dump(mode="json")))}
    for section, value in settings_env(settings).items():  # secrets in clear, as sent
        request["settings"][section.removeprefix("ABACUS_").lower()] = json.loads(value)
    code = (
        "import logging, sys, abacus.runner as r\n"
        "r._configure_logs(__import__('json').loads(sys.stdin.read()))\n"
        f"logging.getLogger('abacus.runner').warning('pw %s', {RMQ!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    (event,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert event["msg"] == f"pw {MASK}" and event["logger"] == "abacus.runner"


def test_secret_str_never_reaches_a_record_as_its_value(logger: logging.Logger) -> None:
    out = _capture(logger, "json", _settings())
    logger.warning("token %s", SecretStr(TOKEN))
    assert TOKEN not in out.getvalue()


def test_shadow_runs_lines_as_events() -> None:
    """`shadow run --log-format json` without a terminal: its phases and progress lines are
    events of `abacus.shadow`, the figures as fields."""
    from types import SimpleNamespace
    from typing import Any, cast

    from shadow.monitor import Sample
    from shadow.view import EventLogView

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        configure("json", logging.WARNING, [RMQ], stream=out)
        view = EventLogView(every_s=0.0)
        view.phase(f"starting legacy with amqp://u:{RMQ}@h")
        sample = Sample(
            at=1.0,
            legacy={"stats": {"processed": 5, "dead_lettered": 1}, "ready": 2},
            bridge={"produced": 7},
            jobs={"statistic": {"lag": 3}},
        )
        view.update(sample, cast(Any, SimpleNamespace(published=9)), None, None)
    finally:
        root.handlers[:] = before
        root.setLevel(level)
    phase, progress = _events(out)
    assert (
        phase["logger"] == "abacus.shadow"
        and phase["msg"] == f"starting legacy with amqp://u:{MASK}@h"
    )
    assert progress["msg"] == "progress"
    assert (progress["published"], progress["legacy_done"], progress["legacy_queue"]) == (9, 6, 2)
    assert progress["bridge_produced"] == 7 and progress["job_lags"] == {"statistic": 3}
