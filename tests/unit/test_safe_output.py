"""Data can act neither as rich markup, nor as a terminal control, nor as a spreadsheet
formula, in any renderer (issue 12, "Output and secrets")."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from compare.audit import AuditResult
from compare.audits import AuditRecord
from compare.diff import EXACT, Mismatch, Tally
from compare.report import CSV_FIELDS, render
from compare.summary import Summary
from counting.model import AccountKey, CustomerKey
from settings.output import csv_cell, csv_row, term, visible

CLOSE = "[/bold]"  # an unmatched closing tag: rich raises MarkupError on it
LINK = "[link=https://evil.example]x[/link]"  # a terminal hyperlink
ANSI = "\x1b[31mred\x1b]8;;https://evil.example\x07"  # colour, OSC 8 hyperlink
BIDI = "ab\u202ecba\u2066"  # right-to-left override, isolate
EMOJI = ":thumbs_up:"
SURROGATE = "x\udc80y"  # unencodable: printing it raises UnicodeEncodeError
POISON = (CLOSE, LINK, ANSI, BIDI, EMOJI, SURROGATE)
WIDE = {"COLUMNS": "400"}


def assert_safe(output: str, *shown: str) -> None:
    """Nothing raw reached the output, and each poison is shown as its visible text."""
    assert "\x1b" not in output and "\x07" not in output
    assert "\u202e" not in output and "\u2066" not in output
    assert "\U0001f44d" not in output  # :thumbs_up: stays text
    for value in shown:
        assert visible(value) in output, (visible(value), output)


# -- the helpers -----------------------------------------------------------------------


def test_visible_escapes_controls_bidi_and_surrogates() -> None:
    assert visible(ANSI) == "\\x1b[31mred\\x1b]8;;https://evil.example\\x07"
    assert visible(BIDI) == "ab\\u202ecba\\u2066"
    assert visible("a\nb\tc\rd\x00\x9b\u2028") == "a\\nb\\tc\\rd\\x00\\x9b\\u2028"
    assert visible(SURROGATE) == "x\\udc80y"
    assert visible("plain ünïcode 数字 [x]") == "plain ünïcode 数字 [x]"
    assert visible(42) == "42"
    visible(SURROGATE).encode("utf-8")  # writable anywhere


def test_term_is_never_markup_nor_emoji() -> None:
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    out = io.StringIO()
    console = Console(file=out, width=200)
    for value in POISON:
        console.print(term(value))
        console.print(term("styled: ", style="bold") + term(value))
    assert_safe(out.getvalue(), *POISON)
    assert out.getvalue().count(visible(CLOSE)) == 2
    out = io.StringIO()  # a progress bar's description, as `services up` shows it
    with Progress(
        TextColumn("{task.description}", markup=False), console=Console(file=out, width=200)
    ) as bar:
        for value in POISON:
            bar.add_task(visible(value), total=1)
    assert_safe(out.getvalue(), *POISON)


@pytest.mark.parametrize(
    "value",
    ["=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://x")'],
)
def test_formula_cells_are_quoted(value: str) -> None:
    assert csv_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["-3", "+2.5", "-1e3", ".5", "abc", "a=b", "", "x-1"])
def test_plain_cells_and_numbers_stay(value: str) -> None:
    assert csv_cell(value) == value


def test_numbers_and_none_stay() -> None:
    assert csv_row({"a": -3, "b": None, "c": 2.5, "d": "=x"}) == {
        "a": -3,
        "b": None,
        "c": 2.5,
        "d": "'=x",
    }


# -- an audit with poisoned keys ---------------------------------------------------------


def poisoned_audit(tmp_path: Path) -> AuditResult:
    records = []
    for i, bad in enumerate(POISON):
        key = AccountKey(bad, f"s{i}", "hour", f"2025-10-01T0{i}", "facet", bad)
        records.append(
            Mismatch("differs", key, (1, 1), (2, 1), (1, 1), None, "left", None, True).to_record()
        )
    ckey = CustomerKey("=cmd|' /C calc'!A0", LINK, "@stat", "day", "2025-10-01")
    records.append(
        Mismatch("only_left", ckey, (3, 0), None, (3, 0), None, "left", None, True).to_record()
    )
    detail = tmp_path / "detail.jsonl"
    detail.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = Summary(has_truth=True)
    for r in records:
        summary.add(r)
    tally = Tally(compared=len(records), left_total=10, right_total=11, truth_total=10)
    record = AuditRecord(
        "2025-10-01-abc",
        "2025-10-01",
        "legacy",
        "shadow",
        f"t{LINK}.jsonl",
        {"level": "both", "companies": [], "statistics": [], "tolerance": EXACT.to_dict()},
        summary.to_dict(tally),
        "done",
        "dirty",
        datetime(2025, 10, 2, tzinfo=UTC),
        datetime(2025, 10, 2, tzinfo=UTC),
    )
    return AuditResult(record, detail)


def test_report_table_renders_poisoned_keys(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    out = io.StringIO()
    render(poisoned_audit(tmp_path), "table", out, limit=50)
    assert_safe(out.getvalue(), *POISON, LINK, "=cmd|' /C calc'!A0")


def test_report_csv_neutralises_formulas(tmp_path: Path) -> None:
    out = io.StringIO()
    render(poisoned_audit(tmp_path), "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(CSV_FIELDS)
    for row in rows:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), (name, cell)
            assert not (cell.startswith("-") and not cell.lstrip("-").isdigit()), (name, cell)
    last = rows[-1]
    assert last["company_id"] == "'=cmd|' /C calc'!A0" and last["statistic_id"] == "'@stat"
    assert last["delta_count"] == "-3"  # numbers stay numbers


def test_shadow_result_renders_poisoned_data(tmp_path: Path, monkeypatch: Any) -> None:
    from shadow.run import DateAudit, RunResult
    from shadow.view import print_result

    monkeypatch.setenv("COLUMNS", "400")
    result = RunResult(
        run_id="r1",
        run_dir=tmp_path / CLOSE,
        events_path=tmp_path / "e",
        published=7,
        audits=[DateAudit("2025-10-01", poisoned_audit(tmp_path), tmp_path / f"{LINK}.html")],
        error=f"{CLOSE} {ANSI} {BIDI}",
    )
    out = io.StringIO()
    print_result(result, out)
    assert_safe(out.getvalue(), CLOSE, ANSI, BIDI, LINK)
    assert "run failed" in out.getvalue() and "ERROR" in out.getvalue()


def test_shadow_log_view_renders_poisoned_phase() -> None:
    from rich.console import Console

    from shadow.view import LogView

    out = io.StringIO()
    LogView(Console(file=out, width=300)).phase(f"starting job {CLOSE}{ANSI}")
    assert_safe(out.getvalue(), CLOSE, ANSI)


def test_bridge_status_renders_poisoned_status(monkeypatch: Any) -> None:
    from bridge import cli as bridge_cli

    monkeypatch.setenv("COLUMNS", "400")
    doc = {
        "mode": CLOSE,
        "running": False,
        "queue": LINK,
        "topic": ANSI,
        "dlq_topic": BIDI,
        "in_flight": 0,
        "last_error": f"{CLOSE}{EMOJI}",
        "totals": dict.fromkeys(bridge_cli.COUNTERS, 0),
        "per_minute": [{"minute": LINK, **dict.fromkeys(bridge_cli.COUNTERS, 1)}],
        "dead_lettered_by_reason": {ANSI: 1},
    }
    runner = CliRunner()
    with runner.isolation(env=WIDE) as (stdout, _, _):
        bridge_cli._render([doc], 5)
    assert_safe(stdout.getvalue().decode(), CLOSE, LINK, ANSI, BIDI, EMOJI)


class _Anything(SimpleNamespace):
    """A status object: the given attributes, 0 for any other."""

    def __getattr__(self, name: str) -> Any:
        return 0


def test_job_status_renders_poisoned_names(monkeypatch: Any) -> None:
    from abacus import manager
    from cli import root

    state = _Anything(
        name=CLOSE,
        status=LINK,
        target=ANSI,
        pid=1,
        job_id=BIDI,
        started_at=0.0,
        savepoint=EMOJI,
        error=None,
        restarts=0,
        restart_times=[],
    )
    monkeypatch.setattr(manager, "statuses", lambda settings: [state])
    done = CliRunner().invoke(root, ["job", "status"], env=WIDE)
    assert done.exit_code == 0, done.output
    assert_safe(done.output, CLOSE, LINK, ANSI, BIDI, EMOJI)


def test_services_status_renders_poisoned_detail(monkeypatch: Any) -> None:
    from cli import root
    from services import manager

    svc = SimpleNamespace(
        name="kafka",
        state="dead",
        address=LINK,
        pid=1,
        pids=[1],
        version=CLOSE,
        rss_bytes=1 << 20,
        detail=f"{ANSI}{BIDI}",
    )
    report = SimpleNamespace(
        services=[svc], total_rss_bytes=1 << 20, budget_bytes=1 << 30, all_running=False
    )
    monkeypatch.setattr(manager, "status", lambda settings, names: report)
    done = CliRunner().invoke(root, ["services", "status"], env=WIDE)
    assert done.exit_code == 3, done.output
    assert_safe(done.output, LINK, CLOSE, ANSI, BIDI)


def test_legacy_status_and_dead_letters_render_poisoned_data(monkeypatch: Any) -> None:
    from contextlib import nullcontext

    import legacy.deadletter
    import legacy.status
    from cli import root
    from legacy import cli as legacy_cli

    status = legacy.status.Status(
        queue=CLOSE,
        ready=1,
        consumers=0,
        unacked=None,
        dead_letter_queue=LINK,
        dead_letters=2,
        pending_fields=0,
        batches=0,
        stats={f"dead:{ANSI}": 1},
    )
    monkeypatch.setattr(legacy_cli, "_servers", lambda what: nullcontext())
    monkeypatch.setattr(legacy.status, "read_status", lambda *a, **k: status)
    done = CliRunner().invoke(root, ["legacy", "status", "--sample-s", "0"], env=WIDE)
    assert done.exit_code == 0, done.output
    assert_safe(done.output, CLOSE, LINK, ANSI)

    letter = {"reason": "invalid", "event_id": f"{ANSI}{SURROGATE}", "detail": BIDI}
    monkeypatch.setattr(legacy.deadletter, "read", lambda *a: [letter])
    for fmt in ("table", "jsonl"):
        done = CliRunner().invoke(root, ["legacy", "dead-letters", "--format", fmt], env=WIDE)
        assert done.exit_code == 0, done.output
        assert "\x1b" not in done.output and "\u202e" not in done.output
    assert json.loads(done.output)["event_id"] == f"{ANSI}{SURROGATE}"


def test_recount_table_renders_poisoned_ids() -> None:
    from cli import root

    line = json.dumps(
        {
            "event_id": "e",
            "company_id": CLOSE,
            "customer_id": LINK,
            "statistic_id": EMOJI,
            "timestamp": 1544153562,
        }
    )
    done = CliRunner().invoke(
        root, ["recount", "--events", "-", "--format", "table"], input=line + "\n", env=WIDE
    )
    assert done.exit_code == 0, done.output
    assert_safe(done.stdout, CLOSE, LINK, EMOJI)


def test_error_lines_carry_no_raw_controls(tmp_path: Path) -> None:
    """The one-line errors of `abacus` (usage errors, invalid settings) escape what the
    user or a file put in them."""
    import os
    import subprocess
    import sys

    def abacus(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
        return subprocess.run(
            [sys.executable, "-c", "import cli; cli.main()", *args],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd=Path(__file__).parents[2],
        )

    bad_date = abacus("compare", "--date", f"2025{ANSI}{BIDI}")
    config = tmp_path / "abacus.toml"
    config.write_text('[cassandra]\n"x\\u001b[31m\\u202e" = 1\n', encoding="utf-8")
    bad_key = abacus("--config", str(config), "config", "show")
    for done in (bad_date, bad_key):
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert_safe(done.stderr)
    assert "\\x1b[31m\\u202e" in bad_key.stderr and "cassandra.x" in bad_key.stderr


def test_report_html_escapes_markup_controls_and_bidi(tmp_path: Path) -> None:
    out = io.StringIO()
    render(poisoned_audit(tmp_path), "html", out)
    page = out.getvalue()
    assert "\x1b" not in page and "\u202e" not in page and "\u2066" not in page
    assert "\\x1b[31mred" in page and "ab\\u202ecba" in page
    page.encode("utf-8")  # the lone surrogate is escaped, not written
    assert "<script" not in page and "[link=https://evil.example]x[/link]" in page
