"""What the packages' commands share: click options written once, and the error that exits 2.

Every CLI module above `settings` (legacy, bridge, abacus, compare, shadow, bench, services,
storage) declares a shared option through these, so `--format` or a path option means the
same thing, is parsed the same way and reads the same in `--help` everywhere. counting's own
commands (the bottom layer) cannot import this: the generator's options they share with
`abacus produce` are `counting.cli.generator_options`.

click is imported here and in the CLI modules only: settings stay light for workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# a share of something (tasks, flushes): 0 none, 1 all
SHARE = click.FloatRange(0.0, 1.0)


class Failure(click.ClickException):
    """An error: one line on stderr, exit code 2 (a command's 1 means "not clean")."""

    exit_code = 2


def output_format(
    *choices: str, default: str | None = None, show_default: bool = True
) -> Callable[[F], F]:
    """`--format` (the parameter `fmt`): how the command prints; default the first choice."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0] if default is None else default,
        show_default=show_default,
    )


def file_path(
    *decls: str, help: str | None = None, default: Path | None = None, exists: bool = False
) -> Callable[[F], F]:
    """A file option (a `Path`; a directory is refused), optional unless `default`."""
    return click.option(
        *decls,
        type=click.Path(path_type=Path, dir_okay=False, exists=exists),
        default=default,
        show_default=default is not None,
        help=help,
    )


def dir_path(*decls: str, help: str | None = None, default: Path | None = None) -> Callable[[F], F]:
    """A directory option (a `Path`; a file is refused), optional unless `default`."""
    return click.option(
        *decls,
        type=click.Path(path_type=Path, file_okay=False),
        default=default,
        show_default=default is not None,
        help=help,
    )


def seed(default: int, help: str | None = None) -> Callable[[F], F]:
    """`--seed`: what a generated run depends on, so it can be repeated."""
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


def confirm(help: str = "Do it (without: show what it would do).") -> Callable[[F], F]:
    """`--yes`: a destructive command shows what it would do unless it is given."""
    return click.option("--yes", is_flag=True, help=help)


def log_format() -> Callable[[F], F]:
    """`--log-format` (the parameter `log_format`): how a long-running command logs; None
    when not given (then `services.log_format`, text by default; see settings.logs)."""
    return click.option(
        "--log-format",
        "log_format",
        type=click.Choice(["text", "json"]),
        default=None,
        help="Log lines as text or JSON, one event a line (default: services.log_format, text).",
    )
