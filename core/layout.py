"""The storage layout, defined once: every database, key shape, integer width and byte order, and
record codec. Nothing else in the code builds a key or a record (tests/test_layout.py greps for it).

Two halves:
- **Records** (backend-neutral): the profile record, the channel bits, the uid value, the reject
  record, the JSON records, the Roaring bitmap. A second backend (Redis Cluster, issue 12) reuses
  these and defines its own keys beside the LMDB ones.
- **LMDB keys**: which named database holds what, under which key. Every key of account data
  starts with the 4-byte account number, so one account is one contiguous key range.

The compiled code reads the same table through generated files, committed and checked for staleness:
`python -m listseg.core.layout --pxi` writes core/_layout.pxi (the Cython store's inline helpers),
`--c-header` writes server/native/layout.h (the membership front), `--markdown` prints the table
that docs/design.md holds.
"""
import binascii
import json
import struct
from array import array
import sys
import zlib
from typing import NamedTuple


# == integers: a width and a byte order ==========================================================
class Int(NamedTuple):
    """An unsigned integer field of a key or a record."""
    name: str
    width: int          # bytes
    order: str          # "big" or "little"
    doc: str

    def pack(self, n):
        return n.to_bytes(self.width, self.order)

    def unpack(self, raw):
        return int.from_bytes(raw, self.order)

    @property
    def code(self):
        return {1: "B", 2: "H", 4: "I", 8: "Q"}[self.width]


# Big-endian where an integer is (part of) a key, so key order is numeric order.
ACCOUNT = Int("account", 4, "big", "account number: the first 4 bytes of every account's key")
PROFILE_UID = Int("profile_uid", 4, "big", "uid in a layout-2 profile key: big-endian, so key order is uid order")
PROFILE_BLOCK = Int("profile_block", 4, "big", "a block of profiles (uid >> PROFILE_BLOCK_BITS): key order is uid order")
SEGMENT_ID = Int("segment_id", 4, "big", "segment id")
VERSION = Int("version", 4, "big", "segment version; 0 = none yet")
UPLOAD_ID = Int("upload_id", 8, "big", "upload id")
REJECT_ROW = Int("reject_row", 4, "big", "position of a rejected row among its upload's rejects")
GENERATION = Int("generation", 8, "big", "profiles generation (keyindex.py)")
# Little-endian as a value: the native order of the C loops that copy uids out of the store.
UID = Int("uid", 4, "little", "uid as the value of guid -> uid and identity -> uid")
REJECT_LINE = Int("reject_line", 8, "big", "line number of a rejected row")
PROFILE_BITS = Int("profile_bits", 1, "little", "channel bits of a profile record")
PROFILE_GUID_LEN = Int("profile_guid_len", 2, "little", "guid length of a profile record")
LAYOUT_VERSION = Int("layout_version", 4, "big", "the layout a data directory is written in (LAYOUT)")
PROFILE_SLOT_LEN = Int("profile_slot_len", 2, "little", "a long profile record's length in its block")

INTS = (ACCOUNT, PROFILE_UID, PROFILE_BLOCK, SEGMENT_ID, VERSION, UPLOAD_ID, REJECT_ROW, GENERATION, UID, REJECT_LINE,
        PROFILE_BITS, PROFILE_GUID_LEN, LAYOUT_VERSION, PROFILE_SLOT_LEN)

#: The layout this code writes. 1 (no LAYOUT_KEY): guids stored as given. 2: guids of 32 lowercase
#: hex digits stored as 16 bytes (pack_guid), in the guid table's keys and the profile records.
#: 3: profile records stored by blocks of uids (PROFILE_KEY, encode_block), not one key each.
#: core/lmdb_migrate.py brings a data directory of an older layout up to this one when it opens.
LAYOUT = 3

#: No uid: what a look-up answers for a key without a profile. uids are below it, so it is never a member.
UNKNOWN = (1 << 8 * UID.width) - 1


# == records (backend-neutral) ===================================================================
#: Channel i is bit 1 << i of a profile record's bits. Append only: reordering changes every stored profile.
CHANNELS = ("email", "sms", "push", "whatsapp", "webpush")
CHANNEL_BIT = {name: 1 << i for i, name in enumerate(CHANNELS)}
#: Beside the channels' bitmaps: every deleted profile's uid (a name no channel can take).
DELETED = "#deleted"
#: The account every call names while no account has a passcode.
DEFAULT_ACCOUNT = "default"


def channel_names(bits):
    return tuple(name for name in CHANNELS if bits & CHANNEL_BIT[name])


