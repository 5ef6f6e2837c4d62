# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LMDB through liblmdb, owned here and nowhere else in the process (LMDB forbids opening one
environment twice in a process). The hot loops are `Txn.resolve`: a batch of keys, radix-sorted by an
8-byte prefix and looked up in key order with the GIL released; `Txn.put_new_profiles`, which
writes a profile batch's brand-new rows the same way; and `Txn.load_new_profiles`, which writes an
account's first import with each table sorted exactly and written once. Everything else is a thin
wrapper. The liblmdb declarations are includes/lmdb.pxd; the buffer, sort and grouping table the
loops share are _batch.pxd.

`_store_py.py` is the pure-Python twin over py-lmdb with the same API and the same file format.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset, memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

include "_layout.pxi"      # the storage layout (generated from layout.py): widths, byte orders, the profile record

from includes.lmdb cimport *
from _batch cimport Buf, buf_put, buf_bytes, huge_pages, prefetch, sort_key, radix_sort, group_rows

import os

from listseg.core.errors import StoreError, MapFullError

cdef enum:
    AHEAD = 16                                      # rows to prefetch ahead in resolve
    RUN_SMALL = 32                                  # runs of equal sort keys this short: insertion sort
    ROW_REPEAT = 1                                  # load_new_profiles' marks of a row: its guid came before,
    ROW_SUPERSEDED = 2                              # comes again later, its identity is not its profile's
    ROW_IDENT_DROPPED = 4
    VALUE_LEN = 0x7FFF                              # sort_values' refs: (offset << 16) | length, and
    SAME_AS_BEFORE = 0x8000                         # a bit: the value equals the one before it
    GATHER_ROWS = 4096                              # values copied into key order at a time,
    GATHER_AHEAD = 64                               # fetched this many ahead (a short loop)
    WALK_MAX_GAP = 16                               # seek steps on where keys are this close or closer
    KEY_ROOM = 1024                                 # bytes for a key: LMDB's longest (511 by default) and more
    SLOT_BAD = 1 << 20                              # slot_size: a block that ends inside a slot
    MAIN_DBI = 1                                    # LMDB's main database (0 is its free list)

cdef uint64_t ALL_KEYS = ~(<uint64_t>0)             # resolve's default hi: every sort key

# the grouping table's hash seed, random per process: crafted guids cannot make one long probe run
cdef uint64_t GROUP_SEED = int.from_bytes(os.urandom(8), "little")


cdef int check(int rc) except -1:
    if rc == 0:
        return 0
    msg = mdb_strerror(rc).decode("utf-8", "replace")
    if rc == MDB_MAP_FULL:
        raise MapFullError(msg)
    raise StoreError(msg)


cdef class Store:
    """One LMDB environment: a directory with named databases."""
    cdef MDB_env *env
    cdef readonly int max_key_size
    cdef readonly str path
    cdef dict dbis

    def __cinit__(self, str path, size_t map_size, list db_names, unsigned int max_readers=126):
        cdef MDB_txn *txn
        cdef MDB_dbi dbi
        cdef int rc, dead = 0
        self.path = path
        self.dbis = {}
        check(mdb_env_create(&self.env))
        check(mdb_env_set_mapsize(self.env, map_size))
        check(mdb_env_set_maxdbs(self.env, len(db_names) + 1))
        check(mdb_env_set_maxreaders(self.env, max_readers))
        bpath = path.encode()
        rc = mdb_env_open(self.env, bpath, MDB_NOTLS, 0o644)
        if rc:
            mdb_env_close(self.env)
            self.env = NULL
            check(rc)
        mdb_reader_check(self.env, &dead)          # clear slots left by dead processes
        self.max_key_size = mdb_env_get_maxkeysize(self.env)
        with nogil:
            rc = mdb_txn_begin(self.env, NULL, 0, &txn)
        check(rc)
        for name in db_names:
            rc = mdb_dbi_open(txn, name.encode(), MDB_CREATE, &dbi)
            if rc:
                mdb_txn_abort(txn)
                check(rc)
            self.dbis[name] = dbi
        check(mdb_txn_commit(txn))

    def __dealloc__(self):
        if self.env != NULL:
            mdb_env_close(self.env)

    def close(self):
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL

    def set_map_size(self, size_t size):
        """Grow the map; only call with no transaction open in this process."""
        check(mdb_env_set_mapsize(self.env, size))

    def db(self, str name):
        return self.dbis[name]

    def copy(self, str path):
        """A compacted copy of the environment into the empty directory `path`, from one read
        transaction: consistent while writers go on (mdb_env_copy2 with MDB_CP_COMPACT)."""
        cdef int rc
        if self.env == NULL:
            raise StoreError("store is closed")
        bpath = path.encode()
        cdef const char *cpath = bpath
        with nogil:
            rc = mdb_env_copy2(self.env, cpath, MDB_CP_COMPACT)
        check(rc)

    def begin(self, bint write=False):
        if self.env == NULL:
            raise StoreError("store is closed")
        return Txn(self, write)

    def page_counts(self):
        """(the last page number used, the page size, the pages of every database's tree: the main
        one and the named ones), for lmdb_backend.usage."""
        cdef MDB_envinfo info
        cdef MDB_stat stat
        cdef MDB_txn *txn
        cdef size_t in_trees = 0
        if self.env == NULL:
            raise StoreError("store is closed")
        check(mdb_txn_begin(self.env, NULL, MDB_RDONLY, &txn))
        try:
            check(mdb_env_info(self.env, &info))
            for dbi in [MAIN_DBI, *self.dbis.values()]:
                check(mdb_stat(txn, dbi, &stat))
                in_trees += stat.ms_branch_pages + stat.ms_leaf_pages + stat.ms_overflow_pages
        finally:
            mdb_txn_abort(txn)
        return info.me_last_pgno, stat.ms_psize, in_trees


