"""The counting contract of SEMANTICS.md, as pure code (stdlib only, no I/O).

Legacy, the bridge, the Abacus jobs, recount and compare all call this package; none of
them re-implements a rule of it. `tests/unit/test_purity.py` enforces the purity.
"""

from counting.buckets import bucket_date, bucket_label, bucket_labels
from counting.events import canonical_size, parse_event, validate_object
from counting.exchange import from_line, from_record, to_line, to_record
from counting.facets import facet_value, facets_of
from counting.fanout import (
    TOTAL,
    account_facets,
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
    "account_keys",
    "bucket_date",
    "bucket_label",
    "bucket_labels",
    "canonical_size",
    "customer_keys",
    "facet_value",
    "facets_of",
    "from_line",
    "from_record",
    "key_id",
    "parse_event",
    "recount",
    "to_line",
    "to_record",
    "validate_object",
]
