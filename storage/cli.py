"""`abacus schema apply|show`."""

from __future__ import annotations

import click

from settings import Settings
from storage.schema import apply_schema, statements


@click.group()
def schema() -> None:
    """The Cassandra keyspaces and tables of every count store and of ops."""


@schema.command("show")
@click.pass_obj
def show(settings: Settings) -> None:
    """Print the CQL that `schema apply` runs (idempotent: IF NOT EXISTS)."""
    for cql in statements(settings.cassandra):
        click.echo(cql + ";")


@schema.command("apply")
@click.pass_obj
def apply(settings: Settings) -> None:
    """Create the keyspaces and tables that are missing; existing ones are left as they are."""
    from cassandra.cluster import NoHostAvailable

    try:
        count = apply_schema(settings.cassandra)
    except NoHostAvailable as exc:
        raise click.ClickException(
            f"cannot reach Cassandra at {','.join(settings.cassandra.hosts)}:"
            f"{settings.cassandra.port}: {type(exc).__name__}"
        ) from None
    click.echo(f"schema applied: {count} statements (existing tables left as they are)")