cdef class Txn:
    cdef MDB_txn *txn
    cdef Store store
    cdef readonly bint write

    def __cinit__(self, Store store, bint write):
        cdef int rc
        self.store = store
        self.write = write
        with nogil:                                 # a writer may wait for another writer
            rc = mdb_txn_begin(store.env, NULL, 0 if write else MDB_RDONLY, &self.txn)
        check(rc)

    def __dealloc__(self):
        if self.txn != NULL:
            mdb_txn_abort(self.txn)

    cdef int _live(self) except -1:
        if self.txn == NULL:
            raise StoreError("transaction is finished")
        return 0

    def commit(self):
        cdef int rc
        self._live()
        with nogil:
            rc = mdb_txn_commit(self.txn)
        self.txn = NULL
        check(rc)

    def abort(self):
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
            self.txn = NULL

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.write:
            self.commit()
        else:
            self.abort()

    def get(self, MDB_dbi dbi, bytes key):
        cdef MDB_val k, v
        cdef int rc
        self._live()
        k.mv_size = len(key)
        k.mv_data = PyBytes_AS_STRING(key)
        rc = mdb_get(self.txn, dbi, &k, &v)
        if rc == MDB_NOTFOUND:
            return None
        check(rc)
        return PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)

    def put(self, MDB_dbi dbi, bytes key, bytes value):
        cdef MDB_val k, v
        self._live()
        k.mv_size = len(key)
        k.mv_data = PyBytes_AS_STRING(key)
        v.mv_size = len(value)
        v.mv_data = PyBytes_AS_STRING(value)
        check(mdb_put(self.txn, dbi, &k, &v, 0))

    def delete(self, MDB_dbi dbi, bytes key):
        cdef MDB_val k
        cdef int rc
        self._live()
        k.mv_size = len(key)
        k.mv_data = PyBytes_AS_STRING(key)
        rc = mdb_del(self.txn, dbi, &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        check(rc)
        return True

    def scan(self, MDB_dbi dbi, bytes lo, bytes hi, int limit):
        """Up to `limit` (key, value) pairs with lo <= key < hi, in key order."""
        cdef MDB_cursor *cur
        cdef MDB_val k, v
        cdef int rc
        cdef MDB_cursor_op op = MDB_SET_RANGE
        self._live()
        out = []
        if not lo:
            lo = b"\x00"
        check(mdb_cursor_open(self.txn, dbi, &cur))
        try:
            k.mv_size = len(lo)
            k.mv_data = PyBytes_AS_STRING(lo)
            while len(out) < limit:
                rc = mdb_cursor_get(cur, &k, &v, op)
                op = MDB_NEXT
                if rc == MDB_NOTFOUND:
                    break
                check(rc)
                key = PyBytes_FromStringAndSize(<char *>k.mv_data, k.mv_size)
                if key >= hi:
                    break
                out.append((key, PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)))
        finally:
            mdb_cursor_close(cur)
        return out

    def resolve(self, MDB_dbi guid_dbi, MDB_dbi ident_dbi, bytes prefix,
                const uint8_t[::1] kinds, const uint8_t[::1] fields, const uint64_t[::1] ends,
                size_t nvals=1, size_t col=0, uint64_t lo=0, uint64_t hi=ALL_KEYS, uint32_t[::1] out=None):
        """uids (native uint32 bytes, UNKNOWN where absent) of rows (kinds[r], value col of row r)
        under prefix; a batch has nvals values per row (ends holds n * nvals end offsets). Only the
        rows whose sort key (keyorder.sort_key) is in [lo, hi] are looked up: into `out` (n uids)
        if given, the others left as they are, so that threads can resolve a batch's key ranges
        side by side (lmdb_backend.py); else into new bytes, the others UNKNOWN."""
        cdef size_t n = kinds.shape[0], r, j, i, start, flen, kind, m = 0
        cdef size_t plen = len(prefix)
        cdef int max_key = self.store.max_key_size
        cdef int rc = 0
        cdef uint64_t sk
        cdef Seek *sp
        cdef uint64_t *keys
        cdef uint32_t *rows
        cdef uint32_t *uids
        cdef uint8_t keybuf[KEY_ROOM]
        cdef Seek seeks[2]
        cdef size_t of_kind[2]
        cdef MDB_stat stat
        cdef const uint8_t *fp = &fields[0] if fields.shape[0] else NULL
        cdef const uint8_t *kp = &kinds[0] if n else NULL
        cdef const uint64_t *ep = &ends[0] if ends.shape[0] else NULL
        cdef uint8_t *chunk = NULL
        cdef size_t chunk_at[GATHER_ROWS]
        cdef uint32_t found[GATHER_ROWS]
        if col >= nvals or <size_t>ends.shape[0] != n * nvals:
            raise ValueError("ends must hold nvals values per kind, col < nvals")
        if out is not None and <size_t>out.shape[0] != n:
            raise ValueError("out must hold a uid per kind")
        self._live()
        if out is None:
            result = PyBytes_FromStringAndSize(NULL, n * 4)
            uids = <uint32_t *>PyBytes_AS_STRING(result)
            huge_pages(uids, n * 4)                     # written in row order: at random
            memset(uids, 0xFF, n * 4)                   # LAYOUT_UNKNOWN, for rows out of range
        else:
            result = None
            uids = &out[0] if n else NULL
        if plen + 4 > <size_t>max_key or max_key + 1 > KEY_ROOM:
            raise ValueError("prefix too long")
        of_kind[0] = of_kind[1] = 0
        with nogil:
            for r in range(n):
                sk = row_sort_key(kp, fp, ep, nvals, col, r)
                if lo <= sk <= hi:
                    of_kind[sk >> 63] += 1
        m = of_kind[0] + of_kind[1]
        if m == 0:
            return result
        memcpy(keybuf, PyBytes_AS_STRING(prefix), plen)
        # cursors, not mdb_get: a positioned cursor skips the root-to-leaf walk when the next key
        # falls in the page it is on, which sorted batches make the common case; where the batch is
        # dense (a key every few table entries), stepping on (MDB_NEXT) beats each search (seek)
        memset(seeks, 0, sizeof(seeks))
        check(mdb_cursor_open(self.txn, guid_dbi, &seeks[0].cur))
        rc = mdb_cursor_open(self.txn, ident_dbi, &seeks[1].cur)
        if rc:
            mdb_cursor_close(seeks[0].cur)
            check(rc)
        for i in range(2):
            if of_kind[i] and mdb_stat(self.txn, ident_dbi if i else guid_dbi, &stat) == 0:
                seeks[i].walk = walk_steps(stat.ms_entries, of_kind[i])
        keys = <uint64_t *>malloc(m * sizeof(uint64_t))
        rows = <uint32_t *>malloc(m * sizeof(uint32_t))
        chunk = <uint8_t *>malloc((m if m < GATHER_ROWS else GATHER_ROWS) * <size_t>max_key)
        if keys == NULL or rows == NULL or chunk == NULL:
            free(keys)
            free(rows)
            free(chunk)
            mdb_cursor_close(seeks[0].cur)
            mdb_cursor_close(seeks[1].cur)
            raise MemoryError()
        with nogil:
            j = 0
            for r in range(n):
                sk = row_sort_key(kp, fp, ep, nvals, col, r)
                if lo <= sk <= hi:
                    keys[j] = sk
                    rows[j] = <uint32_t>r
                    j += 1
            rc = radix_sort(keys, rows, m)
            if rc == 0:
                # In key order the rows' offsets, kinds and bytes are scattered over the batch. A first
                # pass gathers each one's (start, kind, length) into keys, loads that do not wait on
                # each other (fetching ahead through `ends` in the look-up loop made each key wait on a
                # miss: 37% of the resolver's samples at 32M-row batches); then each GATHER_ROWS keys'
                # bytes are copied into key order (gather_values) before their look-ups, and their
                # uids scattered back after. A key past VALUE_LEN bytes is past any key: it is skipped.
                for j in range(m):
                    if j + AHEAD < m:
                        i = rows[j + AHEAD] * nvals + col
                        prefetch(&ends[i - 1] if i else &ends[0])
                    i = rows[j] * nvals + col
                    start = ends[i - 1] if i else 0
                    flen = ends[i] - start
                    keys[j] = (start << 16) | (keys[j] >> 63 << 15) | (flen if flen < VALUE_LEN else VALUE_LEN)
                for j in range(m):
                    if j % GATHER_ROWS == 0:
                        scatter_uids(uids, rows, j, found)
                        gather_values(fp, keys, j, m, max_key - plen, chunk, chunk_at)
                    flen = keys[j] & VALUE_LEN
                    found[j % GATHER_ROWS] = LAYOUT_UNKNOWN
                    if plen + flen > <size_t>max_key or flen == 0:
                        continue
                    kind = (keys[j] >> 15) & 1
                    if kind:
                        memcpy(keybuf + plen, chunk + chunk_at[j % GATHER_ROWS], flen)
                    else:
                        flen = pack_guid(keybuf + plen, chunk + chunk_at[j % GATHER_ROWS], flen)
                        if plen + flen > <size_t>max_key:
                            continue
                    sp = &seeks[kind]
                    rc = seek(sp, keybuf, plen + flen)
                    if rc:
                        break
                    if sp.hit and sp.val.mv_size == LAYOUT_UID_WIDTH:
                        found[j % GATHER_ROWS] = get_uid(<const uint8_t *>sp.val.mv_data)
                if rc == 0:
                    scatter_uids(uids, rows, m, found)
        free(chunk)
        free(keys)
        free(rows)
        mdb_cursor_close(seeks[0].cur)
        mdb_cursor_close(seeks[1].cur)
        if rc == -1:
            raise MemoryError()
        check(rc)
        return result


    def member_guids(self, MDB_dbi profile_dbi, bytes prefix, const uint32_t[::1] uids, bint identities=False):
        """(guids, found) for uids in ascending order: each existing profile's guid followed by a
        newline, and the uids that still have a profile (packed uint32); with identities true, each
        one's identity instead, and only profiles with one. Reads layout.py's profile record (bits,
        guid length uint16 LE, guid, identity; or bits | PROFILE_HEX_GUID, 16 bytes, identity), in its
        block (layout.PROFILE_KEY): each block is read once, its slots walked in order. This is
        ListMembers', the export's and the profile index's loop: a Python loop per member ran ~1M/s."""
        cdef size_t n = uids.shape[0], i, plen = len(prefix), glen = 0, start, flen, head, size = 0
        cdef size_t at = 0, rsize
        cdef uint32_t block = LAYOUT_UNKNOWN, slot = 0, want
        cdef const uint8_t *blk = NULL
        cdef uint8_t keybuf[16]
        cdef uint8_t hexbuf[LAYOUT_HEX_GUID_DIGITS]
        cdef bint hex_guid
        cdef const uint8_t *rec
        cdef const uint8_t *src
        cdef uint32_t uid
        cdef MDB_cursor *cur
        cdef MDB_val k, v
        cdef int rc = 0
        cdef Buf guids, found
        cdef char nl = 10
        self._live()
        if plen > 8:
            raise ValueError("prefix too long")
        memcpy(keybuf, PyBytes_AS_STRING(prefix), plen)
        memset(&guids, 0, sizeof(Buf))
        memset(&found, 0, sizeof(Buf))
        check(mdb_cursor_open(self.txn, profile_dbi, &cur))
        try:
            with nogil:
                for i in range(n):
                    uid = uids[i]
                    want = uid & ((1 << LAYOUT_PROFILE_BLOCK_BITS) - 1)
                    if uid >> LAYOUT_PROFILE_BLOCK_BITS != block or want < slot:
                        block = uid >> LAYOUT_PROFILE_BLOCK_BITS
                        put_profile_block(keybuf + plen, block)     # layout.PROFILE_KEY: prefix + block
                        k.mv_size = plen + LAYOUT_PROFILE_BLOCK_WIDTH
                        k.mv_data = keybuf
                        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY)
                        blk, size, at, slot = NULL, 0, 0, 0
                        if rc == 0:
                            blk, size = <const uint8_t *>v.mv_data, v.mv_size
                        elif rc == MDB_NOTFOUND:
                            rc = 0
                        else:
                            break
                    rsize = SLOT_BAD
                    while blk != NULL and slot <= want:         # on to uid's slot
                        rsize = slot_size(blk, size, &at)
                        if rsize == SLOT_BAD:
                            break
                        rec = blk + at
                        at += rsize
                        slot += 1
                    if rsize == SLOT_BAD or slot != want + 1 or rsize == 0:
                        continue                        # no profile (or not a block: never read past it)
                    hex_guid = get_profile_bits(rec + LAYOUT_PROFILE_BITS_AT) & LAYOUT_PROFILE_HEX_GUID
                    if hex_guid:
                        head = LAYOUT_PROFILE_HEX_HEAD
                    else:
                        glen = get_profile_guid_len(rec + LAYOUT_PROFILE_GUID_LEN_AT) if rsize >= LAYOUT_PROFILE_HEAD else 0
                        head = LAYOUT_PROFILE_HEAD + glen
                    if rsize < head:
                        continue                        # not a profile record: skip, never read past it
                    src = rec
                    if identities:
                        start, flen = head, rsize - head
                        if flen == 0:
                            continue
                    elif hex_guid:
                        start, flen, src = 0, LAYOUT_HEX_GUID_DIGITS, hexbuf
                        unpack_hex_guid(hexbuf, rec + LAYOUT_PROFILE_BITS_WIDTH)
                    else:
                        start, flen = LAYOUT_PROFILE_HEAD, glen
                    if buf_put(&guids, <const char *>src + start, flen) or buf_put(&guids, &nl, 1) \
                            or buf_put(&found, <const char *>&uid, 4):
                        rc = -1
                        break
            if rc == -1:
                raise MemoryError()
            check(rc)
            return buf_bytes(&guids), buf_bytes(&found)
        finally:
            mdb_cursor_close(cur)
            free(guids.data)
            free(found.data)

    def groups(self, const uint8_t[::1] fields, const uint64_t[::1] ends, size_t nvals=1, size_t col=0):
        """(gids, firsts), native uint32 bytes: gids[r] numbers row r's value in column col among the
        batch's distinct values, in order of first appearance; firsts[g] is the first row with value g.
        Needs no transaction: it is here because ids.py reaches compiled code through its Txn."""
        cdef size_t n, ng = 0
        cdef int rc
        cdef uint32_t *firsts
        cdef uint32_t *out
        if nvals == 0 or col >= nvals or <size_t>ends.shape[0] % nvals:
            raise ValueError("ends must hold nvals values per row, col < nvals")
        n = <size_t>ends.shape[0] // nvals
        gids = PyBytes_FromStringAndSize(NULL, n * 4)
        if n == 0:
            return gids, b""
        out = <uint32_t *>PyBytes_AS_STRING(gids)
        firsts = <uint32_t *>malloc(n * sizeof(uint32_t))
        if firsts == NULL:
            raise MemoryError()
        with nogil:
            rc = group_rows(&fields[0] if fields.shape[0] else NULL, &ends[0], n, nvals, col, False,
                            LAYOUT_UNKNOWN, GROUP_SEED, out, firsts, &ng)
        try:
            if rc:
                raise MemoryError()
            return gids, PyBytes_FromStringAndSize(<char *>firsts, ng * 4)
        finally:
            free(firsts)

    def put_new_profiles(self, MDB_dbi guid_dbi, MDB_dbi ident_dbi, MDB_dbi profile_dbi, bytes prefix,
                         const uint8_t[::1] fields, const uint64_t[::1] ends, size_t nvals,
                         const uint32_t[::1] guid_uids, const uint32_t[::1] ident_uids,
                         const uint32_t[::1] chan_gids, const uint8_t[::1] chan_bits, uint32_t next_uid):
        """Write the brand-new profiles of a batch of (guid, identity, channels, ...) rows, and plan the
        rest, with the result of writing every row in order.

        guid_uids, ident_uids: resolve() of columns 0 and 1. Row r's channel bits are
        chan_bits[chan_gids[r]]; 0xFF skips the row (the caller reports it). The first occurrence of
        each guid not stored yet takes next_uid, next_uid + 1, ... in row order. A row whose guid is
        new and not repeated, and whose identity is empty or new and not repeated, touches no key any
        other row touches but its profile block: it is written here (guid -> uid, identity -> uid, in
        key order; its record in its uid's slot, blocks in uid order, the other rows' slots empty).
        The caller writes the other rows one at a time, in row order, each into its block.

        Returns (slow_rows, slow_uids, adds, next_uid): the other rows and, for each, the uid its guid
        takes if still unknown when the row comes up (UNKNOWN if stored), native uint32 bytes; adds[b]
        the uids written here with channel bit b, ascending, for b in 0..7; the next free uid."""
        cdef size_t n = guid_uids.shape[0], plen = len(prefix), ntab = chan_bits.shape[0]
        cdef size_t r, i, k, b, start, flen, ilen, nfast = 0, nslow = 0, nident = 0, ng = 0
        cdef size_t max_key = <size_t>self.store.max_key_size
        cdef uint32_t g, ig, uid, cg, first_new = next_uid
        cdef uint8_t bits
        cdef int rc = 0
        cdef Blocks blocks
        cdef const uint8_t *fp
        cdef const uint64_t *ep
        cdef const uint8_t *pp = <const uint8_t *>PyBytes_AS_STRING(prefix)
        cdef uint32_t *mem
        cdef uint64_t *keys
        cdef uint32_t *srows
        cdef uint32_t *suids
        cdef uint32_t *fill
        cdef size_t counts[8]
        if nvals < 3 or <size_t>ends.shape[0] != n * nvals or <size_t>ident_uids.shape[0] != n \
                or <size_t>chan_gids.shape[0] != n:
            raise ValueError("need n rows of nvals >= 3 values, and n uids and channel groups")
        self._live()
        if not self.write:
            raise StoreError("put_new_profiles needs a write transaction")
        if plen + LAYOUT_PROFILE_UID_WIDTH > max_key:
            raise ValueError("prefix too long")
        if n == 0:
            return b"", b"", [b""] * 8, next_uid
        fp = &fields[0] if fields.shape[0] else NULL
        ep = &ends[0]
        # per-row scratch: guid groups, firsts, counts, new uids; identity groups, firsts, counts;
        # fast rows and uids; rows with an identity and their uids; sort order; sort keys
        mem = <uint32_t *>calloc(12 * n, sizeof(uint32_t))
        keys = <uint64_t *>malloc(n * sizeof(uint64_t))
        if mem == NULL or keys == NULL:
            free(mem)
            free(keys)
            raise MemoryError()
        cdef uint32_t *ggid = mem
        cdef uint32_t *gfirst = mem + n
        cdef uint32_t *gcount = mem + 2 * n
        cdef uint32_t *gnew = mem + 3 * n
        cdef uint32_t *igid = mem + 4 * n
        cdef uint32_t *ifirst = mem + 5 * n
        cdef uint32_t *icount = mem + 6 * n
        cdef uint32_t *fast_rows = mem + 7 * n
        cdef uint32_t *fast_uids = mem + 8 * n
        cdef uint32_t *id_rows = mem + 9 * n
        cdef uint32_t *id_uids = mem + 10 * n
        cdef uint32_t *order = mem + 11 * n
        try:
            slow_rows = PyBytes_FromStringAndSize(NULL, n * 4)
            slow_uids = PyBytes_FromStringAndSize(NULL, n * 4)
            srows = <uint32_t *>PyBytes_AS_STRING(slow_rows)
            suids = <uint32_t *>PyBytes_AS_STRING(slow_uids)
            with nogil:
                rc = group_rows(fp, ep, n, nvals, 0, False, LAYOUT_UNKNOWN, GROUP_SEED, ggid, gfirst, &ng)
                if rc == 0:
                    rc = group_rows(fp, ep, n, nvals, 1, True, LAYOUT_UNKNOWN, GROUP_SEED, igid, ifirst, &ng)
                # count each guid and identity over the rows that will be written
                for r in range(n):
                    if rc:
                        break
                    cg = chan_gids[r]
                    if cg >= ntab:
                        rc = -2
                        break
                    if chan_bits[cg] == 0xFF:
                        continue
                    i = r * nvals
                    start = ep[i - 1] if i else 0
                    flen = ep[i] - start
                    ilen = ep[i + 1] - ep[i]
                    if flen == 0 or plen + flen > max_key or plen + ilen > max_key:
                        rc = -3
                        break
                    gcount[ggid[r]] += 1
                    if igid[r] != LAYOUT_UNKNOWN:
                        icount[igid[r]] += 1
                    gnew[ggid[r]] = LAYOUT_UNKNOWN
                # uids in row order; split fast rows from slow ones
                for r in range(n):
                    if rc:
                        break
                    if chan_bits[chan_gids[r]] == 0xFF:
                        continue
                    g = ggid[r]
                    ig = igid[r]
                    if guid_uids[r] == LAYOUT_UNKNOWN and gnew[g] == LAYOUT_UNKNOWN:
                        if next_uid == LAYOUT_UNKNOWN:
                            rc = -4
                            break
                        gnew[g] = next_uid
                        next_uid += 1
                    uid = gnew[g] if guid_uids[r] == LAYOUT_UNKNOWN else LAYOUT_UNKNOWN
                    if (guid_uids[r] == LAYOUT_UNKNOWN and gcount[g] == 1
                            and (ig == LAYOUT_UNKNOWN or (ident_uids[r] == LAYOUT_UNKNOWN and icount[ig] == 1))):
                        fast_rows[nfast] = <uint32_t>r
                        fast_uids[nfast] = uid
                        nfast += 1
                        if ig != LAYOUT_UNKNOWN:
                            id_rows[nident] = <uint32_t>r
                            id_uids[nident] = uid
                            nident += 1
                    else:
                        srows[nslow] = <uint32_t>r
                        suids[nslow] = uid
                        nslow += 1
                # profile records: uids ascend, so blocks append when they come after every stored key
                if rc == 0 and nfast:
                    rc = blocks_open(&blocks, self.txn, profile_dbi, pp, plen, first_new)
                    if rc == 0:
                        for k in range(nfast):
                            r = fast_rows[k]
                            i = r * nvals
                            start = ep[i - 1] if i else 0
                            flen = ep[i] - start
                            ilen = ep[i + 1] - ep[i]
                            rc = blocks_add(&blocks, fast_uids[k], chan_bits[chan_gids[r]], fp + start, flen,
                                            fp + ep[i], ilen)
                            if rc:
                                break
                        rc = blocks_close(&blocks, rc)
                if rc == 0 and nfast:
                    rc = put_uids_sorted(self.txn, guid_dbi, pp, plen, fp, ep, nvals, 0, True,
                                         fast_rows, fast_uids, nfast, keys, order)
                if rc == 0 and nident:
                    rc = put_uids_sorted(self.txn, ident_dbi, pp, plen, fp, ep, nvals, 1, False,
                                         id_rows, id_uids, nident, keys, order)
            if rc == -1:
                raise MemoryError()
            if rc == -2:
                raise ValueError("a channel group is outside chan_bits")
            if rc == -3:
                raise ValueError("empty guid or key too long")
            if rc == -4:
                raise StoreError("no uids left")
            if rc == -5:
                raise StoreError("profile records out of uid order")
            check(rc)
            memset(counts, 0, sizeof(counts))
            for k in range(nfast):
                bits = chan_bits[chan_gids[fast_rows[k]]]
                for b in range(8):
                    counts[b] += (bits >> b) & 1
            adds = []
            for b in range(8):
                out = PyBytes_FromStringAndSize(NULL, counts[b] * 4)
                fill = <uint32_t *>PyBytes_AS_STRING(out)
                i = 0
                if counts[b]:
                    for k in range(nfast):
                        if (chan_bits[chan_gids[fast_rows[k]]] >> b) & 1:
                            fill[i] = fast_uids[k]
                            i += 1
                adds.append(out)
            return slow_rows[:nslow * 4], slow_uids[:nslow * 4], adds, next_uid
        finally:
            free(mem)
            free(keys)

    def pack_profile_rows(self, const uint8_t[::1] fields, const uint64_t[::1] ends,
                          const uint32_t[::1] chan_gids, const uint8_t[::1] chan_bits, uint64_t base):
        """A parsed (guid, identity, channels) batch packed as load_new_profiles takes it (and as
        Profiles.upsert packs rows): (guid, identity, bits byte), the bits chan_bits[chan_gids[r]],
        the ends offset by base (where these fields go in the caller's buffer). A row whose bits are
        0xFF is left out. Needs no transaction (see groups). Returns (fields, ends) bytes."""
        cdef size_t n = chan_gids.shape[0], ntab = chan_bits.shape[0], r, start, glen, k = 0, out_len = 0
        cdef uint8_t bits
        cdef uint8_t *fo
        cdef uint64_t *eo
        cdef const uint8_t *fp = &fields[0] if fields.shape[0] else NULL
        if <size_t>ends.shape[0] != 3 * n:
            raise ValueError("ends must hold 3 values per row")
        for r in range(n):
            if chan_gids[r] >= ntab:
                raise ValueError("a channel group is outside chan_bits")
        packed = PyBytes_FromStringAndSize(NULL, fields.shape[0] + n)
        packed_ends = PyBytes_FromStringAndSize(NULL, 3 * n * 8)
        fo = <uint8_t *>PyBytes_AS_STRING(packed)
        eo = <uint64_t *>PyBytes_AS_STRING(packed_ends)
        with nogil:
            for r in range(n):
                bits = chan_bits[chan_gids[r]]
                if bits == 0xFF:
                    continue
                start = ends[3 * r - 1] if r else 0
                glen = ends[3 * r + 1] - start          # the guid and the identity follow each other
                memcpy(fo + out_len, fp + start, glen)
                eo[3 * k] = base + out_len + ends[3 * r] - start
                out_len += glen
                eo[3 * k + 1] = base + out_len
                fo[out_len] = bits
                out_len += 1
                eo[3 * k + 2] = base + out_len
                k += 1
        return packed[:out_len], packed_ends[:3 * k * 8]

    def load_new_profiles(self, MDB_dbi guid_dbi, MDB_dbi ident_dbi, MDB_dbi profile_dbi, bytes prefix,
                          const uint8_t[::1] fields, const uint64_t[::1] ends, uint32_t next_uid):
        """Write an account's first profiles: (guid, identity, bits byte) rows, as pack_profile_rows
        packs them, with the result of upserting them one at a time in row order into an account with
        none stored (the caller checks). Each distinct guid's first row takes next_uid, next_uid + 1,
        ... in row order; its profile holds its last row's bits and identity; an identity is the
        profile's of the last row naming it, if that row is its guid's last (else a later row moved
        the guid on, and the identity is nobody's).

        Each table is written once, in key order: each key lands past the last one written, where
        LMDB leaves the page it splits full, while an insert between keys splits it in half (the
        import's random-order batches left the guid table ~69% full and rewrote most of it at every
        commit, issue 16). Appended (MDB_APPEND, no walk from the root) where the keys come after
        every stored one.

        Returns (adds, next_uid, profiles): adds[b] the new uids with channel bit b, ascending, native
        uint32 bytes, for b in 0..7; the next free uid; the profiles written."""
        cdef size_t n = <size_t>ends.shape[0] // 3, plen = len(prefix), r, k, e, i, j, start, glen, ilen
        cdef size_t m = 0, nd = 0, repeats = 0, max_key = <size_t>self.store.max_key_size
        cdef uint32_t uid = 0
        cdef uint8_t bits
        cdef int rc = 0
        cdef unsigned int put_flags
        cdef MDB_cursor *cur
        cdef Blocks blocks
        cdef bint opened = False
        cdef const uint8_t *fp = &fields[0] if fields.shape[0] else NULL
        cdef const uint64_t *ep
        cdef const uint8_t *pp = <const uint8_t *>PyBytes_AS_STRING(prefix)
        cdef uint8_t keybuf[520]
        cdef size_t counts[8]
        cdef uint32_t *fill
        if <size_t>ends.shape[0] != 3 * n or n >= LAYOUT_UNKNOWN:
            raise ValueError("ends must hold 3 values per row, fewer than 2**32 - 1 rows")
        self._live()
        if not self.write:
            raise StoreError("load_new_profiles needs a write transaction")
        if plen + LAYOUT_PROFILE_UID_WIDTH > max_key:
            raise ValueError("prefix too long")
        if n == 0:
            return [b""] * 8, next_uid, 0
        ep = &ends[0]
        cdef uint64_t *keys = <uint64_t *>malloc(n * sizeof(uint64_t))
        cdef uint32_t *rows = <uint32_t *>malloc(n * sizeof(uint32_t))
        cdef uint32_t *uid_of_row = <uint32_t *>malloc(n * sizeof(uint32_t))
        cdef uint32_t *last_of_uid = <uint32_t *>malloc(n * sizeof(uint32_t))
        cdef uint8_t *marks = <uint8_t *>calloc(n, 1)
        cdef uint8_t *chunk = <uint8_t *>malloc(GATHER_ROWS * <size_t>max_key)
        cdef size_t chunk_at[GATHER_ROWS]
        cdef uint8_t *bits_of_uid = <uint8_t *>keys      # free once both key tables are written
        memcpy(keybuf, pp, plen)
        try:
            if keys == NULL or rows == NULL or uid_of_row == NULL or last_of_uid == NULL or marks == NULL \
                    or chunk == NULL:
                raise MemoryError()
            with nogil:
                for r in range(n):
                    start = ep[3 * r - 1] if r else 0
                    glen = ep[3 * r] - start
                    ilen = ep[3 * r + 1] - ep[3 * r]
                    if glen == 0 or plen + glen > max_key or plen + ilen > max_key or ep[3 * r + 2] - ep[3 * r + 1] != 1:
                        rc = -3
                        break
                    rows[r] = <uint32_t>r
                # guids in key order: the rows whose guid came before (repeats) or comes again
                # later (superseded) are marked, so that without repeats, the common case, no later
                # loop reads a row's marks or uid at random: row r's uid is next_uid + r
                if rc == 0:
                    rc = sort_values(fp, ep, 0, keys, rows, n)
                if rc == 0:
                    for k in range(1, n):
                        if keys[k] & SAME_AS_BEFORE:
                            marks[rows[k - 1]] |= ROW_SUPERSEDED
                            marks[rows[k]] |= ROW_REPEAT
                            repeats += 1
                    nd = n - repeats
                    if <uint64_t>next_uid + nd > LAYOUT_UNKNOWN:
                        rc = -4
                if rc == 0 and repeats:
                    k = 0
                    for r in range(n):                  # uids in row order of the guids' first rows
                        if not marks[r] & ROW_REPEAT:
                            uid_of_row[r] = <uint32_t>(next_uid + k)
                            k += 1
                if rc == 0:
                    rc = mdb_cursor_open(self.txn, guid_dbi, &cur)
                if rc == 0:
                    put_flags = MDB_APPEND
                    for k in range(n):
                        if k % GATHER_ROWS == 0:
                            gather_values(fp, keys, k, n, max_key, chunk, chunk_at)
                        if repeats and k + AHEAD < n:
                            prefetch(&uid_of_row[rows[k + AHEAD]])
                        r = rows[k]
                        if not keys[k] & SAME_AS_BEFORE:        # the guid's first row
                            uid = uid_of_row[r] if repeats else <uint32_t>(next_uid + r)
                            glen = pack_guid(keybuf + plen, chunk + chunk_at[k % GATHER_ROWS], keys[k] & VALUE_LEN)
                            rc = put_uid_key(cur, keybuf, plen + glen, uid, &put_flags)
                            if rc:
                                break
                        if repeats and (k + 1 == n or not keys[k + 1] & SAME_AS_BEFORE):    # its last
                            uid_of_row[r] = uid
                            last_of_uid[uid - next_uid] = <uint32_t>r
                    mdb_cursor_close(cur)
                # identities: the last row naming each one keeps it if that row is its guid's last
                if rc == 0:
                    for r in range(n):
                        if ep[3 * r + 1] > ep[3 * r]:
                            rows[m] = <uint32_t>r
                            m += 1
                    rc = sort_values(fp, ep, 1, keys, rows, m)
                if rc == 0:
                    rc = mdb_cursor_open(self.txn, ident_dbi, &cur)
                if rc == 0:
                    put_flags = MDB_APPEND
                    for k in range(m):
                        if k % GATHER_ROWS == 0:
                            gather_values(fp, keys, k, m, max_key, chunk, chunk_at)
                        if repeats and k + AHEAD < m:
                            prefetch(&marks[rows[k + AHEAD]])
                        r = rows[k]
                        if (k + 1 < m and keys[k + 1] & SAME_AS_BEFORE) or (repeats and marks[r] & ROW_SUPERSEDED):
                            marks[r] |= ROW_IDENT_DROPPED       # a later row names it, or moves the guid on
                            continue
                        ilen = keys[k] & VALUE_LEN
                        memcpy(keybuf + plen, chunk + chunk_at[k % GATHER_ROWS], ilen)
                        rc = put_uid_key(cur, keybuf, plen + ilen,
                                         uid_of_row[r] if repeats else <uint32_t>(next_uid + r), &put_flags)
                        if rc:
                            break
                    mdb_cursor_close(cur)
                # profile records in uid order, each its guid's last row
                if rc == 0:
                    rc = blocks_open(&blocks, self.txn, profile_dbi, pp, plen, next_uid)
                    opened = rc == 0
                if rc == 0:
                    for k in range(nd):
                        if repeats and k + 2 * AHEAD < nd:
                            i = 3 * <size_t>last_of_uid[k + 2 * AHEAD]
                            prefetch(&ep[i - 1] if i else &ep[0])
                        if repeats and k + AHEAD < nd:
                            i = 3 * <size_t>last_of_uid[k + AHEAD]
                            prefetch(&fp[ep[i - 1] if i else 0])
                            prefetch(&marks[last_of_uid[k + AHEAD]])
                        r = last_of_uid[k] if repeats else k
                        start = ep[3 * r - 1] if r else 0
                        glen = ep[3 * r] - start
                        ilen = 0 if marks[r] & ROW_IDENT_DROPPED else ep[3 * r + 1] - ep[3 * r]
                        bits = fp[ep[3 * r + 1]]
                        bits_of_uid[k] = bits
                        rc = blocks_add(&blocks, <uint32_t>(next_uid + k), bits, fp + start, glen, fp + ep[3 * r], ilen)
                        if rc:
                            break
                if opened:
                    rc = blocks_close(&blocks, rc)
            if rc == -1:
                raise MemoryError()
            if rc == -3:
                raise ValueError("empty guid, key too long, or a channels value that is not one bits byte")
            if rc == -4:
                raise StoreError("no uids left")
            if rc == -5:
                raise StoreError("profile records out of uid order")
            check(rc)
            memset(counts, 0, sizeof(counts))
            for k in range(nd):
                for j in range(8):
                    counts[j] += (bits_of_uid[k] >> j) & 1
            adds = []
            for j in range(8):
                out = PyBytes_FromStringAndSize(NULL, counts[j] * 4)
                fill = <uint32_t *>PyBytes_AS_STRING(out)
                i = 0
                if counts[j]:
                    for k in range(nd):
                        if (bits_of_uid[k] >> j) & 1:
                            fill[i] = <uint32_t>(next_uid + k)
                            i += 1
                adds.append(out)
            return adds, next_uid + nd, nd
        finally:
            free(keys)
            free(rows)
            free(uid_of_row)
            free(last_of_uid)
            free(marks)
            free(chunk)