# == guids: 32 lowercase hex digits in 16 bytes ===================================================
# Most guids are 32 hex digits (a UUID's or an MD5's); stored as their 16 bytes, a profile costs 32
# bytes less (issue 16: 150M profiles in 15 GB). Every other guid is stored as given, unless its first
# byte is a mark, which gets an escape mark in front, so the stored forms of two guids never collide.
#: The guids stored packed: this many lowercase hex digits, nothing else.
HEX_GUID_DIGITS = 32
#: First byte of a packed guid (then its 16 bytes).
PACKED_GUID_MARK = 0
#: First byte of a guid stored as given but for this byte, put in front because the guid starts with
#: one of the marks.
ESCAPED_GUID_MARK = 1
_PACKED, _ESCAPED = bytes((PACKED_GUID_MARK,)), bytes((ESCAPED_GUID_MARK,))


def _hex_bytes(guid):
    """guid's 16 bytes if it is 32 lowercase hex digits, else None (unhexlify takes capitals too)."""
    if len(guid) != HEX_GUID_DIGITS or guid != guid.lower():
        return None
    try:
        return binascii.unhexlify(guid)
    except binascii.Error:
        return None


def is_hex_guid(guid):
    return _hex_bytes(guid) is not None


def pack_guid(guid):
    """The stored form of a guid (bytes) in a key: see the section's head."""
    packed = _hex_bytes(guid)
    if packed is not None:
        return _PACKED + packed
    if guid[:1] and guid[0] <= ESCAPED_GUID_MARK:
        return _ESCAPED + guid
    return guid


def unpack_guid(stored):
    if stored[:1] == _PACKED and len(stored) == 1 + HEX_GUID_DIGITS // 2:
        return stored[1:].hex().encode()
    return stored[1:] if stored[:1] == _ESCAPED else stored


# The same rule in C, for the Cython store (_layout.pxi) and the front (layout.h). tests/test_profiles_bulk.py
# checks that both bindings store the same keys; tests/test_layout.py, that an upgrade stores pack_guid's.
_HEX_DIGITS = b"0123456789abcdef"
GUID_C = """\
/* each byte's value as a lowercase hex digit, or 0x80: not one (a table: no branch a digit) */
static const uint8_t listseg_hex_value[256] = {%s};
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
  static const char digits[] = "%s";
  size_t i;
  for (i = 0; i < LISTSEG_HEX_GUID_DIGITS / 2; i++) { dst[2 * i] = digits[packed[i] >> 4]; dst[2 * i + 1] = digits[packed[i] & 15]; }
}
""" % (",".join(str(_HEX_DIGITS.index(b)) if b in _HEX_DIGITS else "0x80" for b in range(256)), _HEX_DIGITS.decode())


# The profile record: bits (1 byte), guid length (uint16 LE), guid, identity (the rest; may be empty);
# or, where the guid is 32 hex digits (is_hex_guid), bits | PROFILE_HEX_GUID, its 16 bytes, identity.
_PROFILE_HEAD = struct.Struct("<" + PROFILE_BITS.code + PROFILE_GUID_LEN.code)
PROFILE_HEAD = _PROFILE_HEAD.size
PROFILE_FIELDS = ((PROFILE_BITS, 0), (PROFILE_GUID_LEN, PROFILE_BITS.width))   # (field, offset)
assert PROFILE_HEAD == PROFILE_BITS.width + PROFILE_GUID_LEN.width
#: The bit of a profile record's bits byte that says its guid is packed: above every channel's.
PROFILE_HEX_GUID = 0x80
#: A packed-guid record's head: the bits byte and the guid's 16 bytes.
PROFILE_HEX_HEAD = PROFILE_BITS.width + HEX_GUID_DIGITS // 2
assert all(bit < PROFILE_HEX_GUID for bit in CHANNEL_BIT.values())


def encode_profile(bits, guid, identity):
    packed = _hex_bytes(guid)
    if packed is not None:
        return bytes((bits | PROFILE_HEX_GUID,)) + packed + (identity or b"")
    return _PROFILE_HEAD.pack(bits, len(guid)) + guid + (identity or b"")


def decode_profile(raw):
    """(bits, guid, identity) of a profile record, guid and identity as bytes (identity b"" if none)."""
    if raw[0] & PROFILE_HEX_GUID:
        return raw[0] & ~PROFILE_HEX_GUID, raw[1:PROFILE_HEX_HEAD].hex().encode(), raw[PROFILE_HEX_HEAD:]
    bits, glen = _PROFILE_HEAD.unpack_from(raw)
    return bits, raw[PROFILE_HEAD:PROFILE_HEAD + glen], raw[PROFILE_HEAD + glen:]


def is_profile(raw):
    """Whether raw is long enough for the profile record its head describes."""
    if raw[:1] and raw[0] & PROFILE_HEX_GUID:
        return len(raw) >= PROFILE_HEX_HEAD
    return len(raw) >= PROFILE_HEAD and len(raw) >= PROFILE_HEAD + _PROFILE_HEAD.unpack_from(raw)[1]


