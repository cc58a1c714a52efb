"""Fetch jars from Maven Central with the mvn client (poms live in services/maven/<name>/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from services.base import ServiceError

POMS = Path(__file__).parent / "maven"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def _mvn(args: list[str]) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: apt-get install -y maven")
    done = subprocess.run([mvn, "-B", "-q", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise ServiceError("mvn failed: " + " ".join(args) + "\n" + "\n".join(output[-30:]))


def copy_dependencies(pom: str, properties: dict[str, str], dest: Path) -> None:
    """Runtime dependencies of services/maven/<pom>/pom.xml into `dest` (emptied first)."""
    if dest.exists():
        shutil.rmtree(dest)  # a version change must not leave two versions on the classpath
    dest.mkdir(parents=True)
    _mvn(
        [
            "-f",
            str(POMS / pom / "pom.xml"),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={dest}",
            "-DincludeScope=runtime",
            *(f"-D{key}={value}" for key, value in properties.items()),
        ]
    )


def copy_artifact(coordinates: str, dest: Path) -> None:
    """One artifact (group:artifact:version) into `dest`, without its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    _mvn(
        [
            f"{DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact={coordinates}",
            f"-DoutputDirectory={dest}",
        ]
    )


def package(project: Path, build_dir: Path, jar: str, dest: Path) -> None:
    """`mvn package` of the project at `project`, building in `build_dir` (outside the source
    tree), and the built `jar` copied to `dest`. Its tests are compiled (so the jars they
    need are fetched here too) but run by `make test`, which generates their golden vectors
    first (`abacus.golden`)."""
    _mvn(["-f", str(project / "pom.xml"), f"-Dbuild.dir={build_dir}", "-DskipTests", "package"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build_dir / jar, dest)
