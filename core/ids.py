"""Profiles of one account: upserts and deletes (checked by core/profile.py's rules), the CSV import
(core/profile_import.py), and look-ups (through the profile index when it is current, else the backend).

uids are dense uint32s, assigned in order and never reused. Only profiles qualify for segments. A
deleted profile's uid joins the account's deleted set: versions are immutable, so it stays in its
segments' bitmaps until their next version, and sizes subtract the deleted set meanwhile.
"""
from array import array
from itertools import accumulate

from listseg.core import profile_import
from listseg.core.errors import InvalidProfile
from listseg.core.keyindex import ProfileIndex, resolve_rows
from listseg.core.layout import CHANNELS, UNKNOWN
from listseg.core.profile import bits_byte, channel_bits, from_record, stored_key


class Profiles:
    """Profile operations of one account; each method reads a snapshot or writes a unit of the
    account's backend (core/backend.py), or takes the caller's snapshot."""

    def __init__(self, backend, account):
        self.backend = backend
        self.account = account            # core.engine.Account
        self.number = account.number
        self.index = ProfileIndex(backend, self._index_source, self.generation, account.engine.profile_index,
                                  self._uids_given, account.engine.profile_index_max)

    def generation(self, snap):
        """The profiles generation: it moves with every write of this account's profiles."""
        return snap.generation(self.number)

    def _uids_given(self, snap):
        return (snap.account_state(self.number) or {}).get("next_uid", 0)

    def _index_source(self, snap):
        """What the profile index holds: (newline-ended guids, their uids) and the same of identities."""
        return [(keys, memoryview(found).cast("I")) for keys, found in snap.all_keys(self.number)]

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows):
        """Insert or update profiles [(guid, identity or None, channel names or bits)] in one
        unit. Returns the number upserted. An identity moves to the profile that names it last."""
        fields, ends = bytearray(), array("Q")
        for guid, identity, channels in rows:
            g = stored_key(guid, "guid")
            if not g:
                raise InvalidProfile("empty guid")
            i = stored_key(identity, "identity") if identity else b""
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
        upserted, _ = self._write_batch(bytes(fields), ends, bits_byte)
        return upserted

    def _write_batch(self, fields, ends, bits_of):
        """Upsert packed (guid, identity, channels) rows in one unit (core/backend.py upsert_profiles)."""
        return self.backend.write(lambda unit: unit.upsert_profiles(self.number, fields, ends, bits_of))

    def _first_import_rows(self):
        """The backend's holder of an import's rows (profile_rows) when it bulk-loads an account's
        first import and no profile of this account was ever written; else None."""
        if not self.backend.bulk_load_rows:
            return None
        with self.backend.snapshot() as snap:
            if self.generation(snap):
                return None
        return self.backend.profile_rows()

    def _load(self, rows):
        """Unit.load_profiles of rows in one unit: the rows written, or None if a profile of this
        account was written meanwhile (then nothing was)."""
        return self.backend.write(lambda unit: unit.load_profiles(self.number, rows))

    def delete(self, guids):
        """Delete profiles by guid; returns how many existed. Their uids are never reused. A guid that
        no profile could have (over 256 bytes, a line break) is InvalidProfile, and nothing is deleted."""
        try:
            keys = [stored_key(g, "guid") for g in guids]
        except InvalidProfile as e:
            e.metadata["field"] = "guids"           # DeleteProfilesRequest's
            raise
        return self.backend.write(lambda unit: unit.delete_profiles(self.number, keys))

    def import_csv(self, chunks, batch_rows=profile_import.BATCH_ROWS):
        """Import a `guid,identity,channels` CSV (core/profile_import.py); returns its report."""
        return profile_import.import_csv(self, chunks, batch_rows)

    # -- reads -----------------------------------------------------------------------------
    def resolve(self, snap, batch, parts=1):
        """uids (array('I'), UNKNOWN where there is no profile) of a parsed upload batch's rows: from
        the profile index when it is current for snap, else from the backend (in `parts` key ranges
        side by side: Snapshot.resolve)."""
        pair = self.index.get(snap, build=False)
        if pair is not None:
            raw = resolve_rows(*pair, batch.kinds, batch.fields, batch.ends)
        else:
            raw = snap.resolve(self.number, batch.kinds, batch.fields, batch.ends, parts=parts)
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
        return [from_record(uid, rec) for uid, rec in zip(uids, snap.profiles(self.number, uids)) if rec is not None]

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
