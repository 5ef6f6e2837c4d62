"""Profiles of one account: guid -> uid, identity -> uid, uid -> profile, reachability bitmaps.

uids are dense uint32s, assigned in order and never reused. Only profiles qualify for segments.
"""
import struct
from array import array
from dataclasses import dataclass

from pyroaring import BitMap, FrozenBitMap

from listseg.core import parser
from listseg.core.store import UNKNOWN, u32, uid_value

CHANNELS = ("email", "sms", "push", "whatsapp", "webpush")
_CHANNEL_BIT = {name: 1 << i for i, name in enumerate(CHANNELS)}
_PROFILE_HEAD = struct.Struct("<BH")   # channel bits, guid length; then guid, then identity


class InvalidProfile(ValueError):
    """A profile that cannot be stored (empty guid, over-long field, unknown channel)."""


@dataclass(frozen=True)
class Profile:
    uid: int
    guid: str
    identity: str | None
    channels: tuple

    def to_dict(self):
        return {"uid": self.uid, "guid": self.guid, "identity": self.identity,
                "channels": list(self.channels)}


def channel_bits(names):
    bits = 0
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name not in _CHANNEL_BIT:
            raise InvalidProfile(f"unknown channel {name!r}; expected one of {', '.join(CHANNELS)}")
        bits |= _CHANNEL_BIT[name]
    return bits


def channel_names(bits):
    return tuple(name for name in CHANNELS if bits & _CHANNEL_BIT[name])


def _encode(bits, guid, identity):
    return _PROFILE_HEAD.pack(bits, len(guid)) + guid + (identity or b"")


def _decode(uid, raw):
    bits, glen = _PROFILE_HEAD.unpack_from(raw)
    start = _PROFILE_HEAD.size
    guid = raw[start:start + glen].decode()
    identity = raw[start + glen:].decode() or None
    return Profile(uid, guid, identity, channel_names(bits))


def _key(value, what):
    value = value.strip() if isinstance(value, str) else value.strip(b" \t")
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > parser.MAX_FIELD:
        raise InvalidProfile(f"{what} longer than {parser.MAX_FIELD} bytes")
    return raw


