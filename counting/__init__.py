"""The counting contract of SEMANTICS.md, as pure code (stdlib only, no I/O).

Legacy, the bridge, the Abacus jobs, recount and compare all call this package; none of
them re-implements a rule of it. `tests/unit/test_purity.py` enforces the purity.
"""

from counting.buckets import (
    DATE_WIDTH,
    DATED_RESOLUTIONS,
    LABEL_WIDTH,
    bucket_date,
    bucket_label,
    bucket_labels,
    bucket_on_date,
    date_label_range,
    earliest_instant_s,
    labels_on_date,
    month_label_range,
    month_of,
)
from counting.events import canonical_size, parse_event, validate_object
from counting.exchange import from_line, from_record, to_line, to_record
from counting.facets import facet_value, facets_of
from counting.fanout import (
    TOTAL,
    account_facets,
    account_key_of_id,
    account_keys,
    customer_keys,
    key_id,
)
from counting.model import (
    RESOLUTIONS,
    AccountCount,
    AccountKey,
    CustomerCount,
    CustomerKey,
    Event,
    Reason,
    Rejection,
)
from counting.recount import Dedup, Recount, recount

__all__ = [
    "DATED_RESOLUTIONS",
    "DATE_WIDTH",
    "LABEL_WIDTH",
    "RESOLUTIONS",
    "TOTAL",
    "AccountCount",
    "AccountKey",
    "CustomerCount",
    "CustomerKey",
    "Dedup",
    "Event",
    "Reason",
    "Recount",
    "Rejection",
    "account_facets",
    "account_key_of_id",
    "account_keys",
    "bucket_date",
    "bucket_label",
    "bucket_labels",
    "bucket_on_date",
    "canonical_size",
    "customer_keys",
    "date_label_range",
    "earliest_instant_s",
    "facet_value",
    "facets_of",
    "from_line",
    "from_record",
    "key_id",
    "labels_on_date",
    "month_label_range",
    "month_of",
    "parse_event",
    "recount",
    "to_line",
    "to_record",
    "validate_object",
]
