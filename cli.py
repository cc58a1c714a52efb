"""The `abacus` command: the root group only assembles the groups each package exports."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from settings import load_settings
from settings.output import visible

# (module, attribute) of each package's commands; a package owns its CLI.
_COMMANDS: list[tuple[str, str]] = [
    ("settings.cli", "config"),
    ("counting.cli", "recount"),
    ("counting.cli", "generate"),
    ("services.cli", "services"),
    ("storage.cli", "schema"),
    ("legacy.cli", "produce"),
    ("legacy.cli", "legacy"),
    ("bridge.cli", "bridge"),
    ("abacus.cli", "job"),
    ("shadow.cli", "shadow"),
    ("cutover.cli", "cutover"),
    ("bench.cli", "bench"),
    ("compare.cli", "compare"),
    ("compare.cli", "dump"),
    ("compare.cli", "audits"),
    ("serve.cli", "serve"),
    ("serve.cli", "counts"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $ABACUS_CONFIG, else ./abacus.toml if present).",
)
@click.pass_context
def root(ctx: click.Context, config: Path | None) -> None:
    """Abacus: move event aggregation off Celery/RabbitMQ onto PyFlink/Kafka, audited."""
    try:
        ctx.obj = load_settings(config)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from exc
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        first = str(exc).splitlines()
        raise click.UsageError("invalid settings: " + " ".join(first[:3])) from exc


def _assemble() -> None:
    for module_name, attr in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # package not built yet
                continue
            raise
        command = getattr(module, attr, None)
        if command is not None:
            root.add_command(command)


_assemble()


def main() -> None:
    """Run `abacus`; a usage error is one line on stderr saying what to fix, exit 2."""
    try:
        code = root.main(standalone_mode=False, prog_name="abacus")
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "abacus"
        click.echo(visible(f"{where}: {exc.format_message()}"), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _error(visible(f"abacus: error: {exc.format_message()}", newlines=True))
        sys.exit(exc.exit_code)
    except click.Abort:
        _error("abacus: aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _error(said: str) -> None:
    """The line on stderr; an ERROR event (logger `abacus`) instead when the command logs
    JSON (`--log-format json` set up the root logger): its output stays one event a line."""
    from settings.logs import JsonFormatter

    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("abacus").error(said)
    else:
        click.echo(said, err=True)


if __name__ == "__main__":
    main()
