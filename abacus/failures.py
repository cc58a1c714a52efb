"""A Flink job's failures, as its cluster's REST API and its logs tell them: how often it
restarted, when, and the root exception of the newest failure, in one line.

Read for a local job's MiniCluster (`abacus.runner`), for a job on a remote cluster
(`abacus.remote`), and from the log of a runner that died (`abacus.manager`).
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from typing import Any

from abacus.state import JobState
from counting.text import escape

ERROR_LINE = re.compile(r"^(Caused by: )?[A-Za-z_][\w.$]*(Error|Exception): ")
_PYTHON_ERROR = re.compile(r"^pemja\.core\.PythonException: <class '([\w.]+)'>: ")
_KEPT_FAILURES = 32


def root_cause(trace: str) -> str:
    """The root exception line of a Java stack trace: its deepest `Caused by:` (or its first
    line), a Python operator's error as `Type: message`; always encodable, one line, at most
    500 characters."""
    lines = trace.splitlines()
    causes = [line.strip() for line in lines if line.startswith("Caused by: ")]
    line = causes[-1].removeprefix("Caused by: ") if causes else (lines[0].strip() if lines else "")
    line = _PYTHON_ERROR.sub(r"\1: ", line)
    return escape(line)[0][:500] or "no reason given"


def error_line(output: str) -> str | None:
    """The root exception line in a log or a command's output (its last `Caused by:`, else
    its last error line), or None when it holds no error."""
    errors = [line.strip() for line in output.splitlines() if ERROR_LINE.match(line.strip())]
    causes = [e for e in errors if e.startswith("Caused by: ")]
    return root_cause((causes or errors)[-1]) if errors else None


@dataclass(frozen=True, slots=True)
class Failures:
    """A job's failures as its cluster's REST API reports them."""

    restarts: int  # numRestarts
    times_ms: list[int]  # the failures in Flink's exception history, oldest first
    reason: str | None  # the newest one's root exception line


def failures(base_url: str, job_id: str, timeout_s: float = 5.0) -> Failures:
    """GET /jobs/<id>/exceptions and numRestarts (raises OSError/ValueError when the API
    does not answer)."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"not a REST address: {base_url}")
    history = (
        _get(f"{base_url}/jobs/{job_id}/exceptions?maxExceptions={_KEPT_FAILURES}", timeout_s).get(
            "exceptionHistory"
        )
        or {}
    )
    entries = [e for e in history.get("entries") or [] if isinstance(e, dict)]
    entries.sort(key=lambda e: e.get("timestamp") or 0)
    found = _get(f"{base_url}/jobs/{job_id}/metrics?get=numRestarts", timeout_s)
    metrics = {m.get("id"): m.get("value") for m in found if isinstance(m, dict)}
    try:
        restarts = int(metrics.get("numRestarts") or 0)
    except ValueError:
        restarts = 0
    reason = None
    if entries:
        newest = entries[-1]
        reason = root_cause(newest.get("stacktrace") or newest.get("exceptionName") or "")
    return Failures(max(restarts, 0), [int(e.get("timestamp") or 0) for e in entries], reason)


def _get(url: str, timeout_s: float) -> Any:
    """GET a JSON document from a REST address (callers check that it is http(s))."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
        return json.load(response)


def with_failures(state: JobState, found: Failures) -> JobState:
    """`state` updated with what the cluster says about its failures."""
    return state.replace(
        restarts=max(found.restarts, state.restarts),
        failure_times_ms=found.times_ms[-_KEPT_FAILURES:] or state.failure_times_ms,
        error=found.reason or state.error,
    )
