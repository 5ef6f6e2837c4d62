# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LMDB through liblmdb, owned here and nowhere else in the process (LMDB forbids opening one
environment twice in a process). The hot loop is `Txn.resolve`: a batch of keys, radix-sorted by an
8-byte prefix and looked up in key order with the GIL released. Everything else is a thin wrapper.

`_store_py.py` is the pure-Python twin over py-lmdb with the same API and the same file format.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_env:
        pass
    ctypedef struct MDB_txn:
        pass
    ctypedef struct MDB_cursor:
        pass
    ctypedef unsigned int MDB_dbi
    ctypedef struct MDB_val:
        size_t mv_size
        void *mv_data
    ctypedef enum MDB_cursor_op:
        MDB_GET_CURRENT
        MDB_NEXT
        MDB_SET_KEY
        MDB_SET_RANGE
    int MDB_NOSUBDIR, MDB_RDONLY, MDB_NOTLS, MDB_CREATE, MDB_APPEND
    int MDB_NOTFOUND, MDB_MAP_FULL, MDB_KEYEXIST
    int mdb_env_create(MDB_env **env)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, unsigned int mode)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_set_maxreaders(MDB_env *env, unsigned int readers)
    int mdb_env_get_maxkeysize(MDB_env *env)
    int mdb_reader_check(MDB_env *env, int *dead)
    void mdb_env_close(MDB_env *env)
    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
    int mdb_txn_commit(MDB_txn *txn)
    void mdb_txn_abort(MDB_txn *txn)
    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
    int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
    int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)
    char *mdb_strerror(int err)

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *addr) nogil

from listseg.core._store_py import StoreError, MapFullError, UNKNOWN

cdef uint32_t C_UNKNOWN = 0xFFFFFFFF
cdef enum:
    AHEAD = 16                                      # rows to prefetch ahead in resolve


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

    def begin(self, bint write=False):
        if self.env == NULL:
            raise StoreError("store is closed")
        return Txn(self, write)


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
                const uint8_t[::1] kinds, const uint8_t[::1] fields, const uint64_t[::1] ends):
        """uids (native uint32 bytes, UNKNOWN where absent) of rows (kinds[r], field r) under prefix."""
        cdef size_t n = kinds.shape[0], r, j, start, flen
        cdef size_t plen = len(prefix)
        cdef int max_key = self.store.max_key_size
        cdef int rc = 0
        cdef uint64_t sk
        cdef MDB_val k, v
        cdef uint64_t *keys
        cdef uint32_t *rows
        cdef uint32_t *uids
        cdef char keybuf[1024]
        cdef MDB_cursor *curs[2]
        if ends.shape[0] != n:
            raise ValueError("kinds and ends differ in length")
        self._live()
        out = PyBytes_FromStringAndSize(NULL, n * 4)
        uids = <uint32_t *>PyBytes_AS_STRING(out)
        if n == 0:
            return out
        if plen + 4 > <size_t>max_key:
            raise ValueError("prefix too long")
        memcpy(keybuf, PyBytes_AS_STRING(prefix), plen)
        # cursors, not mdb_get: a positioned cursor skips the root-to-leaf walk when the next key
        # falls in the page it is on, which sorted batches make the common case
        check(mdb_cursor_open(self.txn, guid_dbi, &curs[0]))
        rc = mdb_cursor_open(self.txn, ident_dbi, &curs[1])
        if rc:
            mdb_cursor_close(curs[0])
            check(rc)
        keys = <uint64_t *>malloc(n * sizeof(uint64_t))
        rows = <uint32_t *>malloc(n * sizeof(uint32_t))
        if keys == NULL or rows == NULL:
            free(keys)
            free(rows)
            mdb_cursor_close(curs[0])
            mdb_cursor_close(curs[1])
            raise MemoryError()
        with nogil:
            # sort key: the kind in the top bit, then the key's first bytes, big-endian
            for r in range(n):
                start = ends[r - 1] if r else 0
                flen = ends[r] - start
                sk = 0
                for j in range(8):
                    sk = (sk << 8) | (fields[start + j] if j < flen else 0)
                sk = (sk >> 1) | ((<uint64_t>(kinds[r] == 105)) << 63)
                keys[r] = sk
                rows[r] = <uint32_t>r
            rc = radix_sort(keys, rows, n)
            if rc == 0:
                for j in range(n):
                    # In key order the rows' bytes are scattered over the batch: fetch ahead,
                    # the end offsets 2*AHEAD rows ahead and the key bytes AHEAD rows ahead.
                    if j + 2 * AHEAD < n:
                        prefetch(&ends[rows[j + 2 * AHEAD] - 1] if rows[j + 2 * AHEAD] else &ends[0])
                    if j + AHEAD < n:
                        r = rows[j + AHEAD]
                        prefetch(&fields[ends[r - 1] if r else 0])
                        prefetch(&uids[r])
                    r = rows[j]
                    start = ends[r - 1] if r else 0
                    flen = ends[r] - start
                    uids[r] = C_UNKNOWN
                    if plen + flen > <size_t>max_key or flen == 0:
                        continue
                    memcpy(keybuf + plen, &fields[start], flen)
                    k.mv_size = plen + flen
                    k.mv_data = keybuf
                    rc = mdb_cursor_get(curs[kinds[r] == 105], &k, &v, MDB_SET_KEY)
                    if rc == 0 and v.mv_size == 4:
                        memcpy(&uids[r], v.mv_data, 4)
                    elif rc != 0 and rc != MDB_NOTFOUND:
                        break
                    rc = 0
        free(keys)
        free(rows)
        mdb_cursor_close(curs[0])
        mdb_cursor_close(curs[1])
        if rc == -1:
            raise MemoryError()
        check(rc)
        return out


cdef int radix_sort(uint64_t *keys, uint32_t *rows, size_t n) noexcept nogil:
    """LSD radix sort of (key, row) pairs by key, in place, a byte a pass (256 buckets stay in cache,
    65536 did not: measured 3x slower); passes where every key has the same byte are skipped."""
    cdef uint64_t *k2 = <uint64_t *>malloc(n * sizeof(uint64_t))
    cdef uint32_t *r2 = <uint32_t *>malloc(n * sizeof(uint32_t))
    cdef size_t count[256]
    cdef uint64_t *src_k = keys
    cdef uint32_t *src_r = rows
    cdef uint64_t *dst_k = k2
    cdef uint32_t *dst_r = r2
    cdef uint64_t *tk
    cdef uint32_t *tr
    cdef size_t i, total, c
    cdef int shift, pass_
    cdef unsigned int d
    if k2 == NULL or r2 == NULL:
        free(k2)
        free(r2)
        return -1
    for pass_ in range(8):
        shift = pass_ * 8
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(src_k[i] >> shift) & 0xFF] += 1
        if count[(src_k[0] >> shift) & 0xFF] == n:
            continue                                # every key has this digit: nothing to move
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (src_k[i] >> shift) & 0xFF
            dst_k[count[d]] = src_k[i]
            dst_r[count[d]] = src_r[i]
            count[d] += 1
        tk = src_k; src_k = dst_k; dst_k = tk
        tr = src_r; src_r = dst_r; dst_r = tr
    if src_k != keys:                               # an odd number of passes moved data
        memcpy(keys, src_k, n * sizeof(uint64_t))
        memcpy(rows, src_r, n * sizeof(uint32_t))
    free(k2)
    free(r2)
    return 0
