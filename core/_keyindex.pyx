# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""An in-memory hash from keys to uint32 ids; the hot loop looks up a batch of keys.

LMDB's B-tree costs about 0.8 us for a random key in a big table: the binary search in each leaf page
misses the cache again and again. Here a key costs one 16-byte slot and one compare, and a batch's
look-ups overlap their cache misses (prefetching a few keys ahead). The table is built once from
newline-ended keys and never changed, so any number of threads may read it. Batches come newline-ended
(`KeyIndex.lookup`, membership checks) or as a parsed upload batch (`resolve_rows`); both end in the
one loop, `probe`. `_keyindex_py.py` is the pure-Python twin; `keyindex.py` is the API.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

import os

from _batch cimport prefetch, hash_bytes

include "_layout.pxi"      # LAYOUT_UNKNOWN: no uid (generated from layout.py)
cdef enum:
    AHEAD = 8           # keys between hashing one (and fetching its slot) and reading the slot
    BLOCK = 65536       # keys probed per pass: bounds the scratch memory of a 4M-row batch

cdef inline void trim(const uint8_t **p, size_t *n) noexcept nogil:
    """Spaces and tabs around a key, as the CSV parser trims them."""
    while n[0] and (p[0][0] == 32 or p[0][0] == 9):
        p[0] += 1
        n[0] -= 1
    while n[0] and (p[0][n[0] - 1] == 32 or p[0][n[0] - 1] == 9):
        n[0] -= 1


cdef struct Slot:
    uint64_t where      # 0: empty; else (start of the key in data + 1) << 16 | its length
    uint32_t tag        # the hash's top 32 bits: most mismatches never touch the key bytes
    uint32_t id


cdef struct Table:
    Slot *slots
    uint64_t mask
    uint64_t seed
    const uint8_t *data     # the keys' bytes


cdef inline Slot *find(const Table *t, uint64_t h, const uint8_t *key, size_t n) noexcept nogil:
    """The slot holding key, or the empty slot where it would go (linear probing)."""
    cdef uint64_t pos = h & t.mask
    cdef uint32_t tag = <uint32_t>(h >> 32)
    cdef Slot *slot
    while True:
        slot = &t.slots[pos]
        if slot.where == 0:
            return slot
        if slot.tag == tag and (slot.where & 0xFFFF) == n and memcmp(t.data + (slot.where >> 16) - 1, key, n) == 0:
            return slot
        pos = (pos + 1) & t.mask


cdef void probe(const Table **tables, const uint8_t *which, const uint8_t **keys, const uint32_t *lens,
                uint64_t *hashes, size_t n, uint32_t *out) noexcept nogil:
    """out[i] = the id of keys[i] (lens[i] bytes) in tables[which[i]], or UNKNOWN. Key i is hashed
    and its slot fetched AHEAD keys before the slot is read and the candidate's bytes fetched, and
    those AHEAD keys before the compare: the cache misses of 2 * AHEAD keys overlap."""
    cdef size_t i, k
    cdef const Table *t
    cdef Slot *slot
    for i in range(n + 2 * AHEAD):
        if i < n:
            t = tables[which[i]]
            hashes[i] = hash_bytes(keys[i], lens[i], t.seed)
            prefetch(&t.slots[hashes[i] & t.mask])
        if AHEAD <= i < n + AHEAD:
            k = i - AHEAD
            t = tables[which[k]]
            slot = &t.slots[hashes[k] & t.mask]
            if slot.where:
                prefetch(t.data + (slot.where >> 16) - 1)
        if i >= 2 * AHEAD:
            k = i - 2 * AHEAD
            slot = find(tables[which[k]], hashes[k], keys[k], lens[k])
            out[k] = slot.id if slot.where else LAYOUT_UNKNOWN


cdef class Keys:
    """n keys to look up, BLOCK at a time: scratch space for a block (where each key starts, its
    length, its table, its hash) and the answers, `out` (native uint32 bytes)."""
    cdef bytes out
    cdef uint32_t *ids
    cdef size_t n, first, m          # the block is keys first .. first + m - 1
    cdef const uint8_t **starts
    cdef uint32_t *lens
    cdef uint8_t *which
    cdef uint64_t *hashes

    def __cinit__(self, size_t n):
        cdef size_t block = n if n < BLOCK else BLOCK
        self.out = PyBytes_FromStringAndSize(NULL, n * 4)
        self.ids = <uint32_t *>PyBytes_AS_STRING(self.out)
        self.n, self.first, self.m = n, 0, 0
        self.starts = <const uint8_t **>malloc(block * sizeof(uint8_t *) + 1)
        self.lens = <uint32_t *>malloc(block * sizeof(uint32_t) + 1)
        self.which = <uint8_t *>calloc(block + 1, 1)
        self.hashes = <uint64_t *>malloc(block * sizeof(uint64_t) + 1)
        if self.starts == NULL or self.lens == NULL or self.which == NULL or self.hashes == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.starts)
        free(self.lens)
        free(self.which)
        free(self.hashes)

    cdef inline bint next_block(self) noexcept nogil:
        """Move on to the next block; false when every key has been looked up."""
        self.first += self.m
        self.m = self.n - self.first if self.n - self.first < BLOCK else BLOCK
        return self.m > 0

    cdef inline void probe(self, const Table **tables) noexcept nogil:
        probe(tables, self.which, self.starts, self.lens, self.hashes, self.m, self.ids + self.first)


