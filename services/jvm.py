"""What the two Java servers share: the java binary, the classpath, a version from a jar name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def java() -> str:
    """`$JAVA_HOME/bin/java` when set, else java on PATH (Kafka 4 and Cassandra 5 need 17+)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise FileNotFoundError("java not found: install a JDK 17 (apt-get install openjdk-17-jdk)")
    return found


def classpath(lib: Path) -> str:
    return str(lib / "*")


def jar(lib: Path, prefix: str) -> Path | None:
    """The one jar in `lib` named `<prefix><version>.jar` (None when absent)."""
    found = sorted(lib.glob(f"{prefix}*.jar"))
    return found[0] if found else None


def jar_version(lib: Path, prefix: str) -> str:
    found = jar(lib, prefix)
    return found.name.removeprefix(prefix).removesuffix(".jar") if found else "unknown"
