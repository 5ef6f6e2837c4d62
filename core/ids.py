"""Profiles of one account: guid -> uid, identity -> uid, uid -> profile, reachability bitmaps.

uids are dense uint32s, assigned in order and never reused. Only profiles qualify for segments.
"""
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import accumulate

from pyroaring import BitMap, FrozenBitMap

from listseg.core import parser
from listseg.core.errors import InvalidProfile
from listseg.core.keyindex import ProfileIndex, resolve_rows
from listseg.core.layout import (CHANNEL_BIT, CHANNEL_KEY, CHANNELS, DELETED, GENERATION, GENERATION_KEY, GUID_KEY,
                                 IDENT_KEY, PROFILE_KEY, UNKNOWN, channel_names, decode_profile, decode_uid,
                                 encode_profile, encode_uid)
# DELETED: versions are immutable, so a deleted member stays in its segment's bitmap until the next
# version; sizes subtract the deleted set meanwhile.


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
        if name not in CHANNEL_BIT:
            raise InvalidProfile(f"unknown channel {name!r}; expected one of {', '.join(CHANNELS)}")
        bits |= CHANNEL_BIT[name]
    return bits


def _decode(uid, raw):
    bits, guid, identity = decode_profile(raw)
    return Profile(uid, guid.decode(), identity.decode() or None, channel_names(bits))


def _value(fields, ends, i):
    """Value i of a packed batch (fields concatenated, ends their cumulative end offsets)."""
    return fields[ends[i - 1] if i else 0:ends[i]]


def _bits_byte(value):
    return value[0]


def _key(value, what):
    value = value.strip(" \t") if isinstance(value, str) else value.strip(b" \t")
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > parser.MAX_FIELD:
        raise InvalidProfile(f"{what} longer than {parser.MAX_FIELD} bytes")
    if b"\n" in raw or b"\r" in raw:
        raise InvalidProfile(f"line break in {what}")
    return raw


LINE_BREAK = "line break in guid or identity"


def _drop_line_breaks(batch):
    """(batch, rows dropped): a parsed profiles batch without the rows whose guid or identity holds a
    CR or LF (a quoted field may). Such a key would break the newline framing of ListMembers, the
    export and the profile index. Rare, so a plain loop."""
    if b"\n" not in batch.fields and b"\r" not in batch.fields:
        return batch, 0
    fields, ends, dropped = bytearray(), array("Q"), 0
    for row in batch.values():
        if any(b"\n" in v or b"\r" in v for v in row[:2]):
            dropped += 1
            continue
        for v in row:
            fields += v
            ends.append(len(fields))
    return replace(batch, fields=bytes(fields), ends=memoryview(ends)), dropped


