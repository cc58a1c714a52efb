"""The counting contract is pure: importing it pulls in no I/O library (STYLE.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = [
    "pyflink",
    "celery",
    "kombu",
    "confluent_kafka",
    "cassandra",
    "redis",
    "amqp",
    "socket",
    "subprocess",
    "click",
    "rich",
    "pydantic",
    "requests",
    "urllib3",
]


def test_counting_imports_no_io_library() -> None:
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {FORBIDDEN!r}:
                    raise ImportError("forbidden import in the counting contract: " + name)
        sys.meta_path.insert(0, Block())
        import counting, counting.corpus, counting.generate, counting.recount, counting.stats
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        assert not loaded, loaded
        print("pure")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure"


def test_forbidden_import_would_be_caught() -> None:
    """The guard itself works: a module that imports socket is refused."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {FORBIDDEN!r}:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import http.client
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "blocked" in done.stderr