cdef struct Blocks:
    # layout.py's profile blocks, written in uid order: the block being built, then put (put_appending)
    MDB_cursor *cur
    uint8_t key[KEY_ROOM]                           # the account prefix, then the block number
    size_t plen
    uint32_t block                                  # the block in buf (LAYOUT_UNKNOWN: none yet)
    uint32_t slots                                  # its slots so far
    uint32_t stored_below                           # blocks with a uid below this may be stored already
    Buf buf
    unsigned int flags


cdef int blocks_open(Blocks *b, MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, size_t plen,
                     uint32_t first_new) noexcept nogil:
    """Write blocks of new profiles, uids from first_new on: only first_new's block can be stored."""
    memset(b, 0, sizeof(Blocks))
    memcpy(b.key, prefix, plen)
    b.plen = plen
    b.block = LAYOUT_UNKNOWN
    b.stored_below = first_new
    b.flags = MDB_APPEND
    return mdb_cursor_open(txn, dbi, &b.cur)


cdef int blocks_flush(Blocks *b) noexcept nogil:
    cdef MDB_val kv, dv
    if b.block == LAYOUT_UNKNOWN:
        return 0
    put_profile_block(b.key + b.plen, b.block)
    kv.mv_size = b.plen + LAYOUT_PROFILE_BLOCK_WIDTH
    kv.mv_data = b.key
    dv.mv_size = b.buf.len
    dv.mv_data = b.buf.data
    return put_appending(b.cur, &kv, &dv, &b.flags)