# The profile block (LMDB's profile table; layout 3): the records of PROFILES_PER_BLOCK consecutive
# uids under one key. A key costs LMDB ~18 bytes beside its value (node header, pointer, the key):
# 18 of the 45 bytes a profile took in layout 2's table (issue 16). Each slot, in uid order: the record's length, then the record. The length is
# a byte: 0 for no profile, PROFILE_SLOT_LONG and then PROFILE_SLOT_LEN for a record that long or
# longer, else the length itself. Slots after the last profile are left out.
PROFILE_BLOCK_BITS = 4
PROFILES_PER_BLOCK = 1 << PROFILE_BLOCK_BITS
PROFILE_SLOT_LONG = 0xFF


def profile_block(uid):
    """(the block of uid, its slot there)."""
    return uid >> PROFILE_BLOCK_BITS, uid & (PROFILES_PER_BLOCK - 1)


def encode_block(records):
    """The block of [record or None] (at most PROFILES_PER_BLOCK, slot order)."""
    records = list(records)
    while records and records[-1] is None:
        records.pop()
    assert len(records) <= PROFILES_PER_BLOCK
    out = bytearray()
    for rec in records:
        n = len(rec) if rec else 0
        out += bytes((n,)) if n < PROFILE_SLOT_LONG else bytes((PROFILE_SLOT_LONG,)) + PROFILE_SLOT_LEN.pack(n)
        out += rec or b""
    return bytes(out)


def decode_block(raw):
    """[record or None] of each slot of a block (PROFILES_PER_BLOCK of them); ValueError if raw is not one."""
    out, at = [], 0
    while at < len(raw):
        n, at = raw[at], at + 1
        if n == PROFILE_SLOT_LONG:
            n, at = PROFILE_SLOT_LEN.unpack(raw[at:at + PROFILE_SLOT_LEN.width]), at + PROFILE_SLOT_LEN.width
        if at + n > len(raw) or len(out) == PROFILES_PER_BLOCK:
            raise ValueError("not a profile block")
        out.append(raw[at:at + n] or None)
        at += n
    return out + [None] * (PROFILES_PER_BLOCK - len(out))


def frame_keys(records, identities=False):
    """(keys, found) of [(uid, profile record or None)]: each guid (or identity, skipping profiles
    with none) followed by a newline, and the uids that have one (uint32 LE). What a backend's
    member_keys answers; a record shorter than its head says is no profile."""
    keys, found = bytearray(), array("I")
    for uid, rec in records:
        if rec is None or not is_profile(rec):
            continue
        _, guid, identity = decode_profile(rec)
        key = identity if identities else guid
        if identities and not key:
            continue
        keys += key + b"\n"
        found.append(uid)
    return bytes(keys), found.tobytes()


def encode_uid(uid):
    return uid.to_bytes(UID.width, UID.order)


def decode_uid(raw):
    return int.from_bytes(raw, UID.order)


def encode_reject(line, reason):
    """A rejected row: its line (uint64 BE), then the reason (UTF-8)."""
    return REJECT_LINE.pack(line) + reason.encode()


def decode_reject(raw):
    return REJECT_LINE.unpack(raw[:REJECT_LINE.width]), raw[REJECT_LINE.width:].decode()


#: The value of a key whose presence is the fact (CREDENTIALS_KEY).
FLAG = b"1"


def dumps(obj):
    """A JSON record (account, counter, segment, history, upload): compact UTF-8."""
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(raw):
    return json.loads(raw) if raw is not None else None


#: Every record codec, for the docs and the generated headers: name -> description.
RECORDS = {
    "profile": "bits (u8: channel i is bit i of CHANNELS), guid length (u16 LE), guid, identity (the rest); "
               "where the guid is 32 lowercase hex digits: bits | 0x80, the guid's 16 bytes, identity (the rest)",
    "profile block": f"for each of {PROFILES_PER_BLOCK} uids in order, up to the last profile: its record's length (u8: 0 "
                     f"no profile, 255: a u16 LE length follows), then its profile record",
    "uid": "uid, u32 LE",
    "json": "JSON, compact, UTF-8",
    "bitmap": "Roaring bitmap, portable serialization (pyroaring serialize, CRoaring portable)",
    "reject": "line (u64 BE), then the reason (UTF-8)",
    "flag": "b\"1\": present or not",
}


# == LMDB: databases and keys ====================================================================
class Tail(NamedTuple):
    """The variable last part of a key: bytes to the end, stored as `pack` makes them (if given)."""
    name: str
    doc: str
    pack: object = None         # value -> stored bytes, and back:
    unpack: object = None


