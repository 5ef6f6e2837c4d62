"""Pure-Python twin of `_keyindex.pyx` (the yarl convention): a dict, the same API and answers."""
import sys
from array import array

from listseg.core.layout import UNKNOWN


class KeyIndex:
    """KeyIndex(keys, ids): keys is bytes of newline-ended keys (no newline inside one), ids a uint32
    buffer with one id per key. A key named twice keeps its first id."""

    def __init__(self, keys, ids):
        keys = bytes(keys)
        ids = memoryview(ids).cast("B").cast("I")
        if keys and not keys.endswith(b"\n"):
            raise ValueError("every key must end with a newline")
        names = keys.split(b"\n")[:-1]
        if len(names) != len(ids):
            raise ValueError(f"{len(names)} keys but {len(ids)} ids")
        self._ids = {}
        for name, uid in zip(names, ids):
            self._ids.setdefault(name, uid)
        self.count = len(names)
        self.nbytes = sys.getsizeof(self._ids) + sum(map(sys.getsizeof, self._ids))   # about

    def lookup(self, batch):
        """ids (native uint32 bytes, UNKNOWN where absent) of batch's newline-ended keys, each trimmed
        of spaces and tabs."""
        batch = bytes(batch)
        if batch and not batch.endswith(b"\n"):
            raise ValueError("every key must end with a newline")
        get = self._ids.get
        return array("I", [get(key.strip(b" \t"), UNKNOWN) for key in batch.split(b"\n")[:-1]]).tobytes()


def resolve_rows(guids, identities, kinds, fields, ends):
    """uids (native uint32 bytes, UNKNOWN where absent) of a parsed upload batch: row r's value,
    fields[ends[r - 1]:ends[r]], in guids if kinds[r] is "g", else in identities."""
    kinds, fields = bytes(kinds), bytes(fields)
    if len(ends) != len(kinds):
        raise ValueError("one end offset per row")
    out, start = array("I"), 0
    for kind, end in zip(kinds, ends):
        index = guids if kind == 103 else identities
        out.append(index._ids.get(fields[start:end], UNKNOWN))
        start = end
    return out.tobytes()
