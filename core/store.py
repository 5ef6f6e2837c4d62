"""The LMDB environment: which binding owns it, and transaction helpers (keys: core/layout.py).

One environment per process (LMDB forbids two handles on one environment in a process). The compiled
binding (`_store`, over liblmdb) is used unless it is missing or LISTSEG_NO_EXTENSIONS=1, in which case
the twin (`_store_py`, over py-lmdb) is. Both read and write the same file format.
"""
import os
import threading
from contextlib import contextmanager
from types import SimpleNamespace

from typing import TYPE_CHECKING

from listseg.core import _store_py
from listseg.core.layout import DATABASES, UNKNOWN  # noqa: F401 (UNKNOWN re-exported)
from listseg.core.twins import NO_EXTENSIONS
from listseg.core.errors import MapFullError, StoreError  # noqa: F401 (re-exported)

if TYPE_CHECKING or NO_EXTENSIONS:
    from listseg.core._store_py import Store
else:
    try:
        from listseg.core._store import Store
    except ImportError:  # pragma: no cover - not built; tests/test_store.py fails the suite then
        from listseg.core._store_py import Store

COMPILED = Store is not _store_py.Store

#: Virtual size of the memory map. LMDB files are sparse: this bounds growth, it does not reserve disk.
DEFAULT_MAP_SIZE = 256 << 30

def next_key(prefix):
    """The smallest key greater than every key starting with prefix (for range scans)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * 512
    p[-1] += 1
    return bytes(p)


class Database:
    """The environment plus the helpers every module uses: read(), write(fn), scan()."""

    def __init__(self, path, map_size=DEFAULT_MAP_SIZE, store_cls=None):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.store = (store_cls or Store)(path, map_size, list(DATABASES))
        self.db = SimpleNamespace(**{name: self.store.db(name) for name in DATABASES})
        self.max_key_size = self.store.max_key_size
        self._write_lock = threading.Lock()   # LMDB allows one writer; make threads queue here

    def close(self):
        self.store.close()

    @contextmanager
    def read(self):
        txn = self.store.begin(False)
        try:
            yield txn
        finally:
            txn.abort()

    def write(self, fn):
        """Run fn(txn) in one write transaction and commit; nothing is written if fn raises."""
        with self._write_lock:
            txn = self.store.begin(True)
            try:
                result = fn(txn)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            return result

    @staticmethod
    def scan(txn, dbi, prefix, start=None, page=1024):
        """Every (key, value) whose key starts with prefix, from key `start` on, in key order."""
        lo, hi = start or prefix, next_key(prefix)
        while True:
            items = txn.scan(dbi, lo, hi, page)
            yield from items
            if len(items) < page:
                return
            lo = items[-1][0] + b"\x00"