cdef int blocks_close(Blocks *b, int rc) noexcept nogil:
    """Put the last block (if rc is 0) and let go; the first error."""
    if rc == 0:
        rc = blocks_flush(b)
    mdb_cursor_close(b.cur)
    free(b.buf.data)
    return rc


cdef int blocks_add(Blocks *b, uint32_t uid, uint8_t bits, const uint8_t *guid, size_t glen,
                    const uint8_t *ident, size_t ilen) noexcept nogil:
    """Add uid's profile record (layout.py: bits, guid length, guid, identity; or for a guid of 32 hex
    digits, bits | PROFILE_HEX_GUID, its 16 bytes, identity) to its block; uids ascend. 0, -1 (out
    of memory), -3 (a guid too long), -5 (a uid not past the last one) or an LMDB error."""
    cdef uint8_t packed[LAYOUT_HEX_GUID_DIGITS + 1]    # pack_guid's output: the mark, then 16 bytes
    cdef uint8_t head[LAYOUT_PROFILE_HEAD + 2]
    cdef uint32_t block = uid >> LAYOUT_PROFILE_BLOCK_BITS, slot = uid & ((1 << LAYOUT_PROFILE_BLOCK_BITS) - 1)
    cdef bint hex_guid = glen == LAYOUT_HEX_GUID_DIGITS and pack_guid(packed, guid, glen) < glen
    cdef size_t size = (LAYOUT_PROFILE_HEX_HEAD if hex_guid else LAYOUT_PROFILE_HEAD + glen) + ilen
    cdef MDB_val kv, dv
    cdef int rc
    if glen >> (8 * LAYOUT_PROFILE_GUID_LEN_WIDTH) or size >> (8 * LAYOUT_PROFILE_SLOT_LEN_WIDTH):
        return -3
    if block != b.block:
        if b.block != LAYOUT_UNKNOWN and block < b.block:
            return -5
        rc = blocks_flush(b)
        if rc:
            return rc
        b.block, b.slots, b.buf.len = block, 0, 0
        if <uint64_t>block << LAYOUT_PROFILE_BLOCK_BITS < b.stored_below:      # its first slots may be stored
            put_profile_block(b.key + b.plen, block)
            kv.mv_size = b.plen + LAYOUT_PROFILE_BLOCK_WIDTH
            kv.mv_data = b.key
            rc = mdb_cursor_get(b.cur, &kv, &dv, MDB_SET_KEY)
            if rc == 0:
                b.slots = block_slots(<const uint8_t *>dv.mv_data, dv.mv_size)
                if b.slots == LAYOUT_UNKNOWN or buf_put(&b.buf, <const char *>dv.mv_data, dv.mv_size):
                    return -1 if b.slots != LAYOUT_UNKNOWN else MDB_CORRUPTED
            elif rc != MDB_NOTFOUND:
                return rc
    if slot < b.slots:
        return -5
    while b.slots < slot:                           # no profile there (its row is written later, or never)
        if buf_put(&b.buf, "\0", 1):
            return -1
        b.slots += 1
    if size < LAYOUT_PROFILE_SLOT_LONG:
        head[0] = <uint8_t>size
        rc = buf_put(&b.buf, <const char *>head, 1)
    else:
        head[0] = LAYOUT_PROFILE_SLOT_LONG
        put_profile_slot_len(head + 1, <uint16_t>size)
        rc = buf_put(&b.buf, <const char *>head, 1 + LAYOUT_PROFILE_SLOT_LEN_WIDTH)
    if hex_guid:
        put_profile_bits(head + LAYOUT_PROFILE_BITS_AT, bits | LAYOUT_PROFILE_HEX_GUID)
        rc = rc or buf_put(&b.buf, <const char *>head, LAYOUT_PROFILE_BITS_WIDTH) \
            or buf_put(&b.buf, <const char *>packed + 1, LAYOUT_PROFILE_HEX_HEAD - LAYOUT_PROFILE_BITS_WIDTH)
    else:
        put_profile_bits(head + LAYOUT_PROFILE_BITS_AT, bits)
        put_profile_guid_len(head + LAYOUT_PROFILE_GUID_LEN_AT, <uint16_t>glen)
        rc = rc or buf_put(&b.buf, <const char *>head, LAYOUT_PROFILE_HEAD) or buf_put(&b.buf, <const char *>guid, glen)
    if rc or (ilen and buf_put(&b.buf, <const char *>ident, ilen)):
        return -1
    b.slots += 1
    return 0