class Key:
    """One key shape: a constant tag, then the parts, in order. ACCOUNT is given as the account
    prefix (ACCOUNT.pack(number): every caller holds it, and the C loops take it), other Ints as
    ints, a Tail as bytes. Only the last part may be a Tail."""

    def __init__(self, name, db, parts, value, doc, tag=b""):
        self.name, self.db, self.parts, self.value, self.doc, self.tag = name, db, tuple(parts), value, doc, tag
        assert all(isinstance(p, Int) for p in self.parts[:-1]), name
        ints = [p for p in self.parts if isinstance(p, Int) and p is not ACCOUNT]
        assert ACCOUNT not in self.parts or self.parts[0] is ACCOUNT, name
        assert len({p.order for p in ints}) <= 1, name
        self._ints = struct.Struct(">" + "".join(p.code for p in ints))
        self.pack = self._fast_pack()

    def _fast_pack(self):
        """The packer of this shape, without a loop over the parts (keys are built on every call)."""
        tag, ints = self.tag, self._ints.pack
        account = ACCOUNT in self.parts
        tail = isinstance(self.parts[-1], Tail) if self.parts else False
        n_ints = len(self.parts) - account - tail
        if not self.parts:
            return lambda: tag
        if account and not tag and not tail:
            return lambda prefix, *values: prefix + ints(*values)
        if account and not tag and n_ints == 0:
            stored = self.parts[-1].pack
            return (lambda prefix, rest: prefix + stored(rest)) if stored else (lambda prefix, rest: prefix + rest)
        if account and n_ints == 0 and not tail:
            return lambda prefix: tag + prefix
        if not account and n_ints == 0 and tail:
            return lambda rest: tag + rest
        return self.prefix

    def prefix(self, *values):
        """The key of the leading parts given (all of them: the whole key), for range scans."""
        out = [self.tag]
        for part, value in zip(self.parts, values):
            if isinstance(part, Tail):
                out.append(part.pack(value) if part.pack else value)
            elif part is ACCOUNT:
                assert len(value) == ACCOUNT.width
                out.append(value)
            else:
                out.append(part.pack(value))
        return b"".join(out)

    def parse(self, key):
        """The parts of a key of this shape: the account prefix and Tail as bytes, other Ints as ints."""
        at, out = len(self.tag), []
        for part in self.parts:
            if isinstance(part, Tail):
                out.append(part.unpack(key[at:]) if part.unpack else key[at:])
                continue
            raw = key[at:at + part.width]
            out.append(raw if part is ACCOUNT else part.unpack(raw))
            at += part.width
        return tuple(out)


# The table. A database holds one key shape, except `accounts`, whose shapes differ by their tag.
ACCOUNT_NAME_KEY = Key("account_name", "accounts", [Tail("name", "account name, UTF-8")], ACCOUNT,
                       "account name -> number", tag=b"n")
ACCOUNT_KEY = Key("account", "accounts", [ACCOUNT], "json", "account record {name, created, next_uid, "
                  "next_segment, next_upload[, display_name, salt, passcode]}", tag=b"a")
GENERATION_KEY = Key("generation", "accounts", [ACCOUNT], GENERATION,
                     "profiles generation, bumped by every write of the account's profiles", tag=b"g")
COUNTER_KEY = Key("account_counter", "accounts", [], "json", "{next}: the next account number", tag=b"#")
CREDENTIALS_KEY = Key("credentials", "accounts", [], "flag", "present once any account has a passcode",
                      tag=b"#credentials")
LAYOUT_KEY = Key("layout", "accounts", [], LAYOUT_VERSION, "the data directory's layout (absent: 1)", tag=b"#layout")
GUID_KEY = Key("guid", "guid", [ACCOUNT, Tail("guid", "guid, UTF-8, stored as pack_guid makes it", pack_guid,
                                              unpack_guid)], UID, "guid -> uid")
IDENT_KEY = Key("ident", "ident", [ACCOUNT, Tail("identity", "identity, UTF-8")], UID, "identity -> uid")
PROFILE_KEY = Key("profile", "profile", [ACCOUNT, PROFILE_BLOCK], "profile block",
                  f"uid >> {PROFILE_BLOCK_BITS} -> the profile records of its {PROFILES_PER_BLOCK} uids")
#: Layouts 1 and 2's profile key, one a uid: what the upgrade reads (not in KEYS: no longer written).
UID_PROFILE_KEY = Key("uid_profile", "profile", [ACCOUNT, PROFILE_UID], "profile", "layouts 1-2: uid -> profile record")
CHANNEL_KEY = Key("channel", "channels", [ACCOUNT, Tail("channel", f"channel name, or {DELETED!r}")], "bitmap",
                  f"a channel's reachable uids; under {DELETED!r}, every deleted profile's uid")
