"""The contract's commands end to end through the real `abacus` executable (no servers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from counting import from_line, recount
from counting.corpus import invalid_lines, tricky_lines

ABACUS = [sys.executable, "-c", "import cli; cli.main()"]


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ABACUS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_recount_prints_the_exchange_format_and_rejects_apart(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(tricky_lines()) + "\n\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    done = run("recount", "--events", str(events), "--rejects", str(rejects))
    assert done.returncode == 0, done.stderr
    printed = {from_line(line) for line in done.stdout.splitlines()}
    expected = recount(tricky_lines())
    assert printed == {*expected.account(), *expected.customer()}
    first = json.loads(done.stdout.splitlines()[0])
    assert list(first)[:2] == ["level", "company_id"]
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == sorted(r for _, r in invalid_lines())
    assert {"bad-02", "bad-16"} <= {r["event_id"] for r in rejected}
    assert "not_json=2" in done.stderr and "duplicates" in done.stderr


def test_recount_reads_stdin_and_json_format() -> None:
    line = (
        '{"event_id":"e","company_id":"C","customer_id":"U","statistic_id":"S",'
        '"timestamp":1544153562}'
    )
    done = run("recount", "--events", "-", "--format", "json", stdin=line + "\n" + line)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 3 + 3
    assert {r["count"] for r in records} == {1}


def test_generate_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = run("generate", "--n", "300", "--seed", "4", "--duplicates", "0.1")
    b = run("generate", "--n", "300", "--seed", "4", "--duplicates", "0.1")
    c = run("generate", "--n", "300", "--seed", "5")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout != c.stdout
    events = [json.loads(line) for line in a.stdout.splitlines()]
    assert len(events) == 300
    assert len({e["event_id"] for e in events}) < 300  # duplicates were injected


def test_a_wrong_argument_is_one_line_and_exit_2() -> None:
    for args in (
        ["generate", "--n", "many"],
        ["generate", "--timezones", "Mars/Base"],
        ["recount", "--events", "/nonexistent/file"],
        ["nope"],
    ):
        done = run(*args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("abacus"), done.stderr


def test_config_show_masks_secrets_from_toml_and_env(tmp_path: Path) -> None:
    config = tmp_path / "abacus.toml"
    config.write_text(
        '[kafka]\nsasl_username = "svc"\nsasl_password = "toml-secret"\n[cassandra]\nport = 9142\n'
    )
    done = run(
        "--config",
        str(config),
        "config",
        "show",
        "--format",
        "json",
        env={"ABACUS_REDIS__PASSWORD": "env-secret", "ABACUS_RABBITMQ__PORT": "5999"},
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["cassandra"]["port"] == 9142
    assert shown["rabbitmq"]["port"] == 5999
    assert shown["kafka"]["sasl_username"] == "svc"
    assert "toml-secret" not in done.stdout and "env-secret" not in done.stdout
    assert shown["kafka"]["sasl_password"] == shown["redis"]["password"] == "**********"


def test_config_errors_are_one_line() -> None:
    done = run("--config", "/no/such.toml", "config", "show")
    assert done.returncode == 2 and "config file not found" in done.stderr
    bad = run("config", "show", env={"ABACUS_KAFKA__PARTITIONS": "zero"})
    assert bad.returncode == 2 and "invalid settings" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
