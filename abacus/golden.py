"""Golden vectors for the jobs' Java code (abacus/jvm), generated from Python at test time.

Java re-implements four rules for speed, each checked here against its Python home:

- `abacus.sink.Uniques` (fan-out and uniqueness) and `abacus.sink.CustomerRows`: the counts
  of `counting.Recount` over the tricky corpus, the valid poison events and a generated day;
  and `Uniques` absorbing seed records first (`counting.seeds`, the m1 hand-over): the
  counts of `Recount` with the same seeds absorbed (`seeded_vectors`);
- `abacus.sink.Sums` (the sink's pure part): the sums and the values a count store binds,
  the index entries and their shard (`storage.counters.shard_of`), the batching
  (`storage.counters.batches`);
- `abacus.sink.Progress`: the drain files `abacus.progress` reads (names and bytes), and
  the written totals of earlier attempts.

`python -m abacus.golden DIR` writes the inputs and what Python computes for them as JSON
into DIR (`make test` writes abacus/jvm/target/golden, git-ignored: vectors are never
committed); the JUnit tests (abacus/jvm/src/test, `mvn test`) feed the same inputs to the
Java code and require the same results. The operators' and the sink's configuration come
from the functions the jobs use (`abacus.pipeline.operator_conf`, `layout_conf`), so the
tests also check what the jobs tell Java.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from abacus import progress
from abacus.operators import event_row, seed_rows
from abacus.pipeline import _EVENT_FIELDS, _FIRSTS, _ROWS, Kind, layout_conf, operator_conf
from counting import Dedup, Event, Recount, account_keys, bucket_date, parse_event
from counting.corpus import poison_lines, tricky_lines
from counting.generate import GeneratorConfig, generate
from counting.seeds import Seed, parse_seed, seed_records
from settings import CassandraSettings
from storage.counters import (
    INDEX_RESOLUTION,
    SinkLayout,
    batches,
    period_of,
    shard_of,
    sink_layout,
)

_LEVEL: dict[Kind, str] = {"statistic": "account", "customer": "customer"}
_BATCH_PARTITIONS = (1, 2, 5, 1000)  # the batches' cases: partitions per batch
_BATCH_ROWS = (1, 3, 30)  # and rows per batch (30: the sink's)


def corpus() -> list[bytes]:
    """The raw events: the tricky corpus, the poison lines and a generated day with heavy
    customers (a customer in many hours, days and facet pairs: uniques below counts)."""
    day = GeneratorConfig(n=3000, seed=13, companies=4, customers=40, duplicate_share=0.05)
    lines = [line.encode() for line in tricky_lines()]
    lines += [raw for _name, raw in poison_lines()]
    lines += [json.dumps(event).encode() for event in generate(day)]
    return lines


def _events(lines: Iterable[bytes]) -> Iterator[Event]:
    """The first deliveries of the valid events, as the jobs' keep-first by event_id."""
    dedup = Dedup()
    for raw in lines:
        parsed = parse_event(raw)
        if isinstance(parsed, Event) and dedup.first(parsed.event_id):
            yield parsed


def layout(kind: Kind) -> SinkLayout:
    return sink_layout(CassandraSettings(), "shadow", _LEVEL[kind])


def operator_vectors(kind: Kind, lines: list[bytes]) -> dict[str, Any]:
    """The Java operator's input rows (as the job's SQL selects them from Validate's rows)
    and the counts Recount gives: one expected row per counter key (the output columns,
    count and uniques summed)."""
    statistic = kind == "statistic"
    fields = _EVENT_FIELDS if statistic else _EVENT_FIELDS[:7]
    rows = []
    for event in _events(lines):
        named = dict(zip(fields, event_row(event, facets=statistic), strict=True))
        rows.append([named[name] for name in _FIRSTS[kind]])
    recount = Recount()
    for raw in lines:
        recount.add_raw(raw)
    return {**_expected(kind, recount), "rows": rows}