SEGMENT_KEY = Key("segment", "segments", [ACCOUNT, SEGMENT_ID], "json",
                  "segment record {id, name, state, created, updated, consumers, last_upload}")
SEGMENT_NAME_KEY = Key("segment_name", "segnames", [ACCOUNT, Tail("name", "segment name, UTF-8")], SEGMENT_ID,
                       "name -> segment id")
HEAD_KEY = Key("head", "heads", [ACCOUNT, SEGMENT_ID], VERSION, "the segment's current version")
VERSION_KEY = Key("version", "versions", [ACCOUNT, SEGMENT_ID, VERSION], "bitmap", "an immutable version's members")
HISTORY_KEY = Key("history", "history", [ACCOUNT, SEGMENT_ID, VERSION], "json", "{time, size, and upload or rollback_of} of a version (the trend and the versions list; rows older than issue 14 have neither)")
UPLOAD_KEY = Key("upload", "uploads", [ACCOUNT, UPLOAD_ID], "json", "upload record")
REJECT_KEY = Key("reject", "rejects", [ACCOUNT, UPLOAD_ID, REJECT_ROW], "reject", "a rejected row of an upload")

KEYS = (ACCOUNT_NAME_KEY, ACCOUNT_KEY, GENERATION_KEY, COUNTER_KEY, CREDENTIALS_KEY, LAYOUT_KEY, GUID_KEY, IDENT_KEY,
        PROFILE_KEY, CHANNEL_KEY, SEGMENT_KEY, SEGMENT_NAME_KEY, HEAD_KEY, VERSION_KEY, HISTORY_KEY, UPLOAD_KEY,
        REJECT_KEY)

#: The named databases of the one LMDB environment, in the order they are opened.
DATABASES = tuple(dict.fromkeys(k.db for k in KEYS))


def account_prefix(number):
    """The first bytes of every key of the account's data."""
    return ACCOUNT.pack(number)


# == Redis Cluster keys (core/redis_backend.py) =====================================================
# Records are the ones above. Keys carry a hash tag ({...}) that decides their slot: the directory is
# one slot; an account's metadata (records, heads, manifests, history, counters) is one slot, so a
# metadata unit is one Lua script; a uid block's profiles, channel containers and version containers
# share a slot, and an account spreads over many; an identity map is split into buckets of its own.
#: uids per block: a Roaring container's span, so a block's bitmap is one container.
REDIS_BLOCK_BITS = 16
#: Buckets an account's guid map and identity map each have, by default (fixed when the account is
#: made; the store URL's ?buckets=N sets it for accounts made from then on). Up to
#: ~512 fields a bucket (0.5M profiles) a hash stays listpack-encoded, as the test cluster sets
#: hash-max-listpack-entries; past that each bucket is a hashtable: still right, more memory a profile.
#: Every profile index build reads every bucket, so more buckets cost small accounts.
REDIS_BUCKETS = 1024
REDIS_DIRECTORY_NAMES = b"{d}:names"            # hash: account name -> number (decimal)
REDIS_DIRECTORY_COUNTER = b"{d}:counter"        # the next account number (INCR)
REDIS_DIRECTORY_CREDENTIALS = b"{d}:credentials"  # FLAG: present once any account has a passcode
# An account's meta hash (redis_account_key(acct)) holds: state (the record as JSON, less its counters),
# the counters next_uid / next_segment / next_upload, buckets, the profiles generation (odd while a
# profile write runs), mver (moved by every metadata unit: the units' optimistic check) and unit (the
# token of the last unit applied).


def redis_block(uid):
    """The uid block of uid."""
    return uid >> REDIS_BLOCK_BITS


# The key formats (printf-style, for Python's bytes % and C's snprintf alike: layout.h has them too).
REDIS_ACCOUNT_KEY = b"{a:%d}:%s"
REDIS_BLOCK_KEY = b"{a:%d:%d}:%s"
REDIS_BUCKET_KEY = b"{a:%d:%s:%d}"
#: The field of the account's meta hash that holds its bucket count (absent: REDIS_BUCKETS).
REDIS_BUCKETS_FIELD = b"buckets"
#: The version container's name in its block: v:TOKEN, TOKEN from the version's manifest.
REDIS_VERSION_CONTAINER = b"v:%s"


def redis_account_key(acct, what=b"acct"):
    """A key of account acct's metadata slot: acct (the meta hash), seg (id -> segment record), names
    (name -> id), heads (id -> "version:token"), up (id -> upload record), hist:ID / m:ID (version ->
    history row / manifest {"token", "blocks", "size"} of segment ID), rej:ID (upload ID's rejects, a
    list), plock (the profile-write lock)."""
    return REDIS_ACCOUNT_KEY % (acct, what)


