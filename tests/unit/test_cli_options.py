"""The options the packages' commands share (settings.options, counting.cli's generator
options, legacy's chaos options): parsed once, the same way wherever they are used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cli import root
from counting.cli import generate
from counting.generate import GeneratorConfig
from counting.generate import generate as generate_events
from settings.options import Failure, dir_path, file_path, output_format


def _command(*decorators: Any) -> click.Command:
    """A command that echoes its parameters as JSON, with the shared options given."""

    def echo(**params: Any) -> None:
        click.echo(json.dumps({k: str(v) for k, v in params.items()}))

    for decorate in reversed(decorators):
        echo = decorate(echo)
    return click.command()(echo)


def test_output_format_defaults_to_its_first_choice_and_refuses_others() -> None:
    command = _command(output_format("table", "json"))
    assert json.loads(CliRunner().invoke(command, []).output) == {"fmt": "table"}
    assert json.loads(CliRunner().invoke(command, ["--format", "json"]).output) == {"fmt": "json"}
    refused = CliRunner().invoke(command, ["--format", "csv"])
    assert refused.exit_code == 2 and "'csv' is not one of 'table', 'json'" in refused.output


def test_path_options_refuse_the_other_kind(tmp_path: Path) -> None:
    a_file = tmp_path / "f.json"
    a_file.write_text("{}")
    command = _command(file_path("--out"), dir_path("--work-dir", default=tmp_path))
    given = CliRunner().invoke(command, ["--out", str(a_file)])
    assert json.loads(given.output) == {"out": str(a_file), "work_dir": str(tmp_path)}
    assert CliRunner().invoke(command, ["--out", str(tmp_path)]).exit_code == 2
    assert CliRunner().invoke(command, ["--work-dir", str(a_file)]).exit_code == 2


def test_a_failure_exits_2() -> None:
    @click.command()
    def fails() -> None:
        raise Failure("the server is unreachable")

    done = CliRunner().invoke(fails, [])
    assert done.exit_code == 2 and "the server is unreachable" in done.output


def test_the_generator_options_reach_generate_as_the_config_they_name() -> None:
    args = ["--n", "60", "--seed", "3", "--companies", "2", "--customers", "5"]
    args += ["--statistics", "2", "--facets", "1", "--duplicates", "0.3", "--late", "0.2"]
    done = CliRunner().invoke(generate, args)
    assert done.exit_code == 0, done.output
    config = GeneratorConfig(
        n=60,
        seed=3,
        companies=2,
        customers=5,
        statistics=2,
        facets=1,
        duplicate_share=0.3,
        late_share=0.2,
    )
    assert done.output.splitlines() == [
        json.dumps(e, ensure_ascii=False) for e in generate_events(config)
    ]


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["legacy", "worker"], "--chaos-crash"),
        (["legacy", "flush"], "--chaos-drop-flush"),
        (["shadow", "run"], "--chaos-crash"),
    ],
)
def test_a_chaos_share_outside_0_1_is_refused_everywhere(command: list[str], flag: str) -> None:
    done = CliRunner().invoke(root, [*command, flag, "1.5"])
    assert done.exit_code == 2 and "0.0<=x<=1.0" in done.output
