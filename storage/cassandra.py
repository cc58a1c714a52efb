"""Cassandra sessions from settings: auth, TLS, a local DC, prepared statements cached."""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from settings import CassandraSettings


def connect(settings: CassandraSettings) -> Session:
    """A new session (the caller shuts down `session.cluster` when done)."""
    kwargs: dict[str, Any] = {"contact_points": settings.hosts, "port": settings.port}
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else ""
        kwargs["auth_provider"] = PlainTextAuthProvider(settings.username, password)
    if settings.ssl:
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        kwargs["ssl_context"] = context
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))
    profile = ExecutionProfile(
        load_balancing_policy=policy, request_timeout=settings.request_timeout_s
    )
    cluster = Cluster(
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5, **kwargs
    )
    return cluster.connect()


class Prepared:
    """Prepare each CQL text once per session; never format values into CQL."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._get = lru_cache(maxsize=256)(session.prepare)

    def __call__(self, cql: str) -> Any:
        return self._get(cql)
