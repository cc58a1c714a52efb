"""Logging of the long-running commands, set up once: text (as before) or JSON, one event a
line, and secrets never written in either.

`configure(fmt, level, secrets)` puts one handler on the root logger (stderr); every record
any logger emits through it passes `RedactFilter` first: each configured secret (the
`SecretStr` values of the settings, `secrets_of`) and the password of anything URL-shaped
(`amqp://user:pass@host`) is replaced by `**********` in the message, its arguments, the
exception's traceback and the extra fields. JSON is a small `Formatter` over `json.dumps`
(no dependency: the fields are ours, and redaction happens before encoding):

    {"ts": "2026-11-27T17:20:01.123Z", "level": "INFO", "logger": "abacus.bridge",
     "msg": "...", "exc": "Traceback ...", ...extra fields given with `extra={...}`}

The format is chosen by `--log-format` or the setting `services.log_format`
(ABACUS_SERVICES__LOG_FORMAT); a command given `--log-format` puts it in its settings
(`with_log_format`), so the processes it starts (they get its settings) log the same way.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any, Literal, cast
from urllib.parse import quote

from pydantic import BaseModel, SecretStr

from settings.model import Settings

LogFormat = Literal["text", "json"]
FORMATS: tuple[str, ...] = ("text", "json")
MASK = "**********"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# a secret shorter than this is only masked where it is a URL's password (masking every
# "ab" in every line would say nothing and garble the rest)
MIN_SECRET_LEN = 3

# scheme://user:password@  (user may be empty: redis://:password@host)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@]+)@")

# the attributes every LogRecord has: the others are a call's `extra` fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def secrets_of(settings: BaseModel) -> list[str]:
    """Every `SecretStr` value set in the settings (any section, any depth)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple | set):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(settings)
    return [s for s in found if s]


class Redactor:
    """Masks the given secrets (as written and URL-quoted, longest first) and URL passwords."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {
            form
            for secret in secrets
            if len(secret) >= MIN_SECRET_LEN
            for form in (secret, quote(secret, safe=""), quote(secret))
        }
        ordered = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(MASK, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(
                lambda m: f"{m['head']}{m['pw'] if m['pw'] == MASK else MASK}@", text
            )
        return text


class RedactFilter(logging.Filter):
    """On a handler: redacts each record before any formatter sees it (the message with its
    arguments merged in, the exception's text, the stack, string extra fields)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redact = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a wrong format string: keep what there is, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (ISO-8601 UTC, ms), level, logger, msg, exc (a traceback
    when there is one), stack, then the record's extra fields (not JSON: their str, masked)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        event: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        for key, value in vars(record).items():
            if key in _STANDARD or key in event or key.startswith("_"):
                continue
            event[key] = value if _plain(value) else self.redact(str(value))
        return json.dumps(event, ensure_ascii=True, default=lambda v: self.redact(str(v)))


def _plain(value: Any) -> bool:
    if isinstance(value, str | int | float | bool) or value is None:
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def handler(
    fmt: LogFormat,
    secrets: Iterable[str] = (),
    text_format: str = TEXT_FORMAT,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """A stream handler (stderr) in `fmt`, redacting `secrets`."""
    redactor = Redactor(secrets)
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonFormatter(redactor) if fmt == "json" else logging.Formatter(text_format))
    out.addFilter(RedactFilter(redactor))
    return out


def configure(
    fmt: LogFormat,
    level: int | str = logging.INFO,
    secrets: Iterable[str] = (),
    text_format: str = TEXT_FORMAT,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """The root logger's only handler: `handler(...)`; the root's level `level`. Python's
    warnings are logged too (py.warnings). Returns the handler."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    out = handler(fmt, secrets, text_format, stream)
    root.addHandler(out)
    root.setLevel(level)
    logging.captureWarnings(True)
    return out


def configure_for(
    settings: Settings, level: int | str = logging.INFO, text_format: str = TEXT_FORMAT
) -> logging.Handler:
    """`configure` in the settings' format (`services.log_format`) with their secrets."""
    return configure(settings.services.log_format, level, secrets_of(settings), text_format)


def add_redaction(target: logging.Logger, settings: Settings) -> None:
    """Redact the settings' secrets on each handler of `target` (loggers a library set up
    itself, e.g. Celery's in text format)."""
    redact = RedactFilter(Redactor(secrets_of(settings)))
    for each in target.handlers:
        if not any(isinstance(f, RedactFilter) for f in each.filters):
            each.addFilter(redact)


def with_log_format(settings: Settings, fmt: str | None) -> Settings:
    """The settings with `services.log_format` = `fmt` (a `--log-format` given), so the
    processes started with them log the same way; unchanged when `fmt` is None."""
    if fmt is None or fmt == settings.services.log_format:
        return settings
    services = settings.services.model_copy(update={"log_format": cast(LogFormat, fmt)})
    return settings.model_copy(update={"services": services})


def log_line(settings: Settings, logger: str, msg: str) -> str:
    """One INFO line written by hand into a log file a child process then writes, in the
    settings' format (a JSON log file stays JSON on every line), masked; ends with \\n."""
    redactor = Redactor(secrets_of(settings))
    if settings.services.log_format == "json":
        record = logging.LogRecord(logger, logging.INFO, __file__, 0, redactor(msg), None, None)
        return JsonFormatter(redactor).format(record) + "\n"
    return redactor(msg) + "\n"


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's own logging config (its text format, as without one) with the settings'
    secrets masked on each of its handlers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactFilter, "redactor": Redactor(secrets_of(settings))}}
    for each in config.get("handlers", {}).values():
        each["filters"] = [*each.get("filters", []), "redact"]
    return config