cdef class KeyIndex:
    """KeyIndex(keys, ids): keys is bytes of newline-ended keys (no newline inside one, none longer
    than 65535 bytes), ids a uint32 buffer with one id per key. A key named twice keeps its first id."""
    cdef bytes keys                 # owns t.data
    cdef Table t
    cdef readonly size_t count

    def __cinit__(self, bytes keys, const uint32_t[::1] ids):
        cdef const uint8_t *data = <const uint8_t *>PyBytes_AS_STRING(keys)
        cdef size_t size = len(keys), n = ids.shape[0], i, at = 0, end, cap = 16
        cdef size_t lines = keys.count(b"\n")
        cdef uint64_t h
        cdef Slot *slot
        if size and data[size - 1] != 10:
            raise ValueError("every key must end with a newline")
        if lines != n:
            raise ValueError(f"{lines} keys but {n} ids")
        while cap < 2 * n:                   # at most half full: short probe runs
            cap *= 2
        self.keys = keys
        self.count = n
        self.t.data = data
        self.t.mask = cap - 1
        self.t.seed = int.from_bytes(os.urandom(8), "little")
        self.t.slots = <Slot *>calloc(cap, sizeof(Slot))
        if self.t.slots == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                end = at
                while data[end] != 10:
                    end += 1
                if end - at > 0xFFFF:
                    break
                h = hash_bytes(data + at, end - at, self.t.seed)
                slot = find(&self.t, h, data + at, end - at)
                if slot.where == 0:
                    slot.where = ((<uint64_t>at + 1) << 16) | (end - at)
                    slot.tag = <uint32_t>(h >> 32)
                    slot.id = ids[i]
                at = end + 1
        if at < size:
            raise ValueError("a key is longer than 65535 bytes")

    def __dealloc__(self):
        free(self.t.slots)

    @property
    def nbytes(self):
        """Memory held: the keys and the slots."""
        return len(self.keys) + (self.t.mask + 1) * sizeof(Slot)

    def lookup(self, const uint8_t[::1] batch):
        """ids (native uint32 bytes, UNKNOWN where absent) of batch's newline-ended keys, each trimmed
        of spaces and tabs. Membership checks send batches of thousands of keys."""
        cdef size_t size = batch.shape[0], n = 0, i, at = 0, end, klen
        cdef const uint8_t *key
        cdef const Table *table = &self.t
        if size and batch[size - 1] != 10:
            raise ValueError("every key must end with a newline")
        with nogil:
            for i in range(size):
                n += batch[i] == 10
        cdef Keys keys = Keys(n)
        with nogil:
            while keys.next_block():
                for i in range(keys.m):
                    end = at
                    while batch[end] != 10:
                        end += 1
                    key = &batch[at]                # batch[end] is a newline, so at < size
                    klen = end - at
                    trim(&key, &klen)
                    keys.starts[i], keys.lens[i] = key, <uint32_t>klen
                    at = end + 1
                keys.probe(&table)
        return keys.out


def resolve_rows(KeyIndex guids, KeyIndex identities, const uint8_t[::1] kinds, const uint8_t[::1] fields,
                 const uint64_t[::1] ends):
    """uids (native uint32 bytes, UNKNOWN where absent) of a parsed upload batch: row r's value,
    fields[ends[r - 1]:ends[r]], in guids if kinds[r] is "g", else in identities. Replaces
    LMDB's sorted look-up (about 200 ns a row) with about 100 ns and no sort."""
    cdef size_t n = kinds.shape[0], i, r, start
    cdef const Table *tables[2]
    if <size_t>ends.shape[0] != n:
        raise ValueError("one end offset per row")
    tables[0], tables[1] = &guids.t, &identities.t
    cdef Keys keys = Keys(n)
    with nogil:
        while keys.next_block():
            for i in range(keys.m):
                r = keys.first + i
                start = ends[r - 1] if r else 0
                keys.starts[i] = &fields[start] if ends[r] > start else <const uint8_t *>""
                keys.lens[i] = <uint32_t>(ends[r] - start)
                keys.which[i] = kinds[r] != 103
            keys.probe(tables)
    return keys.out
