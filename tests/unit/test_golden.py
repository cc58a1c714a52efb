"""abacus.golden: the vectors the JUnit tests of abacus/jvm read are what Python computes
(the Java side runs in `make test`: `mvn test` after `python -m abacus.golden`)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from abacus import golden
from abacus.pipeline import _FIRSTS, _ROWS
from counting import Recount, bucket_date
from storage.counters import INDEX_RESOLUTION


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("golden")
    assert golden.main([str(directory)]) == 0
    return {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}


def test_operators_count_as_recount(vectors: dict[str, Any]) -> None:
    operators = vectors["operators.json"]
    assert isinstance(operators, dict)
    recount = Recount()
    for raw in golden.corpus():
        recount.add_raw(raw)
    account = {tuple(c.key): (c.count, c.uniques) for c in recount.account()}
    statistic = operators["statistic"]
    assert statistic["conf"]["input"].split(",") == list(_FIRSTS["statistic"])
    assert statistic["conf"]["output"].split(",") == list(_ROWS["statistic"])
    assert len(statistic["rows"]) == recount.events  # first deliveries only
    got = {}
    for row in statistic["expected"]:
        named = dict(zip(_ROWS["statistic"], row, strict=True))
        key = tuple(named[f] for f in ("company_id", "statistic_id", "resolution", "bucket"))
        got[(*key, named["facet"], named["value"])] = (named["count"], named["uniques"])
        assert named["index_date"] == (
            bucket_date(named["bucket"]) if named["resolution"] == INDEX_RESOLUTION else None
        )
    assert got == account
    assert any(u < c for c, u in account.values())  # uniques below counts somewhere
    assert len(operators["customer"]["expected"]) == sum(1 for _ in recount.customer())


def test_sink_rows_sum_to_the_counts(vectors: dict[str, Any]) -> None:
    sink = vectors["sink.json"]
    assert isinstance(sink, dict)
    for kind in ("statistic", "customer"):
        conf = sink[kind]["conf"]
        keys, measures = int(conf["keys"]), int(conf["measures"])
        sums: Counter[tuple[object, ...]] = Counter()
        for row in sink[kind]["rows"]:
            for i in range(measures):
                sums[(*row[:keys], i)] += row[keys + i]
        for count in sink[kind]["counts"]:
            for i in range(measures):
                assert sums[(*count[measures:], i)] == count[i]
        dated = {tuple(row[:keys]) for row in sink[kind]["rows"] if row[-1] is not None}
        assert len(sink[kind]["index"]) <= len(dated)


def test_batches_cover_each_row_once_within_the_limits(vectors: dict[str, Any]) -> None:
    sink = vectors["sink.json"]
    assert isinstance(sink, dict)
    for case in sink["batches"]:
        kind, name = case["rows"]
        rows = sink[kind][name]
        start, end = case["partition"]
        positions = [p for batch in case["batches"] for p in batch]
        assert sorted(positions) == list(range(len(rows)))
        for batch in case["batches"]:
            assert len(batch) <= case["batch_rows"]
            partitions = {tuple(rows[p][start:end]) for p in batch}
            assert len(partitions) <= case["batch_partitions"]
