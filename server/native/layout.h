/* Generated from core/layout.py by `python -m listseg.core.layout --c-header`: do not edit. */
/* The storage layout for C and C++: database names, key tags, integer widths and byte
   orders, the profile record. */
#ifndef LISTSEG_LAYOUT_H
#define LISTSEG_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* databases */
#define LISTSEG_DB_ACCOUNTS "accounts"
#define LISTSEG_DB_GUID "guid"
#define LISTSEG_DB_IDENT "ident"
#define LISTSEG_DB_PROFILE "profile"
#define LISTSEG_DB_CHANNELS "channels"
#define LISTSEG_DB_SEGMENTS "segments"
#define LISTSEG_DB_SEGNAMES "segnames"
#define LISTSEG_DB_HEADS "heads"
#define LISTSEG_DB_VERSIONS "versions"
#define LISTSEG_DB_HISTORY "history"
#define LISTSEG_DB_UPLOADS "uploads"
#define LISTSEG_DB_REJECTS "rejects"
#define LISTSEG_DB_COUNT 12

/* keys (database: parts, in order) and the tags that start some */
/*   account_name: accounts: 'n' + name -> account (u32 BE) */
/*   account: accounts: 'a' + account -> json */
/*   generation: accounts: 'g' + account -> generation (u64 BE) */
/*   account_counter: accounts: '#' -> json */
/*   credentials: accounts: '#credentials' -> flag */
/*   layout: accounts: '#layout' -> layout_version (u32 BE) */
/*   guid: guid: account + guid -> uid (u32 LE) */
/*   ident: ident: account + identity -> uid (u32 LE) */
/*   profile: profile: account + profile_block -> profile block */
/*   channel: channels: account + channel -> bitmap */
/*   segment: segments: account + segment_id -> json */
/*   segment_name: segnames: account + name -> segment_id (u32 BE) */
/*   head: heads: account + segment_id -> version (u32 BE) */
/*   version: versions: account + segment_id + version -> bitmap */
/*   history: history: account + segment_id + version -> json */
/*   upload: uploads: account + upload_id -> json */
/*   reject: rejects: account + upload_id + reject_row -> reject */
#define LISTSEG_KEY_ACCOUNT_NAME_TAG "n"
#define LISTSEG_KEY_ACCOUNT_TAG "a"
#define LISTSEG_KEY_GENERATION_TAG "g"
#define LISTSEG_KEY_ACCOUNT_COUNTER_TAG "#"
#define LISTSEG_KEY_CREDENTIALS_TAG "#credentials"
#define LISTSEG_KEY_LAYOUT_TAG "#layout"

/* names */
#define LISTSEG_DEFAULT_ACCOUNT "default"
#define LISTSEG_DELETED "#deleted"
#define LISTSEG_CHANNEL_EMAIL 0x01u  /* "email" */
#define LISTSEG_CHANNEL_SMS 0x02u  /* "sms" */
#define LISTSEG_CHANNEL_PUSH 0x04u  /* "push" */
#define LISTSEG_CHANNEL_WHATSAPP 0x08u  /* "whatsapp" */
#define LISTSEG_CHANNEL_WEBPUSH 0x10u  /* "webpush" */
#define LISTSEG_UNKNOWN 0xffffffffu  /* no uid */

/* the profile record: bits, guid length, guid, identity */
#define LISTSEG_PROFILE_HEAD 3
#define LISTSEG_PROFILE_BITS_AT 0
#define LISTSEG_PROFILE_GUID_LEN_AT 1
#define LISTSEG_PROFILE_HEX_GUID 0x80u  /* ...or bits | this, the guid's 16 bytes, identity */
#define LISTSEG_PROFILE_BLOCK_BITS 4  /* a profile block: 16 uids */
#define LISTSEG_PROFILE_SLOT_LONG 255  /* a slot's length byte: a u16 LE length follows */
#define LISTSEG_PROFILE_HEX_HEAD 17
#define LISTSEG_LAYOUT 3  /* the layout written */

/* guids: the stored form */
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

