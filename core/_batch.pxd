# cython: language_level=3
"""The batch helpers every extension's hot loop shares, each defined here once: a growable buffer,
prefetch, the hash of a short string, a radix sort of (key, row) pairs and a grouping table.

Inline functions and types only: a cimport costs no import at run time and the C compiler sees
through every call, as when each extension had its own copy.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset, memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *addr) nogil

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)
    int MADV_HUGEPAGE


cdef enum:
    HUGE_PAGE = 1 << 21


cdef inline void huge_pages(void *p, size_t n) noexcept nogil:
    """Ask for 2 MiB pages under the whole 2 MiB spans of [p, p + n), before it is first written: a
    batch's arrays are read at random (resolve's gather and scatter), where 4 KiB pages miss the TLB
    at nearly every row. Advice only: where the kernel has none to give, 4 KiB pages it is."""
    cdef size_t start = (<size_t>p + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1)
    cdef size_t end = (<size_t>p + n) & ~(<size_t>HUGE_PAGE - 1)
    if end > start:
        madvise(<void *>start, end - start, MADV_HUGEPAGE)


# -- the buffer ---------------------------------------------------------------------------------------

cdef struct Buf:
    char *data
    size_t len
    size_t cap


cdef inline int buf_reserve(Buf *b, size_t extra) noexcept nogil:
    """Room for extra more bytes, doubling as needed (from 4 KiB); -1 when out of memory."""
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef char *data
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    data = <char *>realloc(b.data, cap)
    if data == NULL:
        return -1
    b.data = data
    b.cap = cap
    return 0


cdef inline int buf_put(Buf *b, const char *src, size_t n) noexcept nogil:
    """Append n bytes; -1 when out of memory (the buffer is unchanged)."""
    if b.len + n > b.cap and buf_reserve(b, n):
        return -1
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef inline int buf_add(Buf *b, const char *src, size_t n) except -1 nogil:
    """buf_put for loops that let MemoryError propagate (the parser's)."""
    if b.len + n > b.cap and buf_reserve(b, n):
        with gil:
            raise MemoryError()
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef inline bytes buf_bytes(const Buf *b):
    """b's bytes as a bytes object, copied without the GIL: a 4M-row batch is ~150 MB, and a copy
    that held the GIL kept the server's other calls (IsMember) waiting for tens of milliseconds."""
    out = PyBytes_FromStringAndSize(NULL, b.len)
    cdef char *dst = PyBytes_AS_STRING(out)
    with nogil:
        huge_pages(dst, b.len)
        memcpy(dst, b.data, b.len)
    return out


# -- the hash -----------------------------------------------------------------------------------------

cdef inline uint64_t fmix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    return h ^ (h >> 33)


cdef inline uint64_t hash_bytes(const uint8_t *p, size_t n, uint64_t seed) noexcept nogil:
    """64 bits of n bytes, eight a round, murmur-style; callers seed it at random so crafted keys
    cannot pile up in one probe run. Collisions only cost a memcmp."""
    cdef uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ULL)
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ (w * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL
        h = (h << 31) | (h >> 33)
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    return fmix(h ^ (w * 0xC2B2AE3D27D4EB4FULL))


# -- the radix sort -----------------------------------------------------------------------------------

cdef inline uint64_t sort_key(const uint8_t *p, size_t n) noexcept nogil:
    """The first 8 bytes of a value, big-endian, zero-padded: their order is the bytes' order."""
    cdef uint64_t sk = 0
    cdef size_t j
    for j in range(8):
        sk = (sk << 8) | (p[j] if j < n else 0)
    return sk


cdef inline int radix_sort(uint64_t *keys, uint32_t *rows, size_t n) noexcept nogil:
    """LSD radix sort of (key, row) pairs by key, in place, a byte a pass (256 buckets stay in cache,
    65536 did not: measured 3x slower); passes where every key has the same byte are skipped.
    -1 when out of memory."""
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


# -- the grouping table -------------------------------------------------------------------------------

cdef inline int group_rows(const uint8_t *fields, const uint64_t *ends, size_t n, size_t nvals, size_t col,
                           bint skip_empty, uint32_t empty_gid, uint64_t seed,
                           uint32_t *gids, uint32_t *firsts, size_t *ngroups) noexcept nogil:
    """gids[r]: the group of row r's value in column col (fields[ends[i - 1]:ends[i]], i = r * nvals +
    col), groups numbered in order of first appearance (empty_gid for empty values if skip_empty);
    firsts[g]: the group's first row. -1: out of memory. Open addressing on hash_bytes(seed); a
    matching hash is confirmed with memcmp, so the seed changes the speed, never the answer."""
    cdef size_t cap = 16, mask, r, i, start, flen, s, gi, gstart, ng = 0
    cdef uint32_t g
    cdef uint64_t h
    cdef uint32_t *slots
    cdef uint64_t *hashes
    while cap < 2 * n:
        cap <<= 1
    mask = cap - 1
    slots = <uint32_t *>calloc(cap, sizeof(uint32_t))          # group + 1; 0 = free
    hashes = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
    if slots == NULL or hashes == NULL:
        free(slots)
        free(hashes)
        return -1
    for r in range(n):
        i = r * nvals + col
        start = ends[i - 1] if i else 0
        flen = ends[i] - start
        if skip_empty and flen == 0:
            gids[r] = empty_gid
            continue
        h = hash_bytes(fields + start, flen, seed)
        s = h & mask
        while True:
            g = slots[s]
            if g == 0:
                slots[s] = <uint32_t>(ng + 1)
                hashes[ng] = h
                firsts[ng] = <uint32_t>r
                gids[r] = <uint32_t>ng
                ng += 1
                break
            g -= 1
            if hashes[g] == h:
                gi = firsts[g] * nvals + col
                gstart = ends[gi - 1] if gi else 0
                if ends[gi] - gstart == flen and memcmp(fields + gstart, fields + start, flen) == 0:
                    gids[r] = g
                    break
            s = (s + 1) & mask
    free(slots)
    free(hashes)
    ngroups[0] = ng
    return 0