class Profiles:
    """Profile operations of one account; every method takes or opens its own transaction."""

    def __init__(self, database, account):
        self.database = database
        self.db = database.db
        self.account = account            # core.engine.Account
        self.prefix = account.prefix

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows):
        """Insert or update profiles [(guid, identity or None, channel names or bits)] in one
        transaction. Returns the number upserted. An identity moves to the profile that names it last."""
        prepared = []
        for guid, identity, channels in rows:
            g = _key(guid, "guid")
            if not g:
                raise InvalidProfile("empty guid")
            i = _key(identity, "identity") if identity else b""
            bits = channels if isinstance(channels, int) else channel_bits(channels)
            prepared.append((g, i, bits))
        if not prepared:
            return 0
        return self.database.write(lambda txn: self._upsert(txn, prepared))

    def _upsert(self, txn, prepared):
        db, p = self.db, self.prefix
        state = self.account.load_state(txn)
        next_uid = state["next_uid"]
        adds = {name: array("I") for name in CHANNELS}
        drops = {name: array("I") for name in CHANNELS}
        for g, i, bits in prepared:
            old = txn.get(db.guid, p + g)
            if old is None:
                uid, old_bits, old_ident = next_uid, 0, b""
                next_uid += 1
                txn.put(db.guid, p + g, uid_value(uid))
            else:
                uid = int.from_bytes(old, "little")
                raw = txn.get(db.profile, p + u32(uid))
                old_bits, glen = _PROFILE_HEAD.unpack_from(raw)
                old_ident = raw[_PROFILE_HEAD.size + glen:]
            if i != old_ident:
                if old_ident:
                    txn.delete(db.ident, p + old_ident)
                if i:
                    self._take_identity(txn, i, uid)
                    txn.put(db.ident, p + i, uid_value(uid))
            txn.put(db.profile, p + u32(uid), _encode(bits, g, i))
            for name, bit in _CHANNEL_BIT.items():
                if bits & bit and not old_bits & bit:
                    adds[name].append(uid)
                elif old_bits & bit and not bits & bit:
                    drops[name].append(uid)
        state["next_uid"] = next_uid
        self.account.save_state(txn, state)
        self._update_channels(txn, adds, drops)
        return len(prepared)

    def _take_identity(self, txn, identity, uid):
        """If another profile holds this identity, clear it there (identities are unique)."""
        db, p = self.db, self.prefix
        holder = txn.get(db.ident, p + identity)
        if holder is None or int.from_bytes(holder, "little") == uid:
            return
        huid = int.from_bytes(holder, "little")
        raw = txn.get(db.profile, p + u32(huid))
        bits, glen = _PROFILE_HEAD.unpack_from(raw)
        start = _PROFILE_HEAD.size
        txn.put(db.profile, p + u32(huid), _encode(bits, raw[start:start + glen], b""))

    def _update_channels(self, txn, adds, drops):
        for name in CHANNELS:
            if not adds[name] and not drops[name]:
                continue
            key = self.prefix + name.encode()
            raw = txn.get(self.db.channels, key)
            bm = BitMap.deserialize(raw) if raw else BitMap()
            bm.update(adds[name])
            bm.difference_update(BitMap(drops[name]))
            txn.put(self.db.channels, key, bm.serialize())

    def delete(self, guids):
        """Delete profiles by guid; returns how many existed. Their uids are never reused."""
        keys = [_key(g, "guid") for g in guids]
        return self.database.write(lambda txn: self._delete(txn, keys))

    def _delete(self, txn, keys):
        db, p = self.db, self.prefix
        drops = {name: array("I") for name in CHANNELS}
        deleted = 0
        for g in keys:
            old = txn.get(db.guid, p + g)
            if old is None:
                continue
            uid = int.from_bytes(old, "little")
            raw = txn.get(db.profile, p + u32(uid))
            bits, glen = _PROFILE_HEAD.unpack_from(raw)
            ident = raw[_PROFILE_HEAD.size + glen:]
            if ident:
                txn.delete(db.ident, p + ident)
            txn.delete(db.guid, p + g)
            txn.delete(db.profile, p + u32(uid))
            for name in channel_names(bits):
                drops[name].append(uid)
            deleted += 1
        self._update_channels(txn, {name: array("I") for name in CHANNELS}, drops)
        return deleted

    def import_csv(self, chunks, batch_rows=100_000):
        """Import a `guid,identity,channels` CSV from an iterable of byte chunks.
        Returns {"rows", "upserted", "invalid", "errors": [(line, reason)] (first 100)}."""
        p = parser.Parser(parser.PROFILES)
        report = {"rows": 0, "upserted": 0, "invalid": 0, "errors": []}

        def flush():
            batch = p.take()
            rows = []
            for line_values in batch.values():
                g, i, ch = line_values
                rows.append((g, i or None, ch.decode().split(";")))
            for line, reason in p.errors(batch)[: 100 - len(report["errors"])]:
                report["errors"].append((line, reason))
            report["invalid"] += batch.invalid
            report["rows"] += batch.valid + batch.invalid
            try:
                report["upserted"] += self.upsert(rows)
            except InvalidProfile:
                # a bad channel name: fall back to one row at a time to name the culprit
                for row in rows:
                    try:
                        report["upserted"] += self.upsert([row])
                    except InvalidProfile as e:
                        report["invalid"] += 1
                        if len(report["errors"]) < 100:
                            report["errors"].append((0, str(e)))

        for chunk in chunks:
            p.feed(chunk)
            if p.pending_rows >= batch_rows:
                flush()
        p.finish()
        flush()
        return report

    # -- reads -----------------------------------------------------------------------------
    def resolve(self, txn, batch):
        """uids (array('I'), UNKNOWN where there is no profile) of a parsed upload batch's rows."""
        raw = txn.resolve(self.db.guid, self.db.ident, self.prefix, batch.kinds, batch.fields, batch.ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def resolve_keys(self, txn, keys):
        """uids of [(kind 'g'|'i', key)] in order, UNKNOWN where there is no profile."""
        kinds = bytearray()
        fields = bytearray()
        ends = array("Q")
        for kind, key in keys:
            kinds.append(103 if kind in ("g", b"g", 103) else 105)
            fields += key.strip().encode() if isinstance(key, str) else bytes(key).strip(b" \t")
            ends.append(len(fields))
        raw = txn.resolve(self.db.guid, self.db.ident, self.prefix, bytes(kinds), bytes(fields), ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def get(self, txn, uid):
        raw = txn.get(self.db.profile, self.prefix + u32(uid))
        return _decode(uid, raw) if raw is not None else None

    def find(self, guid=None, identity=None):
        """The profile with this guid or identity, or None."""
        kind, key = ("g", guid) if guid is not None else ("i", identity)
        with self.database.read() as txn:
            uid = self.resolve_keys(txn, [(kind, key)])[0]
            return None if uid == UNKNOWN else self.get(txn, uid)

    def guids(self, txn, uids):
        """[(uid, guid, identity)] for uids that still have a profile, in the given order."""
        out = []
        db, p = self.db, self.prefix
        head = _PROFILE_HEAD
        for uid in uids:
            raw = txn.get(db.profile, p + u32(uid))
            if raw is None:
                continue
            glen = head.unpack_from(raw)[1]
            ident = raw[head.size + glen:]
            out.append((uid, raw[head.size:head.size + glen].decode(), ident.decode() if ident else None))
        return out

    def channel_bitmaps(self, txn):
        out = {}
        for name in CHANNELS:
            raw = txn.get(self.db.channels, self.prefix + name.encode())
            out[name] = FrozenBitMap.deserialize(raw) if raw else FrozenBitMap()
        return out
