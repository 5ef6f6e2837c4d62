"""Profiles of one account: validation, CSV import, and look-ups (through the profile index when it
is current, else the backend).

uids are dense uint32s, assigned in order and never reused. Only profiles qualify for segments. A
deleted profile's uid joins the account's deleted set: versions are immutable, so it stays in its
segments' bitmaps until their next version, and sizes subtract the deleted set meanwhile.
"""
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import accumulate

from listseg.core import parser
from listseg.core.errors import InvalidProfile
from listseg.core.keyindex import ProfileIndex, resolve_rows
from listseg.core.layout import CHANNEL_BIT, CHANNELS, UNKNOWN, channel_names


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


def _decode(uid, rec):
    bits, guid, identity = rec
    return Profile(uid, guid.decode(), identity.decode() or None, channel_names(bits))


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
    """Profile operations of one account; each method reads a snapshot or writes a unit of the
    account's backend (core/backend.py), or takes the caller's snapshot."""

    def __init__(self, backend, account):
        self.backend = backend
        self.account = account            # core.engine.Account
        self.number = account.number
        self.index = ProfileIndex(backend, self._index_source, self.generation, account.engine.profile_index)

    def generation(self, snap):
        """The profiles generation: it moves with every write of this account's profiles."""
        return snap.generation(self.number)

    def _index_source(self, snap):
        """What the profile index holds: (newline-ended guids, their uids) and the same of identities."""
        return [(keys, memoryview(found).cast("I")) for keys, found in snap.all_keys(self.number)]

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows):
        """Insert or update profiles [(guid, identity or None, channel names or bits)] in one
        unit. Returns the number upserted. An identity moves to the profile that names it last."""
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
        upserted, _ = self._write_batch(bytes(fields), ends, _bits_byte)
        return upserted

    def _write_batch(self, fields, ends, bits_of):
        """Upsert packed (guid, identity, channels) rows in one unit (core/backend.py upsert_profiles)."""
        return self.backend.write(lambda unit: unit.upsert_profiles(self.number, fields, ends, bits_of))

    def delete(self, guids):
        """Delete profiles by guid; returns how many existed. Their uids are never reused. A guid that
        no profile could have (over 256 bytes, a line break) is InvalidProfile, and nothing is deleted."""
        try:
            keys = [_key(g, "guid") for g in guids]
        except InvalidProfile as e:
            e.metadata["field"] = "guids"           # DeleteProfilesRequest's
            raise
        return self.backend.write(lambda unit: unit.delete_profiles(self.number, keys))

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
            return self._write_batch(batch.fields, batch.ends, bits_of)

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

        # A batch is written on a thread (the backend's C loops release the GIL) while the next one parses;
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
    def resolve(self, snap, batch):
        """uids (array('I'), UNKNOWN where there is no profile) of a parsed upload batch's rows: from
        the profile index when it is current for snap, else from the backend."""
        pair = self.index.get(snap, build=False)
        if pair is not None:
            raw = resolve_rows(*pair, batch.kinds, batch.fields, batch.ends)
        else:
            raw = snap.resolve(self.number, batch.kinds, batch.fields, batch.ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def resolve_keys(self, snap, keys, kind=None):
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
            uids = self.lookup_lines(snap, b"\n".join(encoded) + b"\n", kinds[:1], len(encoded))
            if uids is not None:
                return uids
        ends = array("Q", accumulate(map(len, encoded)))
        raw = snap.resolve(self.number, kinds, b"".join(encoded), ends)
        uids = array("I")
        uids.frombytes(raw)
        return uids

    def lookup_lines(self, snap, lines, kind, count=None):
        """uids of newline-ended keys of one kind ('g' or 'i'; array('I'), UNKNOWN where there is no
        profile) from the profile index, or None when the index is not current for snap: then ask
        resolve_keys. `count`, when given, is how many keys lines must hold; a key with a newline
        inside breaks that (None)."""
        pair = self.index.get(snap)
        if pair is None or (count is not None and lines.count(b"\n") != count):
            return None
        uids = array("I")
        uids.frombytes(pair[kind not in ("g", b"g")].lookup(lines))
        return uids

    def get_many(self, snap, uids):
        """[Profile] of the uids that still have one, in the given order."""
        return [_decode(uid, rec) for uid, rec in zip(uids, snap.profiles(self.number, uids)) if rec is not None]

    def find(self, guid=None, identity=None):
        """The profile with this guid or identity, or None."""
        kind, key = ("g", guid) if guid is not None else ("i", identity)
        with self.backend.snapshot() as snap:
            uid = self.resolve_keys(snap, [(kind, key)])[0]
            found = self.get_many(snap, [uid]) if uid != UNKNOWN else []
            return found[0] if found else None

    def deleted(self, snap):
        """The uids of every profile deleted so far (uids are never reused)."""
        return snap.deleted(self.number)