def _expected(kind: Kind, recount: Recount) -> dict[str, Any]:
    """The operator's conf and measures, and Recount's counts as expected rows (one per
    counter key: the output columns, count and uniques summed)."""
    statistic = kind == "statistic"
    store = layout(kind)
    expected = []
    counts: Iterable[Any] = recount.account() if statistic else recount.customer()
    for count in counts:
        key = count.key
        named = {
            **key._asdict(),
            "period": period_of(key.resolution, key.bucket),
            "count": count.count,
            "uniques": getattr(count, "uniques", None),
            "index_date": bucket_date(key.bucket) if key.resolution == INDEX_RESOLUTION else None,
        }
        expected.append([named[name] for name in _ROWS[kind]])
    return {
        "conf": operator_conf(kind, store),
        "measures": list(store.measures),
        "expected": expected,
    }


def seeds(lines: list[bytes]) -> list[Seed]:
    """Seeds over the corpus's customers, through the record format (`seed_records`, then
    `parse_seed`): every third (company, customer) of the first deliveries gets the hour
    keys of its first event, the day keys of its second, and a month key where it has no
    event; a third of those seeds cut in records of a few keys each."""
    firsts: dict[tuple[str, str], list[Event]] = {}
    for event in _events(lines):
        firsts.setdefault((event.company_id, event.customer_id), []).append(event)
    out = []
    for i, ((company, customer), events) in enumerate(sorted(firsts.items())):
        if i % 3:
            continue
        keys = [k for k in account_keys(events[0]) if k.resolution == "hour"]
        if len(events) > 1:
            keys += [k for k in account_keys(events[1]) if k.resolution == "day"]
        keys.append(keys[0]._replace(resolution="month", bucket="1999-01"))
        max_bytes = 1024 if i % 9 == 0 else 1 << 20
        out += [parse_seed(r) for r in seed_records(company, customer, keys, max_bytes)]
    return out


def seeded_vectors(lines: list[bytes], plain: dict[str, Any]) -> dict[str, Any]:
    """The statistic operator's vectors with seeds: its seed rows (`seed_rows`, columns
    `seed_input`), absorbed before its rows (those of `plain`), and Recount's counts with the
    same seeds absorbed; which differ from `plain`'s (else the seeds test nothing)."""
    given = seeds(lines)
    recount = Recount()
    for seed in given:
        recount.absorb(seed)
    for raw in lines:
        recount.add_raw(raw)
    vectors = {
        **_expected("statistic", recount),
        "seeds": [list(row) for seed in given for row in seed_rows(seed)],
        "rows": plain["rows"],
    }
    if vectors["expected"] == plain["expected"]:
        raise AssertionError("the seeds change no count: the seeded vectors test nothing")
    return vectors


def sink_vectors(kind: Kind, operator: dict[str, Any], batch_partitions: int) -> dict[str, Any]:
    """The sink's input (the operator's expected rows, each cut in two increments, so that
    the sums are exercised), its count updates' values (measures, then key fields) and its
    index entries (date, shard, fields)."""
    store = layout(kind)
    keys, measures = len(store.keys), len(store.measures)
    rows, counts, index = [], [], {}
    for row in operator["expected"]:
        key, values, date = row[:keys], row[keys : keys + measures], row[-1]
        first = [min(v, 1) for v in values]
        rows.append([*key, *first, date])
        rows.append([*key, *(v - f for v, f in zip(values, first, strict=True)), None])
        counts.append([*values, *key])
        if date is not None:
            fields = [key[i] for i in store.index_fields]
            shard = shard_of(*(fields[i] for i in store.shard_fields))
            index[(date, *fields)] = [date, shard, *fields]
    return {
        "conf": {**layout_conf(store), "batch_partitions": str(batch_partitions)},
        "rows": rows,
        "counts": counts,
        "index": list(index.values()),
    }


def shard_vectors(texts: Iterable[str]) -> list[dict[str, Any]]:
    """`shard_of` of one and of two fields, over every text given and a few hard ones."""
    hard = ["", "\x00", "a\x1fb", "é", "\U0001f4a9" * 3, "\ud7ff", "x" * 300]
    distinct = list(dict.fromkeys([*hard, *texts]))
    cases = [[text] for text in distinct]
    cases += [[a, b] for a, b in zip(distinct, reversed(distinct), strict=True)]
    return [{"fields": fields, "shard": shard_of(*fields)} for fields in cases]