/* integers: listseg_put_X writes X at dst, listseg_get_X reads it (LISTSEG_X_WIDTH bytes) */
#define LISTSEG_ACCOUNT_WIDTH 4  /* big-endian: account number: the first 4 bytes of every account's key */
static inline void listseg_put_account(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_account(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_PROFILE_UID_WIDTH 4  /* big-endian: uid in a layout-2 profile key: big-endian, so key order is uid order */
static inline void listseg_put_profile_uid(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_profile_uid(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_PROFILE_BLOCK_WIDTH 4  /* big-endian: a block of profiles (uid >> PROFILE_BLOCK_BITS): key order is uid order */
static inline void listseg_put_profile_block(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_profile_block(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_SEGMENT_ID_WIDTH 4  /* big-endian: segment id */
static inline void listseg_put_segment_id(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_segment_id(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_VERSION_WIDTH 4  /* big-endian: segment version; 0 = none yet */
static inline void listseg_put_version(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_version(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_UPLOAD_ID_WIDTH 8  /* big-endian: upload id */
static inline void listseg_put_upload_id(uint8_t *dst, uint64_t v) { dst[0] = (uint8_t)(v >> 56); dst[1] = (uint8_t)(v >> 48); dst[2] = (uint8_t)(v >> 40); dst[3] = (uint8_t)(v >> 32); dst[4] = (uint8_t)(v >> 24); dst[5] = (uint8_t)(v >> 16); dst[6] = (uint8_t)(v >> 8); dst[7] = (uint8_t)(v >> 0); }
static inline uint64_t listseg_get_upload_id(const uint8_t *src) { return (uint64_t)(((uint64_t)src[0] << 56) | ((uint64_t)src[1] << 48) | ((uint64_t)src[2] << 40) | ((uint64_t)src[3] << 32) | ((uint64_t)src[4] << 24) | ((uint64_t)src[5] << 16) | ((uint64_t)src[6] << 8) | ((uint64_t)src[7] << 0)); }
#define LISTSEG_REJECT_ROW_WIDTH 4  /* big-endian: position of a rejected row among its upload's rejects */
static inline void listseg_put_reject_row(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_reject_row(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_GENERATION_WIDTH 8  /* big-endian: profiles generation (keyindex.py) */
static inline void listseg_put_generation(uint8_t *dst, uint64_t v) { dst[0] = (uint8_t)(v >> 56); dst[1] = (uint8_t)(v >> 48); dst[2] = (uint8_t)(v >> 40); dst[3] = (uint8_t)(v >> 32); dst[4] = (uint8_t)(v >> 24); dst[5] = (uint8_t)(v >> 16); dst[6] = (uint8_t)(v >> 8); dst[7] = (uint8_t)(v >> 0); }
static inline uint64_t listseg_get_generation(const uint8_t *src) { return (uint64_t)(((uint64_t)src[0] << 56) | ((uint64_t)src[1] << 48) | ((uint64_t)src[2] << 40) | ((uint64_t)src[3] << 32) | ((uint64_t)src[4] << 24) | ((uint64_t)src[5] << 16) | ((uint64_t)src[6] << 8) | ((uint64_t)src[7] << 0)); }
#define LISTSEG_UID_WIDTH 4  /* little-endian: uid as the value of guid -> uid and identity -> uid */
static inline void listseg_put_uid(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 0); dst[1] = (uint8_t)(v >> 8); dst[2] = (uint8_t)(v >> 16); dst[3] = (uint8_t)(v >> 24); }
static inline uint32_t listseg_get_uid(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 0) | ((uint32_t)src[1] << 8) | ((uint32_t)src[2] << 16) | ((uint32_t)src[3] << 24)); }
#define LISTSEG_REJECT_LINE_WIDTH 8  /* big-endian: line number of a rejected row */
static inline void listseg_put_reject_line(uint8_t *dst, uint64_t v) { dst[0] = (uint8_t)(v >> 56); dst[1] = (uint8_t)(v >> 48); dst[2] = (uint8_t)(v >> 40); dst[3] = (uint8_t)(v >> 32); dst[4] = (uint8_t)(v >> 24); dst[5] = (uint8_t)(v >> 16); dst[6] = (uint8_t)(v >> 8); dst[7] = (uint8_t)(v >> 0); }
static inline uint64_t listseg_get_reject_line(const uint8_t *src) { return (uint64_t)(((uint64_t)src[0] << 56) | ((uint64_t)src[1] << 48) | ((uint64_t)src[2] << 40) | ((uint64_t)src[3] << 32) | ((uint64_t)src[4] << 24) | ((uint64_t)src[5] << 16) | ((uint64_t)src[6] << 8) | ((uint64_t)src[7] << 0)); }
#define LISTSEG_PROFILE_BITS_WIDTH 1  /* little-endian: channel bits of a profile record */
static inline void listseg_put_profile_bits(uint8_t *dst, uint8_t v) { dst[0] = (uint8_t)(v >> 0); }
static inline uint8_t listseg_get_profile_bits(const uint8_t *src) { return (uint8_t)(((uint8_t)src[0] << 0)); }
#define LISTSEG_PROFILE_GUID_LEN_WIDTH 2  /* little-endian: guid length of a profile record */
static inline void listseg_put_profile_guid_len(uint8_t *dst, uint16_t v) { dst[0] = (uint8_t)(v >> 0); dst[1] = (uint8_t)(v >> 8); }
static inline uint16_t listseg_get_profile_guid_len(const uint8_t *src) { return (uint16_t)(((uint16_t)src[0] << 0) | ((uint16_t)src[1] << 8)); }
#define LISTSEG_LAYOUT_VERSION_WIDTH 4  /* big-endian: the layout a data directory is written in (LAYOUT) */
static inline void listseg_put_layout_version(uint8_t *dst, uint32_t v) { dst[0] = (uint8_t)(v >> 24); dst[1] = (uint8_t)(v >> 16); dst[2] = (uint8_t)(v >> 8); dst[3] = (uint8_t)(v >> 0); }
static inline uint32_t listseg_get_layout_version(const uint8_t *src) { return (uint32_t)(((uint32_t)src[0] << 24) | ((uint32_t)src[1] << 16) | ((uint32_t)src[2] << 8) | ((uint32_t)src[3] << 0)); }
#define LISTSEG_PROFILE_SLOT_LEN_WIDTH 2  /* little-endian: a long profile record's length in its block */
static inline void listseg_put_profile_slot_len(uint8_t *dst, uint16_t v) { dst[0] = (uint8_t)(v >> 0); dst[1] = (uint8_t)(v >> 8); }
static inline uint16_t listseg_get_profile_slot_len(const uint8_t *src) { return (uint16_t)(((uint16_t)src[0] << 0) | ((uint16_t)src[1] << 8)); }

/* key builders: listseg_key_K writes key K at dst (LISTSEG_KEY_K_FIXED bytes, plus a tail's length)
   and returns its length; the account is the account prefix (LISTSEG_ACCOUNT_WIDTH bytes) */
#define LISTSEG_KEY_ACCOUNT_NAME_FIXED 1
static inline size_t listseg_key_account_name(uint8_t *dst, const void *name, size_t name_len) {
  memcpy(dst, "n", 1);
  memcpy(dst + 1, name, name_len);
  return 1 + name_len;
}
#define LISTSEG_KEY_ACCOUNT_FIXED 5
static inline size_t listseg_key_account(uint8_t *dst, const uint8_t *account) {
  memcpy(dst, "a", 1);
  memcpy(dst + 1, account, 4);
  return 5;
}
#define LISTSEG_KEY_GENERATION_FIXED 5
static inline size_t listseg_key_generation(uint8_t *dst, const uint8_t *account) {
  memcpy(dst, "g", 1);
  memcpy(dst + 1, account, 4);
  return 5;
}
#define LISTSEG_KEY_ACCOUNT_COUNTER_FIXED 1
static inline size_t listseg_key_account_counter(uint8_t *dst) {
  memcpy(dst, "#", 1);
  return 1;
}
#define LISTSEG_KEY_CREDENTIALS_FIXED 12
static inline size_t listseg_key_credentials(uint8_t *dst) {
  memcpy(dst, "#credentials", 12);
  return 12;
}
#define LISTSEG_KEY_LAYOUT_FIXED 7
static inline size_t listseg_key_layout(uint8_t *dst) {
  memcpy(dst, "#layout", 7);
  return 7;
}
#define LISTSEG_KEY_GUID_FIXED 5
static inline size_t listseg_key_guid(uint8_t *dst, const uint8_t *account, const void *guid, size_t guid_len) {
  memcpy(dst + 0, account, 4);
  size_t stored = listseg_pack_guid(dst + 4, (const uint8_t *)guid, guid_len);
  return 4 + stored;
}
#define LISTSEG_KEY_IDENT_FIXED 4
static inline size_t listseg_key_ident(uint8_t *dst, const uint8_t *account, const void *identity, size_t identity_len) {
  memcpy(dst + 0, account, 4);
  memcpy(dst + 4, identity, identity_len);
  return 4 + identity_len;
}
#define LISTSEG_KEY_PROFILE_FIXED 8
static inline size_t listseg_key_profile(uint8_t *dst, const uint8_t *account, uint32_t profile_block) {
  memcpy(dst + 0, account, 4);
  listseg_put_profile_block(dst + 4, profile_block);
  return 8;
}
#define LISTSEG_KEY_CHANNEL_FIXED 4
static inline size_t listseg_key_channel(uint8_t *dst, const uint8_t *account, const void *channel, size_t channel_len) {
  memcpy(dst + 0, account, 4);
  memcpy(dst + 4, channel, channel_len);
  return 4 + channel_len;
}
#define LISTSEG_KEY_SEGMENT_FIXED 8
static inline size_t listseg_key_segment(uint8_t *dst, const uint8_t *account, uint32_t segment_id) {
  memcpy(dst + 0, account, 4);
  listseg_put_segment_id(dst + 4, segment_id);
  return 8;
}
#define LISTSEG_KEY_SEGMENT_NAME_FIXED 4
static inline size_t listseg_key_segment_name(uint8_t *dst, const uint8_t *account, const void *name, size_t name_len) {
  memcpy(dst + 0, account, 4);
  memcpy(dst + 4, name, name_len);
  return 4 + name_len;
}
#define LISTSEG_KEY_HEAD_FIXED 8
static inline size_t listseg_key_head(uint8_t *dst, const uint8_t *account, uint32_t segment_id) {
  memcpy(dst + 0, account, 4);
  listseg_put_segment_id(dst + 4, segment_id);
  return 8;
}
#define LISTSEG_KEY_VERSION_FIXED 12
static inline size_t listseg_key_version(uint8_t *dst, const uint8_t *account, uint32_t segment_id, uint32_t version) {
  memcpy(dst + 0, account, 4);
  listseg_put_segment_id(dst + 4, segment_id);
  listseg_put_version(dst + 8, version);
  return 12;
}
#define LISTSEG_KEY_HISTORY_FIXED 12
static inline size_t listseg_key_history(uint8_t *dst, const uint8_t *account, uint32_t segment_id, uint32_t version) {
  memcpy(dst + 0, account, 4);
  listseg_put_segment_id(dst + 4, segment_id);
  listseg_put_version(dst + 8, version);
  return 12;
}
#define LISTSEG_KEY_UPLOAD_FIXED 12
static inline size_t listseg_key_upload(uint8_t *dst, const uint8_t *account, uint64_t upload_id) {
  memcpy(dst + 0, account, 4);
  listseg_put_upload_id(dst + 4, upload_id);
  return 12;
}
#define LISTSEG_KEY_REJECT_FIXED 16
static inline size_t listseg_key_reject(uint8_t *dst, const uint8_t *account, uint64_t upload_id, uint32_t reject_row) {
  memcpy(dst + 0, account, 4);
  listseg_put_upload_id(dst + 4, upload_id);
  listseg_put_reject_row(dst + 12, reject_row);
  return 16;
}

/* Redis Cluster keys: printf formats and the scripts (core/layout.py's Redis section) */
#define LISTSEG_REDIS_BLOCK_BITS 16
#define LISTSEG_REDIS_BUCKETS 1024
#define LISTSEG_REDIS_DIRECTORY_NAMES "{d}:names"
#define LISTSEG_REDIS_DIRECTORY_CREDENTIALS "{d}:credentials"
#define LISTSEG_REDIS_ACCOUNT_KEY "{a:%d}:%s"
#define LISTSEG_REDIS_BLOCK_KEY "{a:%d:%d}:%s"
#define LISTSEG_REDIS_BUCKET_KEY "{a:%d:%s:%d}"
#define LISTSEG_REDIS_BUCKETS_FIELD "buckets"
#define LISTSEG_REDIS_VERSION_CONTAINER "v:%s"
#define LISTSEG_REDIS_LOCATE "\x0alocal id = ARGV[2]\x0aif ARGV[1] ~= '' then id = redis.call('HGET', KEYS[1], ARGV[1]) end\x0alocal generation = redis.call('HGET', KEYS[4], 'generation')\x0aif not id then return {false, false, false, generation} end\x0areturn {id, redis.call('HGET', KEYS[2], id), redis.call('HGET', KEYS[3], id), generation}\x0a"
#define LISTSEG_REDIS_BUCKET_READ "\x0aif redis.call('HLEN', KEYS[1]) <= tonumber(ARGV[2]) then return redis.call('HGETALL', KEYS[1]) end\x0areturn redis.call('HGET', KEYS[1], ARGV[1])\x0a"
#define LISTSEG_REDIS_LOCATE_KEYS {"names", "seg", "heads", "acct"}

#endif  /* LISTSEG_LAYOUT_H */