cdef inline size_t slot_size(const uint8_t *blk, size_t size, size_t *at) noexcept nogil:
    """The length of the slot at blk[at[0]:] of a profile block, at[0] moved past its length byte(s);
    SLOT_BAD if the block ends before the slot does."""
    cdef size_t n
    if at[0] >= size:
        return SLOT_BAD
    n = blk[at[0]]
    at[0] += 1
    if n == LAYOUT_PROFILE_SLOT_LONG:
        if at[0] + LAYOUT_PROFILE_SLOT_LEN_WIDTH > size:
            return SLOT_BAD
        n = get_profile_slot_len(blk + at[0])
        at[0] += LAYOUT_PROFILE_SLOT_LEN_WIDTH
    return n if at[0] + n <= size else SLOT_BAD


cdef uint32_t block_slots(const uint8_t *blk, size_t size) noexcept nogil:
    """How many slots a profile block holds; LAYOUT_UNKNOWN if it is not one."""
    cdef size_t at = 0, n
    cdef uint32_t slots = 0
    while at < size:
        n = slot_size(blk, size, &at)
        if n == SLOT_BAD or slots == 1 << LAYOUT_PROFILE_BLOCK_BITS:
            return LAYOUT_UNKNOWN
        at += n
        slots += 1
    return slots


