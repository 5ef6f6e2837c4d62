"""The order resolve looks a batch's keys up in (core/_store.pyx's row_sort_key and the twin's loop):
each row's sort key, and the key ranges that split a batch into parts resolved side by side
(lmdb_backend.py). Plain Python: both bindings use it.
"""
from listseg.core.parser import value_at

#: resolve's widest key range: every sort key.
ALL_KEYS = (1 << 64) - 1


def sort_key(kind, value):
    """Where resolve puts a row in its key order (the compiled row_sort_key): the kind in the top bit
    (identities, 105, after guids), then the value's first 8 bytes, big-endian, less their last bit."""
    return (kind == 105) << 63 | int.from_bytes(bytes(value[:8]).ljust(8, b"\0"), "big") >> 1


def key_ranges(kinds, fields, ends, nvals, col, parts):
    """[(lo, hi)] sort-key ranges, inclusive, that split a batch's rows into `parts` parts of about
    equal size (from a sample of 4096 rows), for resolve's lo and hi: every sort key is in one."""
    n = len(kinds)
    sample = sorted(sort_key(kinds[r], value_at(fields, ends, r * nvals + col))
                    for r in range(0, n, max(1, n // 4096)))
    cuts = sorted({sample[len(sample) * t // parts] for t in range(1, parts)} - {0}) if sample else []
    return list(zip([0] + cuts, [c - 1 for c in cuts] + [ALL_KEYS]))
