"""`python -m bridge run|status ...`: the `abacus bridge` group on its own (same options)."""

from __future__ import annotations

from pathlib import Path

import click

from bridge.cli import bridge
from settings import load_settings


def main() -> None:
    import os

    config = os.environ.get("ABACUS_CONFIG")
    try:
        settings = load_settings(Path(config) if config else None)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from exc
    bridge(obj=settings, prog_name="python -m bridge")


if __name__ == "__main__":
    main()