def redis_block_key(acct, block, what):
    """A key of uid block `block` of account acct: p (uid -> profile record), c:NAME (a channel's, or
    #deleted's, container), v:TOKEN (the container of a staged version)."""
    return REDIS_BLOCK_KEY % (acct, block, what)


def redis_bucket_key(acct, kind, key, buckets):
    """The bucket of guid (kind b"g") or identity (b"i") `key` in account acct's map: a hash, field key,
    value a uid (UID). The bucket is crc32(key) mod buckets, the same in every process."""
    return REDIS_BUCKET_KEY % (acct, kind, zlib.crc32(key) % buckets)


def redis_bucket_keys(acct, kind, buckets):
    return [REDIS_BUCKET_KEY % (acct, kind, b) for b in range(buckets)]


#: What a membership check reads first, in one round trip: the segment's id (by name ARGV[1], or the
#: id ARGV[2]), its record, its head and the account's profiles generation. KEYS: the account's
#: names, seg, heads and acct keys. The server (core/redis_backend.py) and the front run it.
REDIS_LOCATE = b"""
local id = ARGV[2]
if ARGV[1] ~= '' then id = redis.call('HGET', KEYS[1], ARGV[1]) end
local generation = redis.call('HGET', KEYS[4], 'generation')
if not id then return {false, false, false, generation} end
return {id, redis.call('HGET', KEYS[2], id), redis.call('HGET', KEYS[3], id), generation}
"""
REDIS_LOCATE_KEYS = (b"names", b"seg", b"heads", b"acct")

#: The membership front's read of a bucket (KEYS[1]): the whole bucket (HGETALL) when it holds at most
#: ARGV[2] fields, so the front can keep it; else the uid of field ARGV[1] alone (HGET), so a big
#: bucket never blocks its node for long.
REDIS_BUCKET_READ = b"""
if redis.call('HLEN', KEYS[1]) <= tonumber(ARGV[2]) then return redis.call('HGETALL', KEYS[1]) end
return redis.call('HGET', KEYS[1], ARGV[1])
"""


# == generated files ==============================================================================
_GENERATED = "Generated from core/layout.py by `python -m listseg.core.layout {flag}`: do not edit."


def _c_name(text):
    return "".join(c if c.isalnum() else "_" for c in text).upper()


def _c_string(raw):
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else "\\x%02x" % b for b in raw) + '"'


def _shifts(field):
    """[(byte index, shift)] of field stored at dst[i]."""
    return [(i, 8 * (i if field.order == "little" else field.width - 1 - i)) for i in range(field.width)]