cdef int put_appending(MDB_cursor *cur, MDB_val *kv, MDB_val *dv, unsigned int *flags) noexcept nogil:
    """mdb_cursor_put with flags, MDB_APPEND among them until a key is not past the last stored one
    (another account's keys follow): then without it, for this put and the next."""
    cdef size_t size = dv.mv_size                   # a refused put may have changed it
    cdef int rc = mdb_cursor_put(cur, kv, dv, flags[0])
    if rc == MDB_KEYEXIST and flags[0] & MDB_APPEND:
        flags[0] &= ~MDB_APPEND
        dv.mv_size = size
        rc = mdb_cursor_put(cur, kv, dv, flags[0])
    return rc


cdef int put_uid_key(MDB_cursor *cur, uint8_t *key, size_t klen, uint32_t uid,
                     unsigned int *flags) noexcept nogil:
    """key -> uid (layout.UID), appending while it can (put_appending)."""
    cdef uint8_t val[LAYOUT_UID_WIDTH]
    cdef MDB_val kv, dv
    put_uid(val, uid)
    kv.mv_size = klen
    kv.mv_data = key
    dv.mv_size = LAYOUT_UID_WIDTH
    dv.mv_data = val
    return put_appending(cur, &kv, &dv, flags)


cdef inline uint64_t row_sort_key(const uint8_t *kinds, const uint8_t *fp, const uint64_t *ep, size_t nvals,
                                  size_t col, size_t r) noexcept nogil:
    """resolve's sort key of row r (keyorder.sort_key): the kind in the top bit (identities after
    guids), then the value's first bytes, big-endian."""
    cdef size_t i = r * nvals + col
    cdef size_t start = ep[i - 1] if i else 0
    return (sort_key(fp + start, ep[i] - start) >> 1) | ((<uint64_t>(kinds[r] == 105)) << 63)