class Profiles:
    """Profile operations of one account; every method takes or opens its own transaction."""

    def __init__(self, database, account):
        self.database = database
        self.db = database.db
        self.account = account            # core.engine.Account
        self.prefix = account.prefix
        self._generation_key = GENERATION_KEY.pack(self.prefix)
        self.index = ProfileIndex(database, self._index_source, self.generation, account.engine.profile_index)

    def generation(self, txn):
        """The profiles generation: bumped by every transaction that writes this account's profiles."""
        raw = txn.get(self.db.accounts, self._generation_key)
        return GENERATION.unpack(raw) if raw else 0

    def _changed(self, txn):
        txn.put(self.db.accounts, self._generation_key, GENERATION.pack(self.generation(txn) + 1))

    def _index_source(self, txn):
        """What the profile index holds: (newline-ended guids, their uids) and the same of identities."""
        uids = array("I", range(self.account.load_state(txn)["next_uid"]))
        out = []
        for identities in (False, True):
            keys, found = txn.member_guids(self.db.profile, self.prefix, uids, identities)
            out.append((keys, memoryview(found).cast("I")))
        return out

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows):
        """Insert or update profiles [(guid, identity or None, channel names or bits)] in one
        transaction. Returns the number upserted. An identity moves to the profile that names it last."""
        fields, ends = bytearray(), array("Q")
        for guid, identity, channels in rows:
            g = _key(guid, "guid")
            if not g:
                raise InvalidProfile("empty guid")
            i = _key(identity, "identity") if identity else b""
            bits = channels if isinstance(channels, int) else channel_bits(channels)
            if not 0 <= bits < 1 << len(CHANNELS):
                raise InvalidProfile(f"channel bits {bits!r} out of range")
            fields += g
            ends.append(len(fields))
            fields += i
            ends.append(len(fields))
            fields.append(bits)                  # the channels value is the bits byte itself
            ends.append(len(fields))
        if not ends:
            return 0
        upserted, _ = self.database.write(lambda txn: self._write_batch(txn, bytes(fields), ends, _bits_byte))
        return upserted

    def _write_batch(self, txn, fields, ends, bits_of):
        """Write packed (guid, identity, channels) rows as if one at a time in order, in txn.
        bits_of(channels value) -> bits, or raises InvalidProfile and the row is skipped.
        Returns (rows written, [(row, reason)] of the skipped ones)."""
        db, p = self.db, self.prefix
        n = len(ends) // 3
        chan_gids, firsts = txn.groups(fields, ends, 3, 2)
        chan_gids = memoryview(chan_gids).cast("I")
        table, bad = bytearray(), {}
        for g, r in enumerate(memoryview(firsts).cast("I")):      # few distinct channel values
            try:
                table.append(bits_of(_value(fields, ends, 3 * r + 2)))
            except InvalidProfile as e:
                table.append(0xFF)                                 # put_new_profiles skips the row
                bad[g] = str(e)
        guid_uids = txn.resolve(db.guid, db.ident, p, b"g" * n, fields, ends, 3, 0)
        ident_uids = txn.resolve(db.guid, db.ident, p, b"i" * n, fields, ends, 3, 1)
        state = self.account.load_state(txn)
        slow_rows, slow_uids, fast_adds, state["next_uid"] = txn.put_new_profiles(
            db.guid, db.ident, db.profile, p, fields, ends, 3, memoryview(guid_uids).cast("I"),
            memoryview(ident_uids).cast("I"), chan_gids, bytes(table), state["next_uid"])
        # the rest: stored guids or identities, or named twice in the batch; in row order
        before, after = {}, {}
        for r, new_uid in zip(memoryview(slow_rows).cast("I"), memoryview(slow_uids).cast("I")):
            uid, old_bits = self._put_one(txn, _value(fields, ends, 3 * r), _value(fields, ends, 3 * r + 1),
                                          table[chan_gids[r]], new_uid)
            before.setdefault(uid, old_bits)
            after[uid] = table[chan_gids[r]]
        self.account.save_state(txn, state)
        self._changed(txn)
        adds = {name: array("I") for name in CHANNELS}
        drops = {name: array("I") for name in CHANNELS}
        for k, name in enumerate(CHANNELS):
            adds[name].frombytes(fast_adds[k])
        for uid, bits in after.items():       # net change per uid: a channel may flip twice in a batch
            for name, bit in CHANNEL_BIT.items():
                if bits & bit and not before[uid] & bit:
                    adds[name].append(uid)
                elif before[uid] & bit and not bits & bit:
                    drops[name].append(uid)
        self._update_channels(txn, adds, drops)
        skipped = [(r, bad[g]) for r, g in enumerate(chan_gids) if g in bad] if bad else []
        return n - len(skipped), skipped

    def _put_one(self, txn, g, i, bits, new_uid):
        """Insert or update one profile; a guid not stored yet takes new_uid. Returns (uid, old bits)."""
        db, p = self.db, self.prefix
        old = txn.get(db.guid, GUID_KEY.pack(p, g))
        if old is None:
            uid, old_bits, old_ident = new_uid, 0, b""
            txn.put(db.guid, GUID_KEY.pack(p, g), encode_uid(uid))
        else:
            uid = decode_uid(old)
            old_bits, _, old_ident = decode_profile(txn.get(db.profile, PROFILE_KEY.pack(p, uid)))
        if i != old_ident:
            if old_ident:
                txn.delete(db.ident, IDENT_KEY.pack(p, old_ident))
            if i:
                self._take_identity(txn, i, uid)
                txn.put(db.ident, IDENT_KEY.pack(p, i), encode_uid(uid))
        txn.put(db.profile, PROFILE_KEY.pack(p, uid), encode_profile(bits, g, i))
        return uid, old_bits

    def _take_identity(self, txn, identity, uid):
        """If another profile holds this identity, clear it there (identities are unique)."""
        db, p = self.db, self.prefix
        holder = txn.get(db.ident, IDENT_KEY.pack(p, identity))
        if holder is None or decode_uid(holder) == uid:
            return
        key = PROFILE_KEY.pack(p, decode_uid(holder))
        bits, guid, _ = decode_profile(txn.get(db.profile, key))
        txn.put(db.profile, key, encode_profile(bits, guid, b""))

    def _update_channels(self, txn, adds, drops):
        """adds and drops: {channel or DELETED: array('I')}, disjoint."""
        for name in adds.keys() | drops.keys():
            if not adds.get(name) and not drops.get(name):
                continue
            key = CHANNEL_KEY.pack(self.prefix, name.encode())
            raw = txn.get(self.db.channels, key)
            bm = BitMap.deserialize(raw) if raw else BitMap()
            bm |= BitMap(adds.get(name, ()))
            bm -= BitMap(drops.get(name, ()))
            txn.put(self.db.channels, key, bm.serialize())

    def delete(self, guids):
        """Delete profiles by guid; returns how many existed. Their uids are never reused. A guid that
        no profile could have (over 256 bytes, a line break) is InvalidProfile, and nothing is deleted."""
        try:
            keys = [_key(g, "guid") for g in guids]
        except InvalidProfile as e:
            e.metadata["field"] = "guids"           # DeleteProfilesRequest's
            raise
        return self.database.write(lambda txn: self._delete(txn, keys))

    def _delete(self, txn, keys):
        db, p = self.db, self.prefix
        drops = {name: array("I") for name in CHANNELS}
        gone = array("I")
        deleted = 0
        for g in keys:
            old = txn.get(db.guid, GUID_KEY.pack(p, g))
            if old is None:
                continue
            uid = decode_uid(old)
            bits, _, ident = decode_profile(txn.get(db.profile, PROFILE_KEY.pack(p, uid)))
            if ident:
                txn.delete(db.ident, IDENT_KEY.pack(p, ident))
            txn.delete(db.guid, GUID_KEY.pack(p, g))
            txn.delete(db.profile, PROFILE_KEY.pack(p, uid))
            for name in channel_names(bits):
                drops[name].append(uid)
            gone.append(uid)
            deleted += 1
        if deleted:
            self._changed(txn)
        self._update_channels(txn, {DELETED: gone}, drops)
        return deleted

    def import_csv(self, chunks, batch_rows=500_000):
        """Import a `guid,identity,channels` CSV from an iterable of byte chunks, one transaction per
        batch of rows. Returns {"rows", "upserted", "invalid", "errors": [(line, reason)] (first 100)};
        a row with an unknown channel, or a line break inside its guid or identity, is invalid with
        line 0.

        Batches are big because new guids and identities land all over their B-trees and each commit
        rewrites every leaf page it touched: a batch costs about as much as the tables are large."""
        p = parser.Parser(parser.PROFILES)
        report = {"rows": 0, "upserted": 0, "invalid": 0, "errors": []}
        memo = {}

        def bits_of(value):                 # bits, or the reason the value is bad
            bits = memo.get(value)
            if bits is None:
                try:
                    bits = channel_bits(value.decode().split(";"))
                except InvalidProfile as e:
                    bits = str(e)
                if len(memo) < 4096:
                    memo[value] = bits
            if isinstance(bits, str):
                raise InvalidProfile(bits)
            return bits

        def write(batch):
            return self.database.write(lambda txn: self._write_batch(txn, batch.fields, batch.ends, bits_of))

        def collect(result):
            upserted, skipped = result
            report["upserted"] += upserted
            report["invalid"] += len(skipped)
            for _, reason in skipped[: 100 - len(report["errors"])]:
                report["errors"].append((0, reason))

        def take():
            batch = p.take()
            for line, reason in p.errors(batch, 100 - len(report["errors"])):
                report["errors"].append((line, reason))
            report["invalid"] += batch.invalid
            report["rows"] += batch.valid + batch.invalid
            batch, dropped = _drop_line_breaks(batch)
            report["invalid"] += dropped
            report["errors"] += [(0, LINE_BREAK)] * min(dropped, 100 - len(report["errors"]))
            return batch

        # A batch is written on a thread (the LMDB work releases the GIL) while the next one parses;
        # each batch's result is collected before the next is counted, so errors stay in file order.
        writer, pending = None, None
        try:
            for chunk in chunks:
                p.feed(chunk)
                if p.pending_rows >= batch_rows:
                    if pending is not None:
                        collect(pending.result())
                        pending = None
                    batch = take()
                    if batch.valid:
                        writer = writer or ThreadPoolExecutor(1, thread_name_prefix="profile-import")
                        pending = writer.submit(write, batch)
            p.finish()
            if pending is not None:
                collect(pending.result())
                pending = None
            batch = take()
            if batch.valid:
                collect(write(batch))
        finally:
            if writer is not None:
                writer.shutdown(wait=True)      # an in-flight batch commits or fails whole
        return report

    # -- reads -----------------------------------------------------------------------------
    def resolve(self, txn, batch):
        """uids (array('I'), UNKNOWN where there is no profile) of a parsed upload batch's rows: from
        the profile index when it is current for txn, else from LMDB."""
        pair = self.index.get(txn, build=False)
        if pair is not None:
            raw = resolve_rows(*pair, batch.kinds, batch.fields, batch.ends)
        else:
            raw = txn.resolve(self.db.guid, self.db.ident, self.prefix, batch.kinds, batch.fields, batch.ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def resolve_keys(self, txn, keys, kind=None):
        """uids of keys in order, UNKNOWN where there is no profile. keys are (kind, key) pairs, kind
        'g' or 'i', or, with `kind` given, plain keys all of that kind. Packed with C-level loops:
        membership checks call this for every batch."""
        if kind is None:
            kinds = bytes(103 if k in ("g", b"g") else 105 for k, _ in keys)
            keys = [key for _, key in keys]
        else:
            kinds = (b"g" if kind in ("g", b"g") else b"i") * len(keys)
        encoded = [k.strip(" \t").encode() if isinstance(k, str) else bytes(k).strip(b" \t") for k in keys]
        if encoded and kinds.count(kinds[:1]) == len(kinds):          # one kind: the index may answer
            uids = self.lookup_lines(txn, b"\n".join(encoded) + b"\n", kinds[:1], len(encoded))
            if uids is not None:
                return uids
        ends = array("Q", accumulate(map(len, encoded)))
        raw = txn.resolve(self.db.guid, self.db.ident, self.prefix, kinds, b"".join(encoded), ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def lookup_lines(self, txn, lines, kind, count=None):
        """uids of newline-ended keys of one kind ('g' or 'i'; array('I'), UNKNOWN where there is no
        profile) from the profile index, or None when the index is not current for txn: then ask
        resolve_keys. `count`, when given, is how many keys lines must hold; a key with a newline
        inside breaks that (None)."""
        pair = self.index.get(txn)
        if pair is None or (count is not None and lines.count(b"\n") != count):
            return None
        uids = array("I")
        uids.frombytes(pair[kind not in ("g", b"g")].lookup(lines))
        return uids

    def get(self, txn, uid):
        raw = txn.get(self.db.profile, PROFILE_KEY.pack(self.prefix, uid))
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
        for uid in uids:
            raw = txn.get(db.profile, PROFILE_KEY.pack(p, uid))
            if raw is None:
                continue
            _, guid, ident = decode_profile(raw)
            out.append((uid, guid.decode(), ident.decode() if ident else None))
        return out

    def deleted(self, txn):
        """The uids of every profile deleted so far (uids are never reused)."""
        raw = txn.get(self.db.channels, CHANNEL_KEY.pack(self.prefix, DELETED.encode()))
        return FrozenBitMap.deserialize(raw) if raw else FrozenBitMap()

    def channel_bitmaps(self, txn):
        out = {}
        for name in CHANNELS:
            raw = txn.get(self.db.channels, CHANNEL_KEY.pack(self.prefix, name.encode()))
            out[name] = FrozenBitMap.deserialize(raw) if raw else FrozenBitMap()
        return out