def c_header():
    ctype = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
    out = [f"/* {_GENERATED.format(flag='--c-header')} */",
           "/* The storage layout for C and C++: database names, key tags, integer widths and byte",
           "   orders, the profile record. */",
           "#ifndef LISTSEG_LAYOUT_H", "#define LISTSEG_LAYOUT_H", "", "#include <stddef.h>", "#include <stdint.h>", "#include <string.h>", "",
           "/* databases */"]
    out += [f'#define LISTSEG_DB_{_c_name(db)} "{db}"' for db in DATABASES]
    out += [f"#define LISTSEG_DB_COUNT {len(DATABASES)}", "", "/* keys (database: parts, in order) and the tags that start some */"]
    for k in KEYS:
        parts = " + ".join([repr(k.tag.decode())] * bool(k.tag) + [p.name for p in k.parts])
        out.append(f"/*   {k.name}: {k.db}: {parts} -> {_value_name(k.value)} */")
    out += [f"#define LISTSEG_KEY_{_c_name(k.name)}_TAG {_c_string(k.tag)}" for k in KEYS if k.tag]
    out += ["", "/* names */", f'#define LISTSEG_DEFAULT_ACCOUNT "{DEFAULT_ACCOUNT}"',
            f'#define LISTSEG_DELETED "{DELETED}"']
    out += [f"#define LISTSEG_CHANNEL_{_c_name(name)} 0x{bit:02x}u  /* \"{name}\" */" for name, bit in CHANNEL_BIT.items()]
    out += [f"#define LISTSEG_UNKNOWN 0x{UNKNOWN:x}u  /* no uid */", "",
            "/* the profile record: bits, guid length, guid, identity */",
            f"#define LISTSEG_PROFILE_HEAD {PROFILE_HEAD}"]
    out += [f"#define LISTSEG_{_c_name(f.name)}_AT {at}" for f, at in PROFILE_FIELDS]
    out += [f"#define LISTSEG_PROFILE_HEX_GUID 0x{PROFILE_HEX_GUID:02x}u  /* ...or bits | this, the guid's 16 bytes, identity */",
            f"#define LISTSEG_PROFILE_BLOCK_BITS {PROFILE_BLOCK_BITS}  /* a profile block: {PROFILES_PER_BLOCK} uids */",
            f"#define LISTSEG_PROFILE_SLOT_LONG {PROFILE_SLOT_LONG}  /* a slot's length byte: a u16 LE length follows */",
            f"#define LISTSEG_PROFILE_HEX_HEAD {PROFILE_HEX_HEAD}", f"#define LISTSEG_LAYOUT {LAYOUT}  /* the layout written */",
            "", "/* guids: the stored form */", *_guid_c().splitlines()]
    out += ["", "/* integers: listseg_put_X writes X at dst, listseg_get_X reads it (LISTSEG_X_WIDTH bytes) */"]
    for f in INTS:
        t = ctype[f.width]
        out.append(f"#define LISTSEG_{_c_name(f.name)}_WIDTH {f.width}  /* {f.order}-endian: {f.doc} */")
        body = " ".join(f"dst[{i}] = (uint8_t)(v >> {s});" for i, s in _shifts(f))
        out.append(f"static inline void listseg_put_{f.name}(uint8_t *dst, {t} v) {{ {body} }}")
        expr = " | ".join(f"(({t})src[{i}] << {s})" for i, s in _shifts(f))
        out.append(f"static inline {t} listseg_get_{f.name}(const uint8_t *src) {{ return ({t})({expr}); }}")
    out += ["", "/* key builders: listseg_key_K writes key K at dst (LISTSEG_KEY_K_FIXED bytes, plus a tail's length)",
            "   and returns its length; the account is the account prefix (LISTSEG_ACCOUNT_WIDTH bytes) */"]
    for k in KEYS:
        out += _c_key_builder(k, ctype)
    out += ["", "/* Redis Cluster keys: printf formats and the scripts (core/layout.py's Redis section) */",
            f"#define LISTSEG_REDIS_BLOCK_BITS {REDIS_BLOCK_BITS}", f"#define LISTSEG_REDIS_BUCKETS {REDIS_BUCKETS}"]
    out += [f"#define LISTSEG_{name} {_c_string(globals()[name])}" for name in (
        "REDIS_DIRECTORY_NAMES", "REDIS_DIRECTORY_CREDENTIALS", "REDIS_ACCOUNT_KEY", "REDIS_BLOCK_KEY",
        "REDIS_BUCKET_KEY", "REDIS_BUCKETS_FIELD", "REDIS_VERSION_CONTAINER", "REDIS_LOCATE",
        "REDIS_BUCKET_READ")]
    out += [f"#define LISTSEG_REDIS_LOCATE_KEYS {{{', '.join(_c_string(k) for k in REDIS_LOCATE_KEYS)}}}"]
    out += ["", "#endif  /* LISTSEG_LAYOUT_H */", ""]
    return "\n".join(out)


def _guid_c():
    """GUID_C with the constants it reads: one block, for layout.h and _layout.pxi."""
    return "\n".join([f"#define LISTSEG_HEX_GUID_DIGITS {HEX_GUID_DIGITS}",
                      f"#define LISTSEG_PACKED_GUID_MARK {PACKED_GUID_MARK}",
                      f"#define LISTSEG_ESCAPED_GUID_MARK {ESCAPED_GUID_MARK}", GUID_C])


#: The C function of each Tail packer: (name, bytes it may add to the value's length).
_C_PACKERS = {pack_guid: ("listseg_pack_guid", 1)}


def _c_key_builder(k, ctype):
    args, body, fixed = ["uint8_t *dst"], [], len(k.tag)
    if k.tag:
        body.append(f"memcpy(dst, {_c_string(k.tag)}, {len(k.tag)});")
    at = str(len(k.tag))
    for p in k.parts:
        if isinstance(p, Tail):
            args += [f"const void *{p.name}", f"size_t {p.name}_len"]
            if p.pack:
                packer, extra = _C_PACKERS[p.pack]
                fixed += extra          # room for the longest stored form
                body.append(f"size_t stored = {packer}(dst + {at}, (const uint8_t *){p.name}, {p.name}_len);")
                at = f"{at} + stored"
            else:
                body.append(f"memcpy(dst + {at}, {p.name}, {p.name}_len);")
                at = f"{at} + {p.name}_len"
            continue
        if p is ACCOUNT:
            args.append("const uint8_t *account")
            body.append(f"memcpy(dst + {at}, account, {p.width});")
        else:
            args.append(f"{ctype[p.width]} {p.name}")
            body.append(f"listseg_put_{p.name}(dst + {at}, {p.name});")
        fixed += p.width
        at = str(fixed) if at.isdigit() else f"{at} + {p.width}"
    return [f"#define LISTSEG_KEY_{_c_name(k.name)}_FIXED {fixed}",
            f"static inline size_t listseg_key_{k.name}({', '.join(args)}) {{",
            *("  " + b for b in body), f"  return {at};", "}"]


