"""Pure-Python twin of `_store.pyx` over py-lmdb: the same API, the same file format.

Only one of the two may own a given environment in a process; `store.py` picks one per process.
"""
from array import array

import lmdb

UNKNOWN = 0xFFFFFFFF


class StoreError(Exception):
    """An LMDB failure."""


class MapFullError(StoreError):
    """The LMDB map is full; the caller grows it and retries."""


def _wrap(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except lmdb.MapFullError as e:
        raise MapFullError(str(e)) from None
    except lmdb.Error as e:
        raise StoreError(str(e)) from None


class Store:
    def __init__(self, path, map_size, db_names, max_readers=126):
        self.path = path
        self.env = _wrap(lmdb.open, path, map_size=map_size, max_dbs=len(db_names) + 1,
                         max_readers=max_readers, subdir=True, lock=True)
        self.env.reader_check()                       # clear slots left by dead processes
        self.max_key_size = self.env.max_key_size()
        with self.env.begin(write=True) as txn:
            self.dbis = {name: self.env.open_db(name.encode(), txn=txn, create=True) for name in db_names}

    def close(self):
        self.env.close()

    def set_map_size(self, size):
        _wrap(self.env.set_mapsize, size)

    def db(self, name):
        return self.dbis[name]

    def begin(self, write=False):
        return Txn(self, write)


class Txn:
    def __init__(self, store, write):
        self.store = store
        self.write = write
        self.txn = _wrap(store.env.begin, write=write, buffers=False)

    def _live(self):
        if self.txn is None:
            raise StoreError("transaction is finished")
        return self.txn

    def commit(self):
        txn = self._live()
        self.txn = None
        _wrap(txn.commit)

    def abort(self):
        if self.txn is not None:
            self.txn.abort()
            self.txn = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.write:
            self.commit()
        else:
            self.abort()

    def get(self, dbi, key):
        return _wrap(self._live().get, key, db=dbi)

    def put(self, dbi, key, value):
        _wrap(self._live().put, key, value, db=dbi)

    def delete(self, dbi, key):
        return _wrap(self._live().delete, key, db=dbi)

    def scan(self, dbi, lo, hi, limit):
        out = []
        with self._live().cursor(db=dbi) as cur:
            if not cur.set_range(lo or b"\x00"):
                return out
            for key, value in cur:
                if key >= hi or len(out) >= limit:
                    break
                out.append((key, value))
        return out

    def resolve(self, guid_dbi, ident_dbi, prefix, kinds, fields, ends):
        if len(ends) != len(kinds):
            raise ValueError("kinds and ends differ in length")
        txn = self._live()
        fields = bytes(fields)
        uids = array("I", [UNKNOWN]) * len(kinds)
        start = 0
        wanted = []
        for r, end in enumerate(ends):
            wanted.append((kinds[r] == 105, fields[start:end], r))
            start = end
        wanted.sort()                                 # key order, as the compiled loop does
        max_key = self.store.max_key_size
        for is_ident, key, r in wanted:
            if not key or len(prefix) + len(key) > max_key:
                continue
            value = txn.get(prefix + key, db=ident_dbi if is_ident else guid_dbi)
            if value is not None and len(value) == 4:
                uids[r] = int.from_bytes(value, "little")
        return uids.tobytes()
