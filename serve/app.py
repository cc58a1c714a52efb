"""The HTTP JSON API (FastAPI): the product's two queries, the stage, the experiment, and
Prometheus metrics. Every answer says which stage and store answered it.

    GET /                         the console page (HTML: stage, audits, pipelines, history)
    GET /health                   no auth: {"status": "ok"}
    GET /v1/account-counts        company, statistic, resolution, from, to[, facet, value]
    GET /v1/customer-counts       company, customer, statistic, resolution, from, to
    GET /stage                    the stage followed and its stores
    GET /experiment               the read-path experiment's counts and sample mismatches
    GET /metrics                  Prometheus text

A bad parameter is a 400 with one message; with `serve.token` set, every route but /health
needs `Authorization: Bearer <token>` (else 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.queries import BadParameter, parse_query
from serve.service import Service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH = "/health"
ACCOUNT = "/v1/account-counts"
CUSTOMER = "/v1/customer-counts"
CONSOLE = "/"
ROUTES = (HEALTH, ACCOUNT, CUSTOMER, "/stage", "/experiment", "/metrics", CONSOLE)
_PARAMS = {
    ACCOUNT: {"company", "statistic", "resolution", "from", "to", "facet", "value"},
    CUSTOMER: {"company", "customer", "statistic", "resolution", "from", "to"},
}


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class Guard:
    """Bearer-token check and request metrics, as one plain ASGI middleware (cheaper than
    Starlette's BaseHTTPMiddleware). The token is compared in constant time and never
    logged; /health is open."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.metrics = service.metrics
        token = service.settings.serve.token
        self._token = None if token is None else token.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._token is not None and path != HEALTH and not self._authorized(scope):
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    given.strip(), self._token
                )
        return False


def create_app(service: Service) -> FastAPI:
    """The API over `service`; the app's lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="Abacus read API",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _error(400, str(exc.errors()[0].get("msg", "bad request")))

    async def _query(request: Request, route: str) -> Response:
        params = request.query_params
        unknown = sorted(set(params) - _PARAMS[route])
        if unknown:
            return _error(400, f"unknown parameter: {unknown[0][:64]}")
        try:
            query = parse_query(
                params.get("company"),
                params.get("statistic"),
                params.get("resolution"),
                params.get("from"),
                params.get("to"),
                params.get("facet"),
                params.get("value"),
                params.get("customer") if route == CUSTOMER else None,
            )
            if route == CUSTOMER and query.customer is None:
                raise BadParameter("missing parameter: customer")
        except BadParameter as exc:
            return _error(400, str(exc))
        try:
            return _json(await service.answer(query))
        except Exception as exc:  # the store could not answer: say so, not a stack trace
            return _error(503, f"store unavailable: {type(exc).__name__}")

    @app.get(HEALTH)
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get(ACCOUNT)
    async def account_counts(request: Request) -> Response:
        return await _query(request, ACCOUNT)

    @app.get(CUSTOMER)
    async def customer_counts(request: Request) -> Response:
        return await _query(request, CUSTOMER)

    @app.get("/stage")
    async def stage() -> Response:
        return _json(service.follower.status())

    @app.get("/experiment")
    async def experiment() -> Response:
        view = service.follower.view
        return _json(
            {
                "stage": view.stage,
                "control": view.control,
                "candidate": view.candidate,
                **service.experiment.snapshot(),
            }
        )

    @app.get(CONSOLE)
    async def console() -> Response:
        try:
            page = await asyncio.to_thread(service.console_page)
        except Exception as exc:  # Cassandra unreachable: say so, not a stack trace
            return _error(503, f"console unavailable: {type(exc).__name__}")
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/metrics")
    async def metrics() -> Response:
        # the operations figures first (cached; a part that cannot be read is exported as
        # abacus_ops_part_up 0, the request metrics always)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(service.snapshot)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, service=service)
    return app