def batch_vectors(sinks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """`batches` of the sinks' count updates and index entries (their partitions: the
    store's partition keys after the measures, and (date, shard)), in every combination of
    rows and partitions per batch: each batch as the positions of its rows among `rows`
    (the name of the sink's vectors and of their rows)."""
    cases = []
    for kind, sink in sinks.items():
        measures = int(sink["conf"]["measures"])
        partition_keys = int(sink["conf"]["partition_keys"])
        for name, start, end in (("counts", measures, measures + partition_keys), ("index", 0, 2)):
            rows = [tuple(row) for row in sink[name]]
            position = {row: i for i, row in enumerate(rows)}
            for batch_rows in _BATCH_ROWS:
                for batch_partitions in _BATCH_PARTITIONS:
                    got = batches(rows, slice(start, end), batch_partitions, batch_rows)
                    cases.append(
                        {
                            "rows": [kind, name],
                            "partition": [start, end],
                            "batch_rows": batch_rows,
                            "batch_partitions": batch_partitions,
                            "batches": [[position[row] for row in batch] for batch in got],
                        }
                    )
    return cases


# Drain counters as operators bump them: (kind, attempt, subtask, calls of Progress), a call
# being [n] (add), [n, total] (add to the counter, set the written total) or ["set", n].
_COUNTERS: list[tuple[str, int, int, list[list[Any]]]] = [
    ("fanned", 0, 0, [[3], [6], [0], [9]]),
    ("written", 2, 1, [[0, 40], [12, 52], [30, 82]]),
    ("reapplied", 1, 3, [["set", 17]]),
    ("uncertain", 0, 2, [[5], [1 << 40]]),
    ("fanned", 12, 10, []),
]
# Files an earlier attempt left: (kind, attempt, subtask, counter, total)
_LEFT: list[tuple[str, int, int, int, int]] = [
    ("written", 0, 0, 10, 10),
    ("written", 1, 0, 7, 17),
    ("written", 3, 0, 2, 25),
    ("written", 1, 1, 4, 9),
    ("fanned", 2, 0, 99, 0),
]


def progress_vectors(directory: Path) -> dict[str, Any]:
    """Each counter's expected file (`abacus.progress`: its name's kind, attempt and subtask,
    its bytes), and the written total that `Progress.previousTotal` must find in a directory
    of files that earlier attempts left (written here, as `abacus.progress` defines them)."""
    counters = []
    for kind, attempt, subtask, calls in _COUNTERS:
        value = total = 0
        for call in calls:
            if call[0] == "set":
                value = call[1]
            else:
                value += call[0]
                total = call[1] if len(call) > 1 else total
        counters.append(
            {
                "kind": kind,
                "attempt": attempt,
                "subtask": subtask,
                "calls": calls,
                "bytes": progress.encode(value, total).hex(),
            }
        )
    directory.mkdir(parents=True, exist_ok=True)
    for kind, attempt, subtask, counter, total in _LEFT:
        name = progress.file_name(kind, attempt, subtask, f"{4000 + attempt}-0a1b2c3d")
        (directory / name).write_bytes(progress.encode(counter, total))
    written = progress.written_totals(directory)
    queries = []
    for attempt in range(6):
        for subtask in range(3):
            earlier = [a for a in written.get(subtask, {}) if a < attempt]
            total = written[subtask][max(earlier)][1] if earlier else -1
            queries.append({"attempt": attempt, "subtask": subtask, "total": total})
    return {
        "name": progress._NAME.pattern,
        "counters": counters,
        "left": directory.name,  # in the vectors' directory
        "previous": queries,
    }


def write(directory: Path) -> list[Path]:
    """Every vector file into `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = corpus()
    operators: dict[str, Any] = {kind: operator_vectors(kind, lines) for kind in _LEVEL}
    operators["statistic_seeded"] = seeded_vectors(lines, operators["statistic"])
    sinks: dict[str, dict[str, Any]] = {
        kind: sink_vectors(kind, operators[kind], batch_partitions=5) for kind in _LEVEL
    }
    texts = [row[i] for row in operators["customer"]["rows"] for i in range(3)]
    vectors: dict[str, Any] = {
        "operators.json": operators,
        "sink.json": {
            **sinks,
            "shards": {"shards": layout("statistic").shards, "cases": shard_vectors(texts)},
            "batches": batch_vectors(sinks),
        },
        "progress.json": progress_vectors(directory / "progress-left"),
    }
    paths = []
    for name, data in vectors.items():
        path = directory / name
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m abacus.golden DIR", file=sys.stderr)
        return 2
    for path in write(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
