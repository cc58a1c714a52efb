"""`abacus bench ...`: each package owns its benchmark; this group only mounts them.

A benchmark prints its figures, the parameters used, and ratios against a baseline measured
in the same run. Tests never assert on timing.
"""

from __future__ import annotations

import importlib

import click

_BENCHES: list[tuple[str, str]] = [
    ("counting.bench", "recount"),
    ("legacy.bench", "bench_legacy"),
    ("bridge.bench", "bench_bridge"),
    ("bench.pipelines", "bench_abacus"),
    ("compare.bench", "bench_compare"),
    ("bench.faults", "bench_faults"),
    ("bench.serve", "bench_serve"),
]


@click.group()
def bench() -> None:
    """Benchmarks: figures and ratios measured on this machine, in one run."""


for _module, _attr in _BENCHES:
    try:
        _command = getattr(importlib.import_module(_module), _attr)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
        continue
    bench.add_command(_command)
