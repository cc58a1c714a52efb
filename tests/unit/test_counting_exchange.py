"""The counts exchange format (SEMANTICS.md §6): one field order, shared with compare's
mismatch records."""

from __future__ import annotations

import json

import pytest

from compare.diff import Mismatch
from counting import AccountCount, AccountKey, CustomerCount, CustomerKey
from counting.exchange import from_line, from_record, key_of_record, to_line

# the two lines of SEMANTICS.md §6, verbatim
ACCOUNT_LINE = (
    '{"level": "account", "company_id": "COM123", "statistic_id": "STA123", "resolution": '
    '"day", "bucket": "2018-12-07", "facet": "browser", "value": "Safari 12.0.1", "count": 1, '
    '"uniques": 1}'
)
CUSTOMER_LINE = (
    '{"level": "customer", "company_id": "COM123", "customer_id": "CUS123", "statistic_id": '
    '"STA123", "resolution": "hour", "bucket": "2018-12-07T03", "count": 1}'
)
ACCOUNT = AccountCount(
    AccountKey("COM123", "STA123", "day", "2018-12-07", "browser", "Safari 12.0.1"), 1, 1
)
CUSTOMER = CustomerCount(CustomerKey("COM123", "CUS123", "STA123", "hour", "2018-12-07T03"), 1)


def test_lines_are_the_documented_ones_and_read_back() -> None:
    assert to_line(ACCOUNT) == ACCOUNT_LINE
    assert to_line(CUSTOMER) == CUSTOMER_LINE
    assert from_line(ACCOUNT_LINE) == ACCOUNT and from_line(CUSTOMER_LINE) == CUSTOMER


def test_mismatch_records_use_the_exchange_field_order() -> None:
    for counted in (ACCOUNT, CUSTOMER):
        record = Mismatch("differs", counted.key, (1, 1), (2, 1), None, None, None, None, True)
        fields = list(record.to_record())
        exchange = list(json.loads(to_line(counted)))
        key_fields = [f for f in exchange if f not in ("count", "uniques")]
        assert fields[0] == "class"
        assert fields[1 : 1 + len(key_fields)] == key_fields
        assert key_of_record(record.to_record()) == counted.key


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"level": "account", "company_id": "C"}, "lacks field 'statistic_id'"),
        ({"company_id": "C"}, "lacks field 'level'"),
        ({**json.loads(CUSTOMER_LINE), "level": "shop"}, "unknown level 'shop'"),
        ({k: v for k, v in json.loads(ACCOUNT_LINE).items() if k != "uniques"}, "'uniques'"),
    ],
)
def test_bad_records_are_refused_by_name(record: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_record(record)