cdef inline int bytes_cmp(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) noexcept nogil:
    """LMDB's default order of keys: their bytes, then their lengths."""
    cdef int c = memcmp(a, b, la if la < lb else lb)
    if c:
        return c
    return <int>(la > lb) - <int>(la < lb)


cdef inline int value_cmp(const uint8_t *fp, const uint64_t *ep, size_t a, size_t b) noexcept nogil:
    """LMDB's order of values a and b (indexes into ends)."""
    cdef size_t sa = ep[a - 1] if a else 0
    cdef size_t sb = ep[b - 1] if b else 0
    return bytes_cmp(fp + sa, ep[a] - sa, fp + sb, ep[b] - sb)


cdef struct Seek:
    MDB_cursor *cur
    MDB_val key, val                                # the cursor's entry: the least key >= the last target
    uint8_t last[KEY_ROOM]                          # the last target
    size_t last_len
    bint placed                                     # key, val and last hold
    bint at_end                                     # no key >= the last target
    bint hit                                        # the cursor is on the last target itself
    size_t walk                                     # MDB_NEXT steps to try before a search


cdef size_t walk_steps(size_t entries, size_t targets) noexcept nogil:
    """How far seek steps on before it searches, for `targets` sorted keys among `entries`: twice the
    mean gap, where that is short (an LMDB search costs ~8 key compares in a leaf, more in branches);
    none where the keys are sparse (an upload's first, small batches)."""
    cdef size_t gap = entries // targets if targets else entries
    return 2 * gap + 2 if gap <= WALK_MAX_GAP else 0


cdef int seek(Seek *s, const uint8_t *key, size_t klen) noexcept nogil:
    """Put s.cur on the least key >= key (klen <= KEY_ROOM): from where it is, by MDB_NEXT, when key
    is at or past the last target and within s.walk entries; else by an LMDB search. s.hit: whether
    it is key itself. 0 or an LMDB error (no key >= key is no error)."""
    cdef size_t steps = 0
    cdef int rc, c
    cdef bint onward = s.placed and bytes_cmp(key, klen, s.last, s.last_len) >= 0
    s.hit = 0
    memcpy(s.last, key, klen)       # compared as stored: a batch's order is its values', not always the keys'
    s.last_len = klen
    if onward:
        if s.at_end:
            return 0
        c = bytes_cmp(<const uint8_t *>s.key.mv_data, s.key.mv_size, key, klen)
        while c < 0 and steps < s.walk:
            rc = mdb_cursor_get(s.cur, &s.key, &s.val, MDB_NEXT)
            if rc:
                s.placed = s.at_end = rc == MDB_NOTFOUND
                return 0 if s.at_end else rc
            c = bytes_cmp(<const uint8_t *>s.key.mv_data, s.key.mv_size, key, klen)
            steps += 1
        if c >= 0:
            s.hit = c == 0
            return 0
    s.key.mv_data = <void *>key
    s.key.mv_size = klen
    rc = mdb_cursor_get(s.cur, &s.key, &s.val, MDB_SET_RANGE)
    s.placed = rc == 0 or rc == MDB_NOTFOUND
    s.at_end = rc == MDB_NOTFOUND
    if rc:
        return 0 if s.at_end else rc
    s.hit = bytes_cmp(<const uint8_t *>s.key.mv_data, s.key.mv_size, key, klen) == 0
    return 0


