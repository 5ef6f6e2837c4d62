"""The LMDB environment: which binding owns it, the named databases, keys, and transaction helpers.

One environment per process (LMDB forbids two handles on one environment in a process). The compiled
binding (`_store`, over liblmdb) is used unless it is missing or LISTSEG_NO_EXTENSIONS=1, in which case
the twin (`_store_py`, over py-lmdb) is. Both read and write the same file format.
"""
import json
import os
import struct
import threading
from contextlib import contextmanager
from types import SimpleNamespace

from listseg.core import _store_py
from listseg.core.twins import pick
from listseg.core._store_py import UNKNOWN  # noqa: F401 (re-exported)
from listseg.core.errors import MapFullError, StoreError  # noqa: F401 (re-exported)

Store = pick("listseg.core._store", _store_py, "Store")

COMPILED = Store is not _store_py.Store

#: Virtual size of the memory map. LMDB files are sparse: this bounds growth, it does not reserve disk.
DEFAULT_MAP_SIZE = 256 << 30

# Every key starts with the 4-byte account number, so one account's data is a contiguous key range.
DATABASES = (
    "accounts",   # b"n" + name -> account number; b"a" + account -> account record (JSON);
                  # b"g" + account -> profiles generation (uint64 BE, see keyindex.py)
    "guid",       # account + guid -> uid (uint32 little-endian)
    "ident",      # account + identity -> uid
    "profile",    # account + uid (big-endian, so key order is uid order) -> profile record
    "channels",   # account + channel name -> serialized reachability bitmap
    "segments",   # account + segment id (BE) -> segment record (JSON, small)
    "segnames",   # account + name -> segment id (BE)
    "heads",      # account + segment id -> current version (BE); 0 = none yet
    "versions",   # account + segment id + version -> serialized bitmap
    "history",    # account + segment id + version -> {"time", "size"} (JSON)
    "uploads",    # account + upload id (BE, 8 bytes) -> upload record (JSON)
    "rejects",    # account + upload id + row number (BE) -> line (8 bytes) + reason
)

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


def u32(n):
    return U32.pack(n)


def u64(n):
    return U64.pack(n)


def uid_value(uid):
    return uid.to_bytes(4, "little")


def next_key(prefix):
    """The smallest key greater than every key starting with prefix (for range scans)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * 512
    p[-1] += 1
    return bytes(p)


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(raw):
    return json.loads(raw) if raw is not None else None


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
