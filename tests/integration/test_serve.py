"""The read API on a real Cassandra: answers equal what was written, bad parameters are 400s,
the token is required, the stage is followed without a restart, the experiment compares the
candidate, and `abacus serve` really binds a port (uvicorn in a subprocess)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from counting import AccountKey, CustomerKey
from cutover.state import StageStore
from serve.app import create_app
from serve.service import Service
from settings.model import Settings
from storage import CounterStore, Prepared, connect, keyspace_of
from storage import resources as storage_resources
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STORES = ["legacy", "shadow", "ops"]
C, S = "ACME", "opened"


@pytest.fixture(scope="module")
def env(settings: Settings, services_up: object) -> Iterator[tuple[Settings, Any]]:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": prefix})
    serve = settings.serve.model_copy(update={"stage_refresh_s": 0.2, "token": None})
    isolated = settings.model_copy(update={"cassandra": cass, "serve": serve})
    storage_resources.provision(isolated, STORES)
    session = connect(cass)
    prepared = Prepared(session)
    legacy = CounterStore(prepared, cass, "legacy")
    shadow = CounterStore(prepared, cass, "shadow")
    rows = [
        (AccountKey(C, S, "hour", "2025-12-01T00", "", ""), 5, 3),
        (AccountKey(C, S, "hour", "2025-12-01T02", "", ""), 7, 2),
        (AccountKey(C, S, "hour", "2025-12-01T02", "ip", "10.0.0.1"), 4, 1),
        (AccountKey(C, S, "hour", "2025-12-01T02", "ip", ""), 1, 1),
        (AccountKey(C, S, "day", "2025-11-30", "", ""), 2, 2),
        (AccountKey(C, S, "day", "2025-12-01", "", ""), 12, 4),
        (AccountKey(C, S, "month", "2025-12", "", ""), 12, 4),
        (AccountKey(C, S, "month", "2026-01", "", ""), 9, 9),
    ]
    legacy.write_account(rows)
    shadow.write_account(rows)
    customer_rows = [
        (CustomerKey(C, "U1", S, "day", "2025-12-01"), 6),
        (CustomerKey(C, "U1", S, "day", "2025-12-03"), 1),
        (CustomerKey(C, "U2", S, "day", "2025-12-01"), 9),
    ]
    legacy.write_customer(customer_rows)
    shadow.write_customer(customer_rows)
    # the only difference between the stores: shadow's hour 2025-12-01T05
    shadow.write_account([(AccountKey(C, S, "hour", "2025-12-01T05", "", ""), 1, 1)])
    yield isolated, session
    session.cluster.shutdown()
    storage_resources.teardown(isolated, STORES)


def _set_stage(settings: Settings, session: Any, stage: str) -> int:
    store = StageStore(session, settings.cassandra)
    return store.write(store.get(serial=True), stage=stage).version


def _client(settings: Settings, **serve: Any) -> TestClient:
    s = settings.model_copy(update={"serve": settings.serve.model_copy(update=serve)})
    return TestClient(create_app(Service(s)))


def _buckets(answer: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {b["bucket"]: tuple(v for k, v in b.items() if k != "bucket") for b in answer["buckets"]}


Q = {"company": C, "statistic": S}


def test_answers_equal_what_was_written(env: tuple[Settings, Any]) -> None:
    settings, _ = env
    with _client(settings) as client:
        hours = client.get(
            "/v1/account-counts",
            params={**Q, "resolution": "hour", "from": "2025-12-01T00", "to": "2025-12-01T03"},
        )
        assert hours.status_code == 200, hours.text
        body = hours.json()
        assert (body["stage"], body["store"]) == ("legacy", "legacy")
        assert body["keyspace"] == keyspace_of(settings.cassandra, "legacy")
        assert _buckets(body) == {
            "2025-12-01T00": (5, 3),
            "2025-12-01T01": (0, 0),
            "2025-12-01T02": (7, 2),
            "2025-12-01T03": (0, 0),
        }
        facet = client.get(
            "/v1/account-counts",
            params={
                **Q,
                "resolution": "hour",
                "from": "2025-12-01T02",
                "to": "2025-12-01T02",
                "facet": "ip",
                "value": "10.0.0.1",
            },
        ).json()
        assert _buckets(facet) == {"2025-12-01T02": (4, 1)}
        empty_value = client.get(
            "/v1/account-counts",
            params={**Q, "resolution": "hour", "from": "2025-12-01T02", "to": "2025-12-01T02"}
            | {"facet": "ip", "value": ""},
        ).json()
        assert _buckets(empty_value) == {"2025-12-01T02": (1, 1)}
        days = client.get(
            "/v1/account-counts",
            params={**Q, "resolution": "day", "from": "2025-11-30", "to": "2025-12-01"},
        ).json()
        assert _buckets(days) == {"2025-11-30": (2, 2), "2025-12-01": (12, 4)}
        months = client.get(  # two partitions (years) in one query
            "/v1/account-counts",
            params={**Q, "resolution": "month", "from": "2025-12", "to": "2026-01"},
        ).json()
        assert _buckets(months) == {"2025-12": (12, 4), "2026-01": (9, 9)}
        customer = client.get(
            "/v1/customer-counts",
            params={**Q, "customer": "U1", "resolution": "day"}
            | {"from": "2025-12-01", "to": "2025-12-03"},
        ).json()
        assert customer["query"]["customer"] == "U1"
        assert _buckets(customer) == {"2025-12-01": (6,), "2025-12-02": (0,), "2025-12-03": (1,)}


@pytest.mark.parametrize(
    ("route", "params", "says"),
    [
        ("/v1/account-counts", {"statistic": S, "resolution": "day"}, "missing parameter: company"),
        ("/v1/account-counts", {**Q, "resolution": "week"}, "resolution must be one of"),
        ("/v1/account-counts", {**Q, "resolution": "day", "from": "2025-12-01T00"}, "from must"),
        ("/v1/account-counts", {**Q, "resolution": "day", "from": "2025-02-30"}, "not a real day"),
        (
            "/v1/account-counts",
            {**Q, "resolution": "day", "from": "2025-12-02", "to": "2025-12-01"},
            "is after",
        ),
        (
            "/v1/account-counts",
            {**Q, "resolution": "hour", "from": "2025-01-01T00", "to": "2025-03-01T00"},
            "at most 1000",
        ),
        (
            "/v1/account-counts",
            {"company": "x" * 65, "statistic": S, "resolution": "day"},
            "company must be 1..64",
        ),
        (
            "/v1/account-counts",
            {**Q, "resolution": "day", "from": "2025-12-01", "to": "2025-12-01", "facet": "ip"},
            "facet and value go together",
        ),
        (
            "/v1/account-counts",
            {**Q, "resolution": "day", "from": "2025-12-01", "to": "2025-12-01", "fcet": "ip"},
            "unknown parameter: fcet",
        ),
        (
            "/v1/customer-counts",
            {**Q, "resolution": "day", "from": "2025-12-01", "to": "2025-12-01"},
            "missing parameter: customer",
        ),
    ],
)
def test_bad_parameters_are_400(
    env: tuple[Settings, Any], route: str, params: dict[str, str], says: str
) -> None:
    settings, _ = env
    with _client(settings) as client:
        response = client.get(route, params={"from": "2025-12-01", "to": "2025-12-01"} | params)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


def test_token_required_except_health(env: tuple[Settings, Any]) -> None:
    settings, _ = env
    params = {**Q, "resolution": "day", "from": "2025-12-01", "to": "2025-12-01"}
    with _client(settings, token=SecretStr("s3cret-token")) as client:
        assert client.get("/health").status_code == 200
        missing = client.get("/v1/account-counts", params=params)
        assert missing.status_code == 401
        assert "s3cret" not in missing.text
        wrong = client.get(
            "/v1/account-counts", params=params, headers={"Authorization": "Bearer s3cret-tokem"}
        )
        assert wrong.status_code == 401
        assert (
            client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code
            == 401
        )
        ok = client.get(
            "/v1/account-counts", params=params, headers={"Authorization": "Bearer s3cret-token"}
        )
        assert ok.status_code == 200, ok.text
        metrics = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).text
        assert 'abacus_serve_requests_total{route="/v1/account-counts",status="401"} 2.0' in metrics


def test_stage_followed_without_restart_and_experiment(env: tuple[Settings, Any]) -> None:
    """legacy -> shadow -> m1 under one running app: each answer names the store the stage
    designates; in shadow the candidate is read for every query (share 1) and the only
    bucket where the stores differ is reported, the equal ones are not."""
    settings, session = env
    hour = {**Q, "resolution": "hour"}
    equal = hour | {"from": "2025-12-01T00", "to": "2025-12-01T02"}
    differ = hour | {"from": "2025-12-01T04", "to": "2025-12-01T05"}
    with _client(settings, experiment_share=1.0) as client:

        def answered(params: dict[str, str]) -> dict[str, Any]:
            r = client.get("/v1/account-counts", params=params)
            assert r.status_code == 200, r.text
            return dict(r.json())

        assert answered(equal)["stage"] == "legacy"
        assert client.get("/experiment").json()["sampled"] == 0  # no candidate in legacy
        _set_stage(settings, session, "shadow")
        shadow = wait_until("the API follows shadow", lambda: _in_stage(answered(equal), "shadow"))
        assert (shadow["store"], shadow["candidate"]) == ("legacy", "shadow")
        answered(differ)
        answered(equal)
        report = wait_until(
            "the experiment judges its samples",
            lambda: _judged(client.get("/experiment").json(), 3),
        )
        assert report["mismatches"] == 1 and report["matches"] == 2, report
        assert report["ignored"] == 0 and report["noise_floor"] == 0.0
        (sample,) = report["samples"]
        assert sample["query"]["from"] == "2025-12-01T04"
        assert sample["differs"] == [
            {
                "bucket": "2025-12-01T05",
                "control": {"count": 0, "uniques": 0},
                "candidate": {"count": 1, "uniques": 1},
            }
        ]
        metrics = client.get("/metrics").text
        assert "abacus_serve_experiment_mismatches_total 1.0" in metrics
        assert "abacus_serve_experiment_compared_total 3.0" in metrics
        _set_stage(settings, session, "m1")
        m1 = wait_until("the API follows m1", lambda: _in_stage(answered(equal), "m1"))
        assert m1["store"] == "serving"
        assert m1["keyspace"] == keyspace_of(settings.cassandra, "legacy")  # legacy's tables
        _set_stage(settings, session, "legacy")
        wait_until("the API follows legacy", lambda: _in_stage(answered(equal), "legacy"))


def _in_stage(answer: dict[str, Any], stage: str) -> dict[str, Any] | None:
    return answer if answer["stage"] == stage else None


def _judged(report: dict[str, Any], n: int) -> dict[str, Any] | None:
    return report if report["compared"] + report["errors"] >= n and report["queued"] == 0 else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ABACUS_CASSANDRA__KEYSPACE_PREFIX": settings.cassandra.keyspace_prefix,
        **extra,
    }


def _counts_get(settings: Settings, first: str, last: str, *more: str) -> Any:
    day = ["--company", C, "--statistic", S, "--resolution", "day", "--from", first, "--to", last]
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "counts", "get", *day, *more],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_abacus_serve_binds_and_answers_over_http(env: tuple[Settings, Any]) -> None:
    settings, session = env
    _set_stage(settings, session, "legacy")
    port = _free_port()
    abacus = [sys.executable, str(ROOT / "cli.py")]
    server = subprocess.Popen(
        [*abacus, "serve", "--port", str(port)],
        env=_env(settings, ABACUS_SERVE__TOKEN="t0ken"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def health() -> bool:
            if server.poll() is not None:
                pytest.fail(f"abacus serve exited {server.returncode}: {server.stdout.read()}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until("abacus serve answers /health", health)
        url = (
            f"{base}/v1/account-counts?company={C}&statistic={S}&resolution=day"
            "&from=2025-11-30&to=2025-12-01"
        )
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(request, timeout=10) as r:
            answer = json.loads(r.read())
        assert _buckets(answer) == {"2025-11-30": (2, 2), "2025-12-01": (12, 4)}
        # abacus counts get: the same query from the CLI, the same answer
        cli = _counts_get(settings, "2025-11-30", "2025-12-01", "--format", "json")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == answer
        bad = _counts_get(settings, "2025-12-01", "2025-11-30")
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            "abacus counts get: from (2025-12-01) is after to (2025-11-30)"
        ]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
