# Generated from core/layout.py by `python -m listseg.core.layout --pxi`: do not edit.
# The storage layout for the Cython store: `include "_layout.pxi"`. Inline C, no Python call.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef uint32_t LAYOUT_UNKNOWN = 0xFFFFFFFF          # no uid
cdef enum:
    LAYOUT_PROFILE_HEAD = 3                 # bits, guid length; then guid, identity
    LAYOUT_PROFILE_BITS_AT = 0
    LAYOUT_PROFILE_GUID_LEN_AT = 1
    LAYOUT_ACCOUNT_WIDTH = 4
    LAYOUT_PROFILE_UID_WIDTH = 4
    LAYOUT_SEGMENT_ID_WIDTH = 4
    LAYOUT_VERSION_WIDTH = 4
    LAYOUT_UPLOAD_ID_WIDTH = 8
    LAYOUT_REJECT_ROW_WIDTH = 4
    LAYOUT_GENERATION_WIDTH = 8
    LAYOUT_UID_WIDTH = 4
    LAYOUT_REJECT_LINE_WIDTH = 8
    LAYOUT_PROFILE_BITS_WIDTH = 1
    LAYOUT_PROFILE_GUID_LEN_WIDTH = 2

cdef inline void put_account(uint8_t *dst, uint32_t v) noexcept nogil:
    """account number: the first 4 bytes of every account's key (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_account(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_profile_uid(uint8_t *dst, uint32_t v) noexcept nogil:
    """uid in a profile key: big-endian, so key order is uid order (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_profile_uid(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_segment_id(uint8_t *dst, uint32_t v) noexcept nogil:
    """segment id (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_segment_id(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_version(uint8_t *dst, uint32_t v) noexcept nogil:
    """segment version; 0 = none yet (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_version(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_upload_id(uint8_t *dst, uint64_t v) noexcept nogil:
    """upload id (8 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 56)
    dst[1] = <uint8_t>(v >> 48)
    dst[2] = <uint8_t>(v >> 40)
    dst[3] = <uint8_t>(v >> 32)
    dst[4] = <uint8_t>(v >> 24)
    dst[5] = <uint8_t>(v >> 16)
    dst[6] = <uint8_t>(v >> 8)
    dst[7] = <uint8_t>(v >> 0)

cdef inline uint64_t get_upload_id(const uint8_t *src) noexcept nogil:
    return (<uint64_t>src[0] << 56) | (<uint64_t>src[1] << 48) | (<uint64_t>src[2] << 40) | (<uint64_t>src[3] << 32) | (<uint64_t>src[4] << 24) | (<uint64_t>src[5] << 16) | (<uint64_t>src[6] << 8) | (<uint64_t>src[7] << 0)

cdef inline void put_reject_row(uint8_t *dst, uint32_t v) noexcept nogil:
    """position of a rejected row among its upload's rejects (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_reject_row(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_generation(uint8_t *dst, uint64_t v) noexcept nogil:
    """profiles generation (keyindex.py) (8 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 56)
    dst[1] = <uint8_t>(v >> 48)
    dst[2] = <uint8_t>(v >> 40)
    dst[3] = <uint8_t>(v >> 32)
    dst[4] = <uint8_t>(v >> 24)
    dst[5] = <uint8_t>(v >> 16)
    dst[6] = <uint8_t>(v >> 8)
    dst[7] = <uint8_t>(v >> 0)

cdef inline uint64_t get_generation(const uint8_t *src) noexcept nogil:
    return (<uint64_t>src[0] << 56) | (<uint64_t>src[1] << 48) | (<uint64_t>src[2] << 40) | (<uint64_t>src[3] << 32) | (<uint64_t>src[4] << 24) | (<uint64_t>src[5] << 16) | (<uint64_t>src[6] << 8) | (<uint64_t>src[7] << 0)

cdef inline void put_uid(uint8_t *dst, uint32_t v) noexcept nogil:
    """uid as the value of guid -> uid and identity -> uid (4 bytes, little-endian)"""
    dst[0] = <uint8_t>(v >> 0)
    dst[1] = <uint8_t>(v >> 8)
    dst[2] = <uint8_t>(v >> 16)
    dst[3] = <uint8_t>(v >> 24)

cdef inline uint32_t get_uid(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 0) | (<uint32_t>src[1] << 8) | (<uint32_t>src[2] << 16) | (<uint32_t>src[3] << 24)

cdef inline void put_reject_line(uint8_t *dst, uint64_t v) noexcept nogil:
    """line number of a rejected row (8 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 56)
    dst[1] = <uint8_t>(v >> 48)
    dst[2] = <uint8_t>(v >> 40)
    dst[3] = <uint8_t>(v >> 32)
    dst[4] = <uint8_t>(v >> 24)
    dst[5] = <uint8_t>(v >> 16)
    dst[6] = <uint8_t>(v >> 8)
    dst[7] = <uint8_t>(v >> 0)

cdef inline uint64_t get_reject_line(const uint8_t *src) noexcept nogil:
    return (<uint64_t>src[0] << 56) | (<uint64_t>src[1] << 48) | (<uint64_t>src[2] << 40) | (<uint64_t>src[3] << 32) | (<uint64_t>src[4] << 24) | (<uint64_t>src[5] << 16) | (<uint64_t>src[6] << 8) | (<uint64_t>src[7] << 0)

cdef inline void put_profile_bits(uint8_t *dst, uint8_t v) noexcept nogil:
    """channel bits of a profile record (1 bytes, little-endian)"""
    dst[0] = <uint8_t>(v >> 0)

cdef inline uint8_t get_profile_bits(const uint8_t *src) noexcept nogil:
    return (<uint8_t>src[0] << 0)

cdef inline void put_profile_guid_len(uint8_t *dst, uint16_t v) noexcept nogil:
    """guid length of a profile record (2 bytes, little-endian)"""
    dst[0] = <uint8_t>(v >> 0)
    dst[1] = <uint8_t>(v >> 8)

cdef inline uint16_t get_profile_guid_len(const uint8_t *src) noexcept nogil:
    return (<uint16_t>src[0] << 0) | (<uint16_t>src[1] << 8)
