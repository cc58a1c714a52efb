"""`abacus serve` (the read API over HTTP) and `abacus counts get` (the same query, once)."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import click

from serve.queries import BadParameter, parse_query
from settings import Settings
from settings.options import SHARE, Failure, log_format, output_format


@click.command()
@click.option("--host", default=None, help="Bind address (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: serve.port.")
@click.option(
    "--experiment-share",
    type=SHARE,
    default=None,
    help="Share of queries also read from the candidate store (default: serve.experiment_share).",
)
@log_format()
@click.pass_obj
def serve(
    settings: Settings,
    host: str | None,
    port: int | None,
    experiment_share: float | None,
    log_format: str | None,
) -> None:
    """The read API: account and customer counts from the store the cutover's stage names."""
    import uvicorn

    from settings.logs import configure_for, uvicorn_log_config, with_log_format

    settings = with_log_format(settings, log_format)
    json_logs = settings.services.log_format == "json"
    configure_for(settings, logging.WARNING, text_format="%(message)s")

    from serve.app import create_app
    from serve.service import Service
    from services import targets

    host = host or settings.serve.host
    port = port or settings.serve.port
    service = Service(settings, experiment_share)
    try:  # connect and read the stage first: an unreachable store is one line, exit 2
        service.start()
    except Exception as exc:
        service.stop()
        raise Failure(f"cannot start: {type(exc).__name__}: {str(exc)[:300]}") from exc
    app = create_app(service)
    said = (
        f"abacus serve: http://{host}:{port} (stage followed every "
        f"{settings.serve.stage_refresh_s}s; auth {'on' if settings.serve.token else 'off'})"
    )
    if json_logs:  # its output is one event a line
        started = logging.getLogger("abacus.serve")
        started.setLevel(logging.INFO)
        started.info(said, extra={"host": host, "port": port, "auth": bool(settings.serve.token)})
    else:
        click.echo(said)
    # announced to the local Prometheus (services.targets) while it serves
    target = targets.register(settings, "serve", f"{port}", targets.address(host, port))
    # uvicorn re-raises the SIGTERM it stopped on once it has shut down: as SystemExit,
    # so the target file is removed (the default action would end the process first)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            # JSON: uvicorn's loggers propagate to our root handler; text: its own config, as
            # before, with the redaction filter on its handlers
            log_config=None if json_logs else uvicorn_log_config(settings),
        )
    finally:
        targets.unregister(target)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@click.group()
def counts() -> None:
    """Read counts as the read API answers them."""


@counts.command("get")
@click.option("--company", required=True)
@click.option("--statistic", required=True)
@click.option("--resolution", required=True, help="hour, day or month.")
@click.option("--from", "first", required=True, help="First bucket label (inclusive).")
@click.option("--to", "last", required=True, help="Last bucket label (inclusive).")
@click.option("--facet", default=None, help="A facet (with --value); default: the total.")
@click.option("--value", default=None, help="The facet's value.")
@click.option("--customer", default=None, help="Customer counts of this customer.")
@output_format("table", "json")
@click.pass_obj
def get(
    settings: Settings,
    company: str,
    statistic: str,
    resolution: str,
    first: str,
    last: str,
    facet: str | None,
    value: str | None,
    customer: str | None,
    fmt: str,
) -> None:
    """Account counts (or a customer's) per bucket, from the store the stage names."""
    from serve.service import Service

    try:
        query = parse_query(company, statistic, resolution, first, last, facet, value, customer)
    except BadParameter as exc:
        raise click.UsageError(str(exc)) from exc
    service = Service(settings)
    try:
        answer = service.answer_sync(query)
    except Exception as exc:
        raise Failure(f"cannot read the counts: {type(exc).__name__}: {exc}") from exc
    finally:
        service.stop()
    click.echo(_render(answer, fmt))


def _render(answer: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(answer, ensure_ascii=False, indent=2)
    q = answer["query"]
    what = (
        f"customer {q['customer']}"
        if q["level"] == "customer"
        else ("total" if q["facet"] == "" and q["value"] == "" else f"{q['facet']}={q['value']}")
    )
    lines = [
        f"{q['company']} / {q['statistic']} / {what}: {q['resolution']} {q['from']}..{q['to']}",
        f"stage {answer['stage']}: store {answer['store']} ({answer['keyspace']})",
    ]
    account = q["level"] == "account"
    width = max(len("bucket"), *(len(b["bucket"]) for b in answer["buckets"]))
    head = f"{'bucket':<{width}}  {'count':>12}" + (f"  {'uniques':>12}" if account else "")
    lines.append(head)
    for b in answer["buckets"]:
        row = f"{b['bucket']:<{width}}  {b['count']:>12}"
        lines.append(row + (f"  {b['uniques']:>12}" if account else ""))
    return "\n".join(lines)