def pxi():
    ctype = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
    out = [f"# {_GENERATED.format(flag='--pxi')}",
           "# The storage layout for the Cython store: `include \"_layout.pxi\"`. Inline C, no Python call.",
           "from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t", "",
           f"cdef uint32_t LAYOUT_UNKNOWN = 0x{UNKNOWN:X}          # no uid",
           "cdef enum:",
           f"    LAYOUT_PROFILE_HEAD = {PROFILE_HEAD}                 # bits, guid length; then guid, identity"]
    out += [f"    LAYOUT_{_c_name(f.name)}_AT = {at}" for f, at in PROFILE_FIELDS]
    out += [f"    LAYOUT_PROFILE_HEX_GUID = 0x{PROFILE_HEX_GUID:02X}            # ...or bits | this, the guid's 16 bytes, identity",
            f"    LAYOUT_PROFILE_HEX_HEAD = {PROFILE_HEX_HEAD}",
            f"    LAYOUT_HEX_GUID_DIGITS = {HEX_GUID_DIGITS}",
            f"    LAYOUT_PROFILE_BLOCK_BITS = {PROFILE_BLOCK_BITS}              # a profile block: {PROFILES_PER_BLOCK} uids",
            f"    LAYOUT_PROFILE_SLOT_LONG = {PROFILE_SLOT_LONG}             # a slot's length byte: a u16 LE length follows"]
    out += [f"    LAYOUT_{_c_name(f.name)}_WIDTH = {f.width}" for f in INTS]
    out += ["", "# guids: the stored form (layout.py's GUID_C)", "cdef extern from *:", '    """',
            "    #include <stddef.h>", "    #include <stdint.h>", "    #include <string.h>",
            *("    " + line if line else "" for line in _guid_c().splitlines()), '    """',
            "    size_t pack_guid \"listseg_pack_guid\"(uint8_t *dst, const uint8_t *guid, size_t n) noexcept nogil",
            "    void unpack_hex_guid \"listseg_unpack_hex_guid\"(uint8_t *dst, const uint8_t *packed) noexcept nogil"]
    for f in INTS:
        t = ctype[f.width]
        out += ["", f"cdef inline void put_{f.name}(uint8_t *dst, {t} v) noexcept nogil:",
                f'    """{f.doc} ({f.width} bytes, {f.order}-endian)"""']
        out += [f"    dst[{i}] = <uint8_t>(v >> {s})" for i, s in _shifts(f)]
        expr = " | ".join(f"(<{t}>src[{i}] << {s})" for i, s in _shifts(f))
        out += ["", f"cdef inline {t} get_{f.name}(const uint8_t *src) noexcept nogil:", f"    return {expr}"]
    return "\n".join(out) + "\n"


def _value_name(v):
    return f"{v.name} (u{8 * v.width} {'BE' if v.order == 'big' else 'LE'})" if isinstance(v, Int) else v


def markdown():
    rows = ["| database | key | value | what |", "|---|---|---|---|"]
    for k in KEYS:
        parts = [f"`{k.tag.decode()}`"] * bool(k.tag) + [
            f"{p.name} ({'bytes' if isinstance(p, Tail) else ('u%d %s' % (8 * p.width, 'BE' if p.order == 'big' else 'LE'))})"
            for p in k.parts]
        rows.append(f"| {k.db} | {' + '.join(parts)} | {_value_name(k.value)} | {k.doc} |")
    rows += ["", "| record | encoding |", "|---|---|"] + [f"| {n} | {d} |" for n, d in RECORDS.items()]
    rows += ["", f"Channel bits, bit i = channel i: {', '.join(f'{n} = {b}' for n, b in CHANNEL_BIT.items())}."]
    return "\n".join(rows) + "\n"


GENERATED = {"--c-header": ("server/native/layout.h", c_header), "--pxi": ("core/_layout.pxi", pxi)}


def main(argv):
    """--c-header / --pxi print the generated file; --write writes both into the tree; --markdown
    prints the table."""
    import os
    if argv == ["--markdown"]:
        sys.stdout.write(markdown())
    elif argv == ["--write"]:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for path, make in GENERATED.values():
            with open(os.path.join(root, path), "w") as f:
                f.write(make())
    elif len(argv) == 1 and argv[0] in GENERATED:
        sys.stdout.write(GENERATED[argv[0]][1]())
    else:
        sys.exit("usage: python -m listseg.core.layout --c-header | --pxi | --markdown | --write")


if __name__ == "__main__":
    main(sys.argv[1:])
