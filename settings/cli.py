"""`abacus config show`."""

from __future__ import annotations

import json

import click

from settings.model import Settings
from settings.options import output_format
from settings.output import visible


@click.group()
def config() -> None:
    """Inspect the settings in effect."""


@config.command("show")
@output_format("json", "table", default="table", show_default=False)
@click.pass_obj
def show(settings: Settings, fmt: str) -> None:
    """Print the settings in effect, secrets masked; the table says where the data
    directory (services.data_dir, absolute) comes from."""
    data = settings.masked()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            line = f"  {key} = {json.dumps(value)}"
            if (section, key) == ("services", "data_dir") and settings.data_dir_origin:
                line += f"  # {visible(settings.data_dir_origin)}"
            click.echo(line)
