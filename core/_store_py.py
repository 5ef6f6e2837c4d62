"""Pure-Python twin of `_store.pyx` over py-lmdb: the same API, the same file format.

Only one of the two may own a given environment in a process; `store.py` picks one per process.
"""
from array import array
from collections import Counter

import lmdb

from listseg.core.errors import MapFullError, StoreError
from listseg.core.keyorder import ALL_KEYS, sort_key
from listseg.core.layout import (GUID_KEY, IDENT_KEY, PROFILE_BLOCK, UID, UNKNOWN, decode_uid, encode_profile,
                                 encode_uid, frame_keys)
from listseg.core import profile_blocks


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

    def copy(self, path):
        _wrap(self.env.copy, path, compact=True)

    def begin(self, write=False):
        return Txn(self, write)

    def page_counts(self):
        """(the last page number used, the page size, the pages of every database's tree)."""
        with self.env.begin() as txn:
            last = self.env.info()["last_pgno"]
            stats = [self.env.stat()] + [txn.stat(db) for db in self.dbis.values()]
        return last, stats[0]["psize"], sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)


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

    def resolve(self, guid_dbi, ident_dbi, prefix, kinds, fields, ends, nvals=1, col=0, lo=0, hi=ALL_KEYS,
                out=None):
        if col >= nvals or len(ends) != len(kinds) * nvals:
            raise ValueError("ends must hold nvals values per kind, col < nvals")
        if out is not None and len(out) != len(kinds):
            raise ValueError("out must hold a uid per kind")
        txn = self._live()
        fields = bytes(fields)
        uids = array("I", [UNKNOWN]) * len(kinds) if out is None else out
        wanted = []
        for r in range(len(kinds)):
            key = _value(fields, ends, r * nvals + col)
            if lo <= sort_key(kinds[r], key) <= hi:
                wanted.append((kinds[r] == 105, key, r))
        wanted.sort()                                 # key order, as the compiled loop does
        max_key = self.store.max_key_size
        for is_ident, key, r in wanted:
            uids[r] = UNKNOWN
            if not key or len(prefix) + len(key) > max_key:
                continue
            shape, dbi = (IDENT_KEY, ident_dbi) if is_ident else (GUID_KEY, guid_dbi)
            value = txn.get(shape.pack(prefix, key), db=dbi)
            if value is not None and len(value) == UID.width:
                uids[r] = decode_uid(value)
        return uids.tobytes() if out is None else None

    def member_guids(self, profile_dbi, prefix, uids, identities=False):
        self._live()
        return frame_keys(zip(uids, profile_blocks.get_records(self, profile_dbi, prefix, uids)), identities)

    def groups(self, fields, ends, nvals=1, col=0):
        if nvals == 0 or col >= nvals or len(ends) % nvals:
            raise ValueError("ends must hold nvals values per row, col < nvals")
        fields = bytes(fields)
        seen = {}
        gids = array("I")
        for r in range(len(ends) // nvals):
            gids.append(seen.setdefault(_value(fields, ends, r * nvals + col), len(seen)))
        firsts = array("I", [0]) * len(seen)
        for r in reversed(range(len(gids))):
            firsts[gids[r]] = r
        return gids.tobytes(), firsts.tobytes()

    def put_new_profiles(self, guid_dbi, ident_dbi, profile_dbi, prefix, fields, ends, nvals,
                         guid_uids, ident_uids, chan_gids, chan_bits, next_uid):
        n = len(guid_uids)
        if nvals < 3 or len(ends) != n * nvals or len(ident_uids) != n or len(chan_gids) != n:
            raise ValueError("need n rows of nvals >= 3 values, and n uids and channel groups")
        txn = self._live()
        if not self.write:
            raise StoreError("put_new_profiles needs a write transaction")
        max_key = self.store.max_key_size
        if len(prefix) + PROFILE_BLOCK.width > max_key:
            raise ValueError("prefix too long")
        fields = bytes(fields)
        rows = []                                     # (row, guid, identity, bits) of rows to write
        for r in range(n):
            if chan_gids[r] >= len(chan_bits):
                raise ValueError("a channel group is outside chan_bits")
            bits = chan_bits[chan_gids[r]]
            if bits == 0xFF:
                continue
            g = _value(fields, ends, r * nvals)
            i = _value(fields, ends, r * nvals + 1)
            if not g or len(prefix) + max(len(g), len(i)) > max_key:
                raise ValueError("empty guid or key too long")
            rows.append((r, g, i, bits))
        gcount = Counter(g for _, g, _, _ in rows)
        icount = Counter(i for _, _, i, _ in rows if i)
        new = {}
        fast, slow_rows, slow_uids = [], array("I"), array("I")
        for r, g, i, bits in rows:
            uid = UNKNOWN
            if guid_uids[r] == UNKNOWN:
                if g not in new:
                    if next_uid == UNKNOWN:
                        raise StoreError("no uids left")
                    new[g] = next_uid
                    next_uid += 1
                uid = new[g]
            if (guid_uids[r] == UNKNOWN and gcount[g] == 1
                    and (not i or (ident_uids[r] == UNKNOWN and icount[i] == 1))):
                fast.append((uid, g, i, bits))
            else:
                slow_rows.append(r)
                slow_uids.append(uid)
        adds = [array("I") for _ in range(8)]
        profile_blocks.put_records(self, profile_dbi, prefix,
                                   [(uid, encode_profile(bits, g, i)) for uid, g, i, bits in fast])
        for uid, g, i, bits in fast:
            _wrap(txn.put, GUID_KEY.pack(prefix, g), encode_uid(uid), db=guid_dbi)
            if i:
                _wrap(txn.put, IDENT_KEY.pack(prefix, i), encode_uid(uid), db=ident_dbi)
            for b in range(8):
                if bits >> b & 1:
                    adds[b].append(uid)
        return slow_rows.tobytes(), slow_uids.tobytes(), [a.tobytes() for a in adds], next_uid

    def pack_profile_rows(self, fields, ends, chan_gids, chan_bits, base):
        n = len(chan_gids)
        if len(ends) != 3 * n:
            raise ValueError("ends must hold 3 values per row")
        if any(g >= len(chan_bits) for g in chan_gids):
            raise ValueError("a channel group is outside chan_bits")
        fields = bytes(fields)
        packed, packed_ends = bytearray(), array("Q")
        for r in range(n):
            bits = chan_bits[chan_gids[r]]
            if bits == 0xFF:
                continue
            for value in (_value(fields, ends, 3 * r), _value(fields, ends, 3 * r + 1), bytes([bits])):
                packed += value
                packed_ends.append(base + len(packed))
        return bytes(packed), packed_ends.tobytes()

    def load_new_profiles(self, guid_dbi, ident_dbi, profile_dbi, prefix, fields, ends, next_uid):
        n = len(ends) // 3
        if len(ends) != 3 * n or n >= UNKNOWN:
            raise ValueError("ends must hold 3 values per row, fewer than 2**32 - 1 rows")
        txn = self._live()
        if not self.write:
            raise StoreError("load_new_profiles needs a write transaction")
        max_key = self.store.max_key_size
        if len(prefix) + PROFILE_BLOCK.width > max_key:
            raise ValueError("prefix too long")
        fields = bytes(fields)
        rows = []                                     # (guid, identity, bits)
        for r in range(n):
            g, i, b = (_value(fields, ends, 3 * r + c) for c in range(3))
            if not g or len(prefix) + max(len(g), len(i)) > max_key or len(b) != 1:
                raise ValueError("empty guid, key too long, or a channels value that is not one bits byte")
            rows.append((g, i, b[0]))
        first, last, naming = {}, {}, {}
        for r, (g, i, _) in enumerate(rows):
            first.setdefault(g, r)
            last[g] = r
            if i:
                naming[i] = r                         # the last row naming the identity
        if next_uid + len(first) > UNKNOWN:
            raise StoreError("no uids left")
        uid = {g: next_uid + k for k, g in enumerate(sorted(first, key=first.get))}
        kept = {r for r in naming.values() if last[rows[r][0]] == r}
        for g in sorted(first):
            _wrap(txn.put, GUID_KEY.pack(prefix, g), encode_uid(uid[g]), db=guid_dbi)
        for i in sorted(naming):
            if naming[i] in kept:
                _wrap(txn.put, IDENT_KEY.pack(prefix, i), encode_uid(uid[rows[naming[i]][0]]), db=ident_dbi)
        adds = [array("I") for _ in range(8)]
        by_uid = sorted(first, key=first.get)
        profile_blocks.put_records(self, profile_dbi, prefix, [
            (uid[g], encode_profile(rows[last[g]][2], g, rows[last[g]][1] if last[g] in kept else b"")) for g in by_uid])
        for g in by_uid:
            bits = rows[last[g]][2]
            for b in range(8):
                if bits >> b & 1:
                    adds[b].append(uid[g])
        return [a.tobytes() for a in adds], next_uid + len(first), len(first)


def _value(fields, ends, i):
    """Value i of a packed batch (fields concatenated, ends their cumulative end offsets)."""
    return fields[ends[i - 1] if i else 0:ends[i]]
