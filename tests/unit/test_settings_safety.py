"""Secrets never in an error, URL-encoded in URLs; names that reach CQL or paths checked
with a one-line error (issue 12, "Output and secrets")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection
from kombu.utils.url import url_to_parts
from pydantic import ValidationError

from settings import CassandraSettings, RabbitSettings, load_settings
from settings.model import Settings, SettingsError, describe
from settings.names import check_file_name, check_keyspace_prefix, check_replication

ABACUS = [sys.executable, "-c", "import cli; cli.main()"]
SECRET = "hunter2-Secret"


def abacus(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
    return subprocess.run(
        [*ABACUS, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, "PYTHONPATH": str(Path(__file__).parents[2]), **(env or {})},
        cwd=cwd,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        (f'[rabbitmq]\npassword = ["{SECRET}"]\n', "rabbitmq.password"),
        (f'[kafka]\nsasl_password = {{ value = "{SECRET}" }}\n', "kafka.sasl_password"),
        ("[cassandra]\npassword = 20240607\n", "cassandra.password"),
        (f'[redis]\npassword = ["{SECRET}"]\n', "redis.password"),
        # a model-level error: pydantic would print the whole section, secret included
        (f'[kafka]\nsasl_password = "{SECRET}"\nmin_insync_replicas = 3\n', "kafka"),
    ],
)
def test_a_wrongly_typed_secret_is_named_never_shown(tmp_path: Path, toml: str, field: str) -> None:
    config = tmp_path / "abacus.toml"
    config.write_text(toml, encoding="utf-8")
    line = one_line_error(abacus("--config", str(config), "config", "show"))
    assert line.startswith("abacus: invalid settings: " + field), line
    assert SECRET not in line and "20240607" not in line and "input_value" not in line


def test_a_wrongly_typed_secret_from_the_environment_is_named_never_shown() -> None:
    done = abacus("config", "show", env={"ABACUS_CASSANDRA": f'{{"password": ["{SECRET}"]}}'})
    line = one_line_error(done)
    assert "cassandra.password" in line and SECRET not in line


def test_describe_omits_inputs() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"rabbitmq": {"password": [SECRET], "port": "x" + SECRET}})
    assert SECRET in str(caught.value)  # what pydantic alone would print
    text = describe(caught.value)
    assert SECRET not in text and "rabbitmq.password" in text and "rabbitmq.port" in text
    assert "\n" not in text


def test_load_settings_raises_one_line(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(
        f'[rabbitmq]\npassword = 1\nport = "{SECRET}"\n[x]\ny = 1\n'
        '[cassandra]\nkeyspace_prefix = "-"\n',
        encoding="utf-8",
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert SECRET not in str(caught.value) and "(and 1 more)" in str(caught.value)


def test_secrets_stay_masked_in_config_show(tmp_path: Path) -> None:
    config = tmp_path / "abacus.toml"
    config.write_text(
        f'[rabbitmq]\npassword = "{SECRET}"\n[kafka]\nsasl_password = "{SECRET}"'
        f'\n[cassandra]\npassword = "{SECRET}"\n',
        encoding="utf-8",
    )
    for fmt in ("json", "table"):
        done = abacus("--config", str(config), "config", "show", "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout and "**********" in done.stdout


@pytest.mark.parametrize(
    ("user", "password", "vhost"),
    [
        ("guest", "a/b#c?d", "/"),
        ("u@s:er", "p@ss:w/rd#frag?q=1&x%41", "team/vh"),
        ("guest", "  spaces and ünïcode  ", "vh"),
    ],
)
def test_rabbit_url_encodes_user_password_and_vhost(user: str, password: str, vhost: str) -> None:
    r = RabbitSettings(
        host="rabbit.example", port=5999, username=user, password=password, vhost=vhost
    )
    url = r.url()
    parts = url_to_parts(url)  # how kombu (legacy, shadow, Celery) reads it
    assert (parts.hostname, parts.port) == ("rabbit.example", 5999)
    assert (parts.username, parts.password) == (user, password)
    conn = Connection(url)  # no I/O until used
    assert (conn.hostname, conn.userid, conn.password) == ("rabbit.example", user, password)
    assert conn.virtual_host == vhost
    assert password not in url.split("@", 1)[1]  # nothing of it after the userinfo


# -- names into CQL and paths ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "e2e_", "itcmp_ab12cd34_", "a" * 34])
def test_good_keyspace_prefixes(prefix: str) -> None:
    assert (
        CassandraSettings(keyspace_prefix=prefix).keyspace("abacus_serving")
        == f"{prefix}abacus_serving"
    )


@pytest.mark.parametrize(
    "prefix",
    ["a-b", "1abc", "_x", "x; DROP KEYSPACE y; --", "a b", "ks.", "é", "a" * 35, "x\x1b[31m"],
)
def test_bad_keyspace_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"not allowed|characters long") as caught:
        check_keyspace_prefix(prefix)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    with pytest.raises(ValidationError):
        CassandraSettings(keyspace_prefix=prefix)


def test_keyspace_checks_copies_made_without_validation() -> None:
    copy = CassandraSettings().model_copy(update={"keyspace_prefix": "x'; DROP"})
    with pytest.raises(ValueError, match="not a CQL identifier"):
        copy.keyspace("abacus_ops")
    long = CassandraSettings().model_copy(update={"keyspace_prefix": "k" * 40})
    with pytest.raises(ValueError, match="more than Cassandra's 48"):
        long.keyspace("abacus_ops")


@pytest.mark.parametrize(
    "replication",
    [
        {"class": "SimpleStrategy", "replication_factor": 3},
        {"class": "NetworkTopologyStrategy", "dc1": 3, "us-east-1": "2"},
        {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "DC_2.a": 1},
    ],
)
def test_good_replication_maps(replication: dict[str, object]) -> None:
    checked = check_replication(replication)
    assert all(isinstance(v, int) for k, v in checked.items() if k != "class")
    assert CassandraSettings(replication=replication).replication == checked


@pytest.mark.parametrize(
    ("replication", "says"),
    [
        ({"class": "Simple'Strategy", "replication_factor": 1}, "class"),
        ({"class": "SimpleStrategy', 'x': '1", "replication_factor": 1}, "class"),
        ({"replication_factor": 1}, "class"),
        ({"class": "SimpleStrategy", "replication_factor": "1'}; DROP KEYSPACE x; --"}, "factor"),
        ({"class": "SimpleStrategy", "replication_factor": 0}, "factor"),
        ({"class": "SimpleStrategy", "replication_factor": -1}, "factor"),
        ({"class": "SimpleStrategy", "replication_factor": True}, "factor"),
        ({"class": "SimpleStrategy", "replication_factor": 1.5}, "factor"),
        ({"class": "NetworkTopologyStrategy", "dc1'": 1}, "data-centre"),
        ({"class": "NetworkTopologyStrategy", "": 1}, "data-centre"),
        ({"class": "NetworkTopologyStrategy"}, "give replication_factor"),
    ],
)
def test_bad_replication_maps(replication: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_replication(replication)
    with pytest.raises(ValidationError):
        CassandraSettings(replication=replication)


def test_bad_names_in_the_config_file_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "abacus.toml"
    config.write_text(
        '[cassandra]\nkeyspace_prefix = "x; DROP"\n'
        'replication = {class = "SimpleStrategy", replication_factor = "1\'"}\n',
        encoding="utf-8",
    )
    line = one_line_error(abacus("--config", str(config), "config", "show"))
    assert "cassandra.keyspace_prefix" in line and "cassandra.replication" in line


@pytest.mark.parametrize("name", ["statistic", "bench-ab12-", "t1.x_y"])
def test_good_file_names(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "..", ".hidden", "a/b", "-rf", "", "a\x00b", "x" * 101, "/etc", "a b"]
)
def test_bad_file_names(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        check_file_name(name)


@pytest.mark.parametrize(
    "args",
    [
        ("job", "run", "statistic", "--prefix", "../x"),
        ("job", "run", "statistic", "--prefix", "a/b"),
        ("job", "logs", "../../etc"),
        ("job", "stop", "../x"),
        ("job", "drained", "statistic", "../x"),
        ("audits", "show", "../x"),
        ("compare", "--resume", "../../x"),
    ],
)
def test_names_that_become_paths_are_refused_before_use(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    line = one_line_error(abacus(*args, cwd=tmp_path))
    assert "is not allowed" in line, line
    assert not (tmp_path / ".abacus").exists()  # nothing was created or removed


def test_schema_statements_check_the_replication_map_of_a_copy() -> None:
    from storage import statements

    good = CassandraSettings(replication={"class": "NetworkTopologyStrategy", "dc-1": "3"})
    assert any(
        "{'class': 'NetworkTopologyStrategy', 'dc-1': '3'}" in cql for cql in statements(good)
    )
    bad = good.model_copy(
        update={
            "replication": {
                "class": "SimpleStrategy",
                "replication_factor": "1'} AND durable_writes = false; --",
            }
        }
    )
    with pytest.raises(ValueError, match="positive integer"):
        statements(bad)