cdef inline bint same_value(const uint8_t *fp, const uint64_t *refs, size_t a, size_t b, size_t n) noexcept nogil:
    """Whether refs[a] and refs[b] ((offset << 16) | length, from sort_values) are equal values."""
    if b + AHEAD < n:
        prefetch(&fp[refs[b + AHEAD] >> 16])
    return (refs[a] & VALUE_LEN) == (refs[b] & VALUE_LEN) and \
        memcmp(fp + (refs[a] >> 16), fp + (refs[b] >> 16), refs[a] & VALUE_LEN) == 0


cdef void gather_values(const uint8_t *fp, const uint64_t *refs, size_t k0, size_t n, size_t max_len,
                        uint8_t *out, size_t *at) noexcept nogil:
    """Copy the values of refs[k0:k0 + GATHER_ROWS] ((offset << 16) | length, VALUE_LEN bits) one after
    another into out, at[j] where value k0 + j starts (one past max_len bytes: not copied). Their bytes
    are scattered over the batch: fetched here, in a loop that does nothing else, many misses overlap;
    fetched between LMDB calls, each stalled its loop (84% of load_new_profiles' own time went to one
    prefetch at 40M rows)."""
    cdef size_t k, j = 0, pos = 0, vlen, end = k0 + GATHER_ROWS if k0 + GATHER_ROWS < n else n
    for k in range(k0, end):
        if k + GATHER_AHEAD < end:
            prefetch(&fp[refs[k + GATHER_AHEAD] >> 16])
        at[j] = pos
        vlen = refs[k] & VALUE_LEN
        if vlen <= max_len:
            memcpy(out + pos, fp + (refs[k] >> 16), vlen)
            pos += vlen
        j += 1


cdef void scatter_uids(uint32_t *uids, const uint32_t *rows, size_t k, const uint32_t *found) noexcept nogil:
    """uids[rows[j]] = found[j % GATHER_ROWS] for the GATHER_ROWS (or fewer) positions j before k that
    found holds: the look-ups' results, in key order, back into row order."""
    cdef size_t j, k0 = (k - 1) // GATHER_ROWS * GATHER_ROWS if k else 0
    for j in range(k0, k):
        uids[rows[j]] = found[j - k0]


cdef int sort_run(const uint8_t *fp, const uint64_t *ep, size_t col, uint64_t *keys, uint32_t *rows,
                  size_t m, size_t depth) noexcept nogil:
    """Sort rows[:m], whose values (col of 3 per row) share their first `depth` bytes zero-padded,
    into LMDB's order, stably: a radix sort by the next 8 bytes, then each run that shares them
    the same way, deeper; a run whose values all end above depth is ordered by length (they are
    prefixes of each other). Short runs: insertion sort. -1 when out of memory."""
    cdef size_t k, j, e, start, vlen, longest = 0
    cdef uint32_t row
    cdef int rc
    if m < 2:
        return 0
    if m < RUN_SMALL:
        for k in range(1, m):
            row = rows[k]
            j = k
            while j and value_cmp(fp, ep, 3 * <size_t>rows[j - 1] + col, 3 * <size_t>row + col) > 0:
                rows[j] = rows[j - 1]
                j -= 1
            rows[j] = row
        return 0
    for k in range(m):
        j = 3 * <size_t>rows[k] + col
        start = ep[j - 1] if j else 0
        vlen = ep[j] - start
        longest = vlen if vlen > longest else longest
        keys[k] = sort_key(fp + start + depth, vlen - depth) if vlen > depth else 0
    if longest <= depth:
        for k in range(m):
            j = 3 * <size_t>rows[k] + col
            keys[k] = ep[j] - (ep[j - 1] if j else 0)
        return radix_sort(keys, rows, m)
    rc = radix_sort(keys, rows, m)
    j = 0
    while rc == 0 and j < m:
        e = j + 1
        while e < m and keys[e] == keys[j]:
            e += 1
        if e - j > 1:
            rc = sort_run(fp, ep, col, keys + j, rows + j, e - j, depth + 8)
        j = e
    return rc


cdef int sort_values(const uint8_t *fp, const uint64_t *ep, size_t col, uint64_t *keys, uint32_t *rows,
                     size_t m) noexcept nogil:
    """rows[:m] into LMDB's order of their values in col (of 3 per row), stably (equal values keep
    row order); then keys[k] = (offset << 16) | length of rows[k]'s value, with SAME_AS_BEFORE where
    it equals the value before. -1 when out of memory."""
    cdef size_t k, j
    cdef int rc = sort_run(fp, ep, col, keys, rows, m, 0)
    if rc:
        return rc
    # gathered in one pass of loads that do not wait on each other (see resolve)
    for k in range(m):
        if k + AHEAD < m:
            j = 3 * <size_t>rows[k + AHEAD] + col
            prefetch(&ep[j - 1] if j else &ep[0])
        j = 3 * <size_t>rows[k] + col
        keys[k] = ((ep[j - 1] if j else 0) << 16) | (ep[j] - (ep[j - 1] if j else 0))
    for k in range(1, m):
        if same_value(fp, keys, k - 1, k, m):
            keys[k] |= SAME_AS_BEFORE
    return 0


cdef struct KeyRef:
    uint64_t start                                  # the value's offset in fields
    uint32_t size
    uint32_t uid


cdef int put_uids_sorted(MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, size_t plen,
                         const uint8_t *fields, const uint64_t *ends, size_t nvals, size_t col, bint guids,
                         const uint32_t *rows, const uint32_t *uids, size_t m,
                         uint64_t *keys, uint32_t *order) noexcept nogil:
    """prefix + value col of rows[k] -> uids[k] (layout.UID), for k < m, in key order: sorted puts
    find the next key's page under the cursor instead of walking down from the root. guids: the
    values are guids, stored as layout.pack_guid makes them."""
    cdef uint8_t keybuf[520]
    cdef uint8_t val[LAYOUT_UID_WIDTH]
    cdef size_t k, j, i, start, flen
    cdef uint32_t uid
    cdef MDB_cursor *cur
    cdef MDB_val kv, dv
    cdef int rc
    cdef KeyRef *refs = <KeyRef *>malloc(m * sizeof(KeyRef))
    if refs == NULL:
        return -1
    for k in range(m):                              # in row order: sequential reads
        i = rows[k] * nvals + col
        start = ends[i - 1] if i else 0
        flen = ends[i] - start
        refs[k].start = start
        refs[k].size = <uint32_t>flen
        refs[k].uid = uids[k]
        keys[k] = sort_key(fields + start, flen)
        order[k] = <uint32_t>k
    rc = radix_sort(keys, order, m)
    if rc == 0:
        rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        free(refs)
        return rc
    memcpy(keybuf, prefix, plen)
    kv.mv_data = keybuf
    dv.mv_data = val
    dv.mv_size = LAYOUT_UID_WIDTH
    for j in range(m):
        # in key order the refs and key bytes are scattered: fetch them ahead, as resolve does
        if j + 2 * AHEAD < m:
            prefetch(&refs[order[j + 2 * AHEAD]])
        if j + AHEAD < m:
            prefetch(&fields[refs[order[j + AHEAD]].start])
        k = order[j]
        flen = refs[k].size
        if guids:
            flen = pack_guid(keybuf + plen, fields + refs[k].start, flen)
        else:
            memcpy(keybuf + plen, fields + refs[k].start, flen)
        kv.mv_size = plen + flen
        uid = refs[k].uid
        put_uid(val, uid)
        rc = mdb_cursor_put(cur, &kv, &dv, 0)
        if rc:
            break
    mdb_cursor_close(cur)
    free(refs)
    return rc
