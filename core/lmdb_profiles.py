"""Profile writes and bulk profile reads of the LMDB backend, inside its transactions.

An upsert batch is mostly new profiles: the binding's `put_new_profiles` writes those in one C loop;
the rest (stored guids, identities that move, a guid named twice) are applied here in row order, as
if the batch were written one row at a time. An account's first import is held whole (`ProfileRows`)
and loaded in one unit by `load_new_profiles`, each table written once in key order.
"""
from array import array

from pyroaring import BitMap

from listseg.core.errors import InvalidProfile
from listseg.core.profile import bits_byte
from listseg.core.parser import value_at
from listseg.core.layout import (CHANNEL_BIT, CHANNEL_KEY, CHANNELS, DELETED, GENERATION, GENERATION_KEY, GUID_KEY,
                                 IDENT_KEY, account_prefix, channel_names, decode_profile, decode_uid, encode_profile,
                                 encode_uid)
from listseg.core.profile_blocks import get_record, get_records, put_records


def records(txn, db, p, uids):
    """[(bits, guid, identity) or None] of each uid."""
    return [decode_profile(raw) if raw is not None else None for raw in get_records(txn, db.profile, p, uids)]


def upsert(unit, acct, fields, ends, bits_of):
    """core/backend.py Unit.upsert_profiles, in the unit's write transaction."""
    txn, db, p = unit.txn, unit.db, account_prefix(acct)
    n = len(ends) // 3
    chan_gids, table, bad = _channel_table(txn, fields, ends, bits_of)
    guid_uids = txn.resolve(db.guid, db.ident, p, b"g" * n, fields, ends, 3, 0)
    ident_uids = txn.resolve(db.guid, db.ident, p, b"i" * n, fields, ends, 3, 1)
    state = unit.account_state(acct)
    slow_rows, slow_uids, fast_adds, state["next_uid"] = txn.put_new_profiles(
        db.guid, db.ident, db.profile, p, fields, ends, 3, memoryview(guid_uids).cast("I"),
        memoryview(ident_uids).cast("I"), chan_gids, table, state["next_uid"])
    # the rest: stored guids or identities, or named twice in the batch; in row order
    before, after = {}, {}
    for r, new_uid in zip(memoryview(slow_rows).cast("I"), memoryview(slow_uids).cast("I")):
        uid, old_bits = _put_one(txn, db, p, value_at(fields, ends, 3 * r), value_at(fields, ends, 3 * r + 1),
                                 table[chan_gids[r]], new_uid)
        before.setdefault(uid, old_bits)
        after[uid] = table[chan_gids[r]]
    unit.put_account_state(acct, state)
    _changed(unit, acct)
    adds = {name: _uids(fast_adds[k]) for k, name in enumerate(CHANNELS)}
    drops = {name: array("I") for name in CHANNELS}
    for uid, bits in after.items():       # net change per uid: a channel may flip twice in a batch
        for name, bit in CHANNEL_BIT.items():
            if bits & bit and not before[uid] & bit:
                adds[name].append(uid)
            elif before[uid] & bit and not bits & bit:
                drops[name].append(uid)
    _update_channels(txn, db, p, adds, drops)
    skipped = _skipped(chan_gids, bad)
    return n - len(skipped), skipped


def _channel_table(txn, fields, ends, bits_of):
    """(each row's channel group, the groups' bits as bytes with 0xFF where bits_of refused the
    value, {group: the reason}) of packed (guid, identity, channels) rows."""
    chan_gids, firsts = txn.groups(fields, ends, 3, 2)
    table, bad = bytearray(), {}
    for g, r in enumerate(memoryview(firsts).cast("I")):      # few distinct channel values
        try:
            table.append(bits_of(value_at(fields, ends, 3 * r + 2)))
        except InvalidProfile as e:
            table.append(0xFF)                                 # the row is skipped
            bad[g] = str(e)
    return memoryview(chan_gids).cast("I"), bytes(table), bad


def _skipped(chan_gids, bad):
    """[(row, reason)] of the rows whose channels bits_of refused."""
    return [(r, bad[g]) for r, g in enumerate(chan_gids) if g in bad] if bad else []


