"""The cutover's tests' environment (helpers, not tests): an ops keyspace of its own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from settings.model import Settings
from storage import connect, keyspace_of, statements


@contextlib.contextmanager
def private_ops(settings: Settings) -> Iterator[tuple[Settings, Any, str]]:
    """`settings` with a keyspace prefix of its own, whose ops keyspace holds the cutover's
    tables; (settings, a session, the prefix); the keyspace is dropped after."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": prefix})
    session = connect(cass)
    for cql in statements(cass):
        if ".cutover" in cql or (cql.startswith("CREATE KEYSPACE") and "abacus_ops" in cql):
            session.execute(cql, timeout=120)
    try:
        yield settings.model_copy(update={"cassandra": cass}), session, prefix
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace_of(cass, 'ops')}", timeout=120)
        session.cluster.shutdown()
