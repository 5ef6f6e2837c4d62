# Generated from core/layout.py by `python -m listseg.core.layout --pxi`: do not edit.
# The storage layout for the Cython store: `include "_layout.pxi"`. Inline C, no Python call.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef uint32_t LAYOUT_UNKNOWN = 0xFFFFFFFF          # no uid
cdef enum:
    LAYOUT_PROFILE_HEAD = 3                 # bits, guid length; then guid, identity
    LAYOUT_PROFILE_BITS_AT = 0
    LAYOUT_PROFILE_GUID_LEN_AT = 1
    LAYOUT_PROFILE_HEX_GUID = 0x80            # ...or bits | this, the guid's 16 bytes, identity
    LAYOUT_PROFILE_HEX_HEAD = 17
    LAYOUT_HEX_GUID_DIGITS = 32
    LAYOUT_PROFILE_BLOCK_BITS = 4              # a profile block: 16 uids
    LAYOUT_PROFILE_SLOT_LONG = 255             # a slot's length byte: a u16 LE length follows
    LAYOUT_ACCOUNT_WIDTH = 4
    LAYOUT_PROFILE_UID_WIDTH = 4
    LAYOUT_PROFILE_BLOCK_WIDTH = 4
    LAYOUT_SEGMENT_ID_WIDTH = 4
    LAYOUT_VERSION_WIDTH = 4
    LAYOUT_UPLOAD_ID_WIDTH = 8
    LAYOUT_REJECT_ROW_WIDTH = 4
    LAYOUT_GENERATION_WIDTH = 8
    LAYOUT_UID_WIDTH = 4
    LAYOUT_REJECT_LINE_WIDTH = 8
    LAYOUT_PROFILE_BITS_WIDTH = 1
    LAYOUT_PROFILE_GUID_LEN_WIDTH = 2
    LAYOUT_LAYOUT_VERSION_WIDTH = 4
    LAYOUT_PROFILE_SLOT_LEN_WIDTH = 2

# guids: the stored form (layout.py's GUID_C)
cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #define LISTSEG_HEX_GUID_DIGITS 32
    #define LISTSEG_PACKED_GUID_MARK 0
    #define LISTSEG_ESCAPED_GUID_MARK 1
    /* each byte's value as a lowercase hex digit, or 0x80: not one (a table: no branch a digit) */
    static const uint8_t listseg_hex_value[256] = {0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0,1,2,3,4,5,6,7,8,9,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,10,11,12,13,14,15,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80,0x80};
    /* layout.py's pack_guid: writes guid's stored form at dst (up to n + 1 bytes), returns its length */
    static inline size_t listseg_pack_guid(uint8_t *dst, const uint8_t *guid, size_t n) {
      size_t i;
      if (n == LISTSEG_HEX_GUID_DIGITS) {
        uint8_t seen = 0;
        for (i = 0; i < n; i += 2) {
          uint8_t hi = listseg_hex_value[guid[i]], lo = listseg_hex_value[guid[i + 1]];
          seen |= hi | lo;
          dst[1 + i / 2] = (uint8_t)(hi << 4 | lo);
        }
        if (!(seen & 0x80)) { dst[0] = LISTSEG_PACKED_GUID_MARK; return 1 + n / 2; }
      }
      if (n && guid[0] <= LISTSEG_ESCAPED_GUID_MARK) { dst[0] = LISTSEG_ESCAPED_GUID_MARK; memcpy(dst + 1, guid, n); return n + 1; }
      memcpy(dst, guid, n);
      return n;
    }
    /* the 32 hex digits of a packed guid's 16 bytes, at dst */
    static inline void listseg_unpack_hex_guid(uint8_t *dst, const uint8_t *packed) {
      static const char digits[] = "0123456789abcdef";
      size_t i;
      for (i = 0; i < LISTSEG_HEX_GUID_DIGITS / 2; i++) { dst[2 * i] = digits[packed[i] >> 4]; dst[2 * i + 1] = digits[packed[i] & 15]; }
    }
    """
    size_t pack_guid "listseg_pack_guid"(uint8_t *dst, const uint8_t *guid, size_t n) noexcept nogil
    void unpack_hex_guid "listseg_unpack_hex_guid"(uint8_t *dst, const uint8_t *packed) noexcept nogil

cdef inline void put_account(uint8_t *dst, uint32_t v) noexcept nogil:
    """account number: the first 4 bytes of every account's key (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_account(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_profile_uid(uint8_t *dst, uint32_t v) noexcept nogil:
    """uid in a layout-2 profile key: big-endian, so key order is uid order (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_profile_uid(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_profile_block(uint8_t *dst, uint32_t v) noexcept nogil:
    """a block of profiles (uid >> PROFILE_BLOCK_BITS): key order is uid order (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_profile_block(const uint8_t *src) noexcept nogil:
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

cdef inline void put_layout_version(uint8_t *dst, uint32_t v) noexcept nogil:
    """the layout a data directory is written in (LAYOUT) (4 bytes, big-endian)"""
    dst[0] = <uint8_t>(v >> 24)
    dst[1] = <uint8_t>(v >> 16)
    dst[2] = <uint8_t>(v >> 8)
    dst[3] = <uint8_t>(v >> 0)

cdef inline uint32_t get_layout_version(const uint8_t *src) noexcept nogil:
    return (<uint32_t>src[0] << 24) | (<uint32_t>src[1] << 16) | (<uint32_t>src[2] << 8) | (<uint32_t>src[3] << 0)

cdef inline void put_profile_slot_len(uint8_t *dst, uint16_t v) noexcept nogil:
    """a long profile record's length in its block (2 bytes, little-endian)"""
    dst[0] = <uint8_t>(v >> 0)
    dst[1] = <uint8_t>(v >> 8)

cdef inline uint16_t get_profile_slot_len(const uint8_t *src) noexcept nogil:
    return (<uint16_t>src[0] << 0) | (<uint16_t>src[1] << 8)