class ProfileRows:
    """An account's first import, held in memory, packed as `load_new_profiles` takes it: (guid,
    identity, bits byte) rows, about 66 bytes a row with 32-byte guids (42 of values, 24 of ends)."""

    def __init__(self, database, release):
        self.database = database               # store.Database: its binding packs the rows
        self.fields = bytearray()
        self.ends = array("Q")
        self._release = release

    def close(self):
        """Let the rows go, and another import hold its own."""
        self.fields, self.ends = bytearray(), array("Q")
        release, self._release = self._release, None
        if release is not None:
            release()

    def __len__(self):
        return len(self.ends) // 3

    def add(self, fields, ends, bits_of):
        """Take a parsed (guid, identity, channels) batch; returns [(row, reason)] of the rows left
        out because bits_of refused their channels."""
        with self.database.read() as txn:
            chan_gids, table, bad = _channel_table(txn, fields, ends, bits_of)
            packed, packed_ends = txn.pack_profile_rows(fields, ends, chan_gids, table, len(self.fields))
        self.fields += packed
        self.ends.frombytes(packed_ends)
        return _skipped(chan_gids, bad)

    def batches(self, rows):
        """(fields, ends, bits_of) of `rows` rows at a time, for upsert."""
        for lo in range(0, len(self), rows):
            hi = min(lo + rows, len(self))
            base = self.ends[3 * lo - 1] if lo else 0
            yield (self.fields[base:self.ends[3 * hi - 1]], array("Q", (e - base for e in self.ends[3 * lo:3 * hi])),
                   bits_byte)


def load(unit, acct, rows):
    """core/backend.py Unit.load_profiles, in the unit's write transaction."""
    if unit.generation(acct):
        return None
    txn, db, p = unit.txn, unit.db, account_prefix(acct)
    state = unit.account_state(acct)
    adds, state["next_uid"], _ = txn.load_new_profiles(db.guid, db.ident, db.profile, p, rows.fields, rows.ends,
                                                       state["next_uid"])
    unit.put_account_state(acct, state)
    _changed(unit, acct)
    _update_channels(txn, db, p, {name: _uids(adds[k]) for k, name in enumerate(CHANNELS)}, {})
    return len(rows)


def _uids(raw):
    out = array("I")
    out.frombytes(raw)
    return out


def _put_one(txn, db, p, g, i, bits, new_uid):
    """Insert or update one profile; a guid not stored yet takes new_uid. Returns (uid, old bits)."""
    old = txn.get(db.guid, GUID_KEY.pack(p, g))
    if old is None:
        uid, old_bits, old_ident = new_uid, 0, b""
        txn.put(db.guid, GUID_KEY.pack(p, g), encode_uid(uid))
    else:
        uid = decode_uid(old)
        old_bits, _, old_ident = decode_profile(get_record(txn, db.profile, p, uid))
    if i != old_ident:
        if old_ident:
            txn.delete(db.ident, IDENT_KEY.pack(p, old_ident))
        if i:
            _take_identity(txn, db, p, i, uid)
            txn.put(db.ident, IDENT_KEY.pack(p, i), encode_uid(uid))
    put_records(txn, db.profile, p, [(uid, encode_profile(bits, g, i))])
    return uid, old_bits


def _take_identity(txn, db, p, identity, uid):
    """If another profile holds this identity, clear it there (identities are unique)."""
    holder = txn.get(db.ident, IDENT_KEY.pack(p, identity))
    if holder is None or decode_uid(holder) == uid:
        return
    other = decode_uid(holder)
    bits, guid, _ = decode_profile(get_record(txn, db.profile, p, other))
    put_records(txn, db.profile, p, [(other, encode_profile(bits, guid, b""))])


def _update_channels(txn, db, p, adds, drops):
    """adds and drops: {channel or DELETED: array('I')}, disjoint."""
    for name in adds.keys() | drops.keys():
        if not adds.get(name) and not drops.get(name):
            continue
        key = CHANNEL_KEY.pack(p, name.encode())
        raw = txn.get(db.channels, key)
        bm = BitMap.deserialize(raw) if raw else BitMap()
        bm |= BitMap(adds.get(name, ()))
        bm -= BitMap(drops.get(name, ()))
        txn.put(db.channels, key, bm.serialize())


def _changed(unit, acct):
    """Move the profiles generation (core/keyindex.py trusts the profile index only at its own)."""
    unit.txn.put(unit.db.accounts, GENERATION_KEY.pack(account_prefix(acct)),
                 GENERATION.pack(unit.generation(acct) + 1))


def delete(unit, acct, guids):
    """core/backend.py Unit.delete_profiles, in the unit's write transaction."""
    txn, db, p = unit.txn, unit.db, account_prefix(acct)
    drops = {name: array("I") for name in CHANNELS}
    gone = array("I")
    for g in guids:
        old = txn.get(db.guid, GUID_KEY.pack(p, g))
        if old is None:
            continue
        uid = decode_uid(old)
        bits, _, ident = decode_profile(get_record(txn, db.profile, p, uid))
        if ident:
            txn.delete(db.ident, IDENT_KEY.pack(p, ident))
        txn.delete(db.guid, GUID_KEY.pack(p, g))
        put_records(txn, db.profile, p, [(uid, None)])
        for name in channel_names(bits):
            drops[name].append(uid)
        gone.append(uid)
    if gone:
        _changed(unit, acct)
    _update_channels(txn, db, p, {DELETED: gone}, drops)
    return len(gone)
