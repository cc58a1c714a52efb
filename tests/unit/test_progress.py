"""abacus.progress: the drain compares the latest attempt's counters; re-applied and
uncertain increments are summed over every attempt (the files as abacus.sink.Progress
writes them)."""

from __future__ import annotations

import struct
from pathlib import Path

from abacus import progress


def _file(directory: Path, name: str, value: int, total: int | None = None) -> None:
    data = struct.pack("<q", value) + (struct.pack("<q", total) if total is not None else b"")
    (directory / name).write_bytes(data)


def test_a_failed_attempt_no_longer_counts(tmp_path: Path) -> None:
    # attempt 0 failed with 40 increments fanned and not written; attempt 1 caught up
    _file(tmp_path, "fanned-a0-s0-11-aaaa", 100)
    _file(tmp_path, "written-a0-s0-11-bbbb", 60, 60)
    _file(tmp_path, "fanned-a1-s0-11-cccc", 45)
    _file(tmp_path, "written-a1-s0-11-dddd", 45, 95)
    _file(tmp_path, "reapplied-a1-s0-11-eeee", 10)
    _file(tmp_path, "uncertain-a0-s0-11-ffff", 3)
    got = progress.read(tmp_path)
    assert (got.fanned, got.written, got.attempt) == (45, 45, 1)
    assert (got.reapplied, got.uncertain, got.pending) == (10, 3, 0)


def test_subtasks_of_the_latest_attempt_are_summed(tmp_path: Path) -> None:
    _file(tmp_path, "fanned-a2-s0-11-aaaa", 5)
    _file(tmp_path, "fanned-a2-s1-11-bbbb", 7)
    _file(tmp_path, "written-a2-s0-11-cccc", 12, 12)
    assert progress.read(tmp_path) == progress.Progress(12, 12, 2, 0, 0)


def test_a_new_attempt_not_caught_up_is_pending(tmp_path: Path) -> None:
    _file(tmp_path, "fanned-a0-s0-11-aaaa", 10)
    _file(tmp_path, "written-a0-s0-11-bbbb", 10, 10)
    _file(tmp_path, "fanned-a1-s0-11-cccc", 4)  # the sink of attempt 1 is not open yet
    got = progress.read(tmp_path)
    assert (got.attempt, got.pending) == (1, 4)


def test_files_without_an_attempt_are_attempt_zero(tmp_path: Path) -> None:
    _file(tmp_path, "fanned-123-abcd1234", 9)
    _file(tmp_path, "written-123-abcd5678", 9)
    assert progress.read(tmp_path) == progress.Progress(9, 9, 0, 0, 0)


def test_an_empty_directory_has_drained_nothing(tmp_path: Path) -> None:
    _file(tmp_path, "written-a0-s0-1-x", 0)  # created, not written to yet: 8 zero bytes
    (tmp_path / "fanned-a0-s0-1-y").write_bytes(b"")  # created, not sized yet
    assert progress.read(tmp_path) == progress.Progress(0, 0, 0, 0, 0)


def test_the_file_format_reads_back(tmp_path: Path) -> None:
    # the format as the JVM writes it (abacus.sink.Progress is checked against these)
    name = progress.file_name("written", 3, 2, "77-abcd")
    assert progress._NAME.match(name)["attempt"] == "3"  # type: ignore[index]
    (tmp_path / name).write_bytes(progress.encode(5, 40))
    (tmp_path / progress.file_name("fanned", 3, 2, "77-ef01")).write_bytes(progress.encode(5))
    assert progress.read(tmp_path) == progress.Progress(5, 5, 3, 0, 0)
    assert progress.written_totals(tmp_path) == {2: {3: (5, 40)}}
    assert len(progress.encode(1)) == 16
