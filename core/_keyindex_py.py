"""Pure-Python twin of `_keyindex.pyx` (the yarl convention): a dict, the same API and answers."""
import sys
from array import array

UNKNOWN = 0xFFFFFFFF


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
