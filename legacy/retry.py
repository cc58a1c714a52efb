"""Retrying a step of legacy's work on a transient error, with exponential backoff.

Transient: Redis connection errors and timeouts (a restart, a partition, a full client
pause); Cassandra connection errors, timeouts, unavailable or overloaded replicas. Any other
error is not retried. A step is retried until its budget (seconds since its first attempt)
is spent, then the last error is raised for the caller to dead-letter.

Some transient errors are *ambiguous*: a timeout after the request left may mean it was
applied. `ambiguous(exc)` names them, so a caller that cannot make a step idempotent can
count the retries that may have doubled something.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import cassandra
import redis
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

T = TypeVar("T")

_TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,  # BusyLoadingError is a ConnectionError
    NoHostAvailable,
    ConnectionException,
    cassandra.OperationTimedOut,
    cassandra.Unavailable,
    cassandra.Timeout,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ConnectionError,
    TimeoutError,
)
_AMBIGUOUS: tuple[type[BaseException], ...] = (
    redis.TimeoutError,
    cassandra.OperationTimedOut,
    cassandra.WriteTimeout,
    TimeoutError,
)


def transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


def ambiguous(exc: BaseException) -> bool:
    """A timeout: the request may have been applied although it failed."""
    return isinstance(exc, _AMBIGUOUS)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # give up once this long has passed since the first attempt: long enough for a Cassandra
    # restart and the driver's reconnection backoff; the queue holds what waits meanwhile
    budget_s: float = 300.0
    first_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.budget_s < 0 or self.first_backoff_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("retry budget must be >= 0 and backoffs > 0")

    def run(self, step: Callable[[], T], on_retry: Callable[[BaseException], None]) -> T:
        """`step()`, retried on transient errors with doubling backoff within the budget;
        `on_retry(exc)` before each retry. Raises the last error when it gives up."""
        deadline = time.monotonic() + self.budget_s
        backoff = self.first_backoff_s
        while True:
            try:
                return step()
            except Exception as exc:
                if not transient(exc):
                    raise
                wait = min(backoff, self.max_backoff_s)
                if time.monotonic() + wait > deadline:
                    raise
                on_retry(exc)
                time.sleep(wait)
                backoff *= 2
