# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""An in-memory hash from keys to uint32 ids; the hot loop looks up a batch of newline-ended keys.

LMDB's B-tree costs about 0.8 us for a random key in a big table: the binary search in each leaf page
misses the cache again and again. Here a key costs one 16-byte slot and one compare, and a batch's
look-ups overlap their cache misses (prefetching a few keys ahead). The table is built once from
newline-ended keys and never changed, so any number of threads may read it. `_keyindex_py.py` is its
pure-Python twin; `keyindex.py` is the API.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

import os

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *addr) nogil

cdef uint32_t UNKNOWN = 0xFFFFFFFF
cdef enum:
    AHEAD = 8           # keys between hashing one (and fetching its slot) and reading the slot
cdef uint64_t K1 = 0x9E3779B97F4A7C15ULL
cdef uint64_t K2 = 0xC2B2AE3D27D4EB4FULL


cdef inline uint64_t fmix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    return h ^ (h >> 33)


cdef inline uint64_t hash_key(const uint8_t *p, size_t n, uint64_t seed) noexcept nogil:
    """Eight bytes a round, murmur-style; seeded per index so crafted keys cannot pile up."""
    cdef uint64_t h = seed ^ (n * K1)
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ (w * K2)) * K1
        h = (h << 31) | (h >> 33)
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    return fmix(h ^ (w * K2))


cdef inline void trim(const uint8_t **p, size_t *n) noexcept nogil:
    """Spaces and tabs around a key, as the CSV parser trims them."""
    while n[0] and (p[0][0] == 32 or p[0][0] == 9):
        p[0] += 1
        n[0] -= 1
    while n[0] and (p[0][n[0] - 1] == 32 or p[0][n[0] - 1] == 9):
        n[0] -= 1


cdef struct Slot:
    uint64_t where      # 0: empty; else (start of the key in keys + 1) << 16 | its length
    uint32_t tag        # the hash's top 32 bits: most mismatches never touch the key bytes
    uint32_t id


cdef class KeyIndex:
    """KeyIndex(keys, ids): keys is bytes of newline-ended keys (no newline inside one, none longer
    than 65535 bytes), ids a uint32 buffer with one id per key. A key named twice keeps its first id."""
    cdef bytes keys
    cdef const uint8_t *data     # keys' bytes, alive as long as keys
    cdef Slot *slots
    cdef uint64_t mask
    cdef uint64_t seed
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
        self.data = data
        self.count = n
        self.mask = cap - 1
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.slots = <Slot *>calloc(cap, sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                end = at
                while data[end] != 10:
                    end += 1
                if end - at > 0xFFFF:
                    break
                h = hash_key(data + at, end - at, self.seed)
                slot = self._find(h, data + at, end - at)
                if slot.where == 0:
                    slot.where = ((<uint64_t>at + 1) << 16) | (end - at)
                    slot.tag = <uint32_t>(h >> 32)
                    slot.id = ids[i]
                at = end + 1
        if at < size:
            raise ValueError("a key is longer than 65535 bytes")

    def __dealloc__(self):
        free(self.slots)

    cdef inline Slot *_find(self, uint64_t h, const uint8_t *key, size_t n) noexcept nogil:
        """The slot holding key, or the empty slot where it would go (linear probing)."""
        cdef uint64_t pos = h & self.mask
        cdef uint32_t tag = <uint32_t>(h >> 32)
        cdef Slot *slot
        while True:
            slot = &self.slots[pos]
            if slot.where == 0:
                return slot
            if slot.tag == tag and (slot.where & 0xFFFF) == n and \
                    memcmp(self.data + (slot.where >> 16) - 1, key, n) == 0:
                return slot
            pos = (pos + 1) & self.mask

    @property
    def nbytes(self):
        """Memory held: the keys and the slots."""
        return len(self.keys) + (self.mask + 1) * sizeof(Slot)

    def lookup(self, const uint8_t[::1] batch):
        """ids (native uint32 bytes, UNKNOWN where absent) of batch's newline-ended keys, each trimmed
        of spaces and tabs. The hot loop: membership checks send batches of thousands of keys.

        Each key's hash is taken and its slot fetched AHEAD keys before the slot is read, and the
        candidate's bytes are fetched AHEAD keys before the compare, so misses overlap."""
        cdef size_t size = batch.shape[0], n = 0, i, at = 0, end, klen
        cdef const uint8_t *key
        cdef uint64_t h
        cdef uint64_t *hashes
        cdef const uint8_t **starts
        cdef uint32_t *lens
        cdef uint32_t *out_ids
        cdef Slot *slot
        if size and batch[size - 1] != 10:
            raise ValueError("every key must end with a newline")
        for i in range(size):
            n += batch[i] == 10
        out = PyBytes_FromStringAndSize(NULL, n * 4)
        out_ids = <uint32_t *>PyBytes_AS_STRING(out)
        hashes = <uint64_t *>malloc(n * sizeof(uint64_t) + 1)
        starts = <const uint8_t **>malloc(n * sizeof(uint8_t *) + 1)
        lens = <uint32_t *>malloc(n * sizeof(uint32_t) + 1)
        if hashes == NULL or starts == NULL or lens == NULL:
            free(hashes)
            free(starts)
            free(lens)
            raise MemoryError()
        with nogil:
            for i in range(n + 2 * AHEAD):
                if i < n:                               # hash key i, fetch its slot
                    end = at
                    while batch[end] != 10:
                        end += 1
                    key = &batch[at]                    # batch[end] is a newline, so at < size
                    klen = end - at
                    trim(&key, &klen)
                    h = hash_key(key, klen, self.seed)
                    hashes[i], starts[i], lens[i] = h, key, <uint32_t>klen
                    prefetch(&self.slots[h & self.mask])
                    at = end + 1
                if AHEAD <= i < n + AHEAD:              # read key i - AHEAD's slot, fetch its bytes
                    slot = &self.slots[hashes[i - AHEAD] & self.mask]
                    if slot.where:
                        prefetch(self.data + (slot.where >> 16) - 1)
                if i >= 2 * AHEAD:                      # look key i - 2 * AHEAD up
                    slot = self._find(hashes[i - 2 * AHEAD], starts[i - 2 * AHEAD], lens[i - 2 * AHEAD])
                    out_ids[i - 2 * AHEAD] = slot.id if slot.where else UNKNOWN
        free(hashes)
        free(starts)
        free(lens)
        return out
