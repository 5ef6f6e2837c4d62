"""Profile writes of the Redis backend (core/redis_backend.py), under the account's profile lock:
upsert and delete a batch, row by row in Python over prefetched records, then the channel containers."""
from array import array

from pyroaring import BitMap

from listseg.core.errors import InvalidProfile
from listseg.core.layout import (CHANNELS, DELETED, UNKNOWN, channel_names, decode_profile, encode_profile,
                                 encode_uid, redis_account_key, redis_block, redis_block_key, redis_bucket_key)
from listseg.core.parser import value_at


class Writes:
    """Hash writes grouped by key, so a batch is one command per key (and chunk), not per field:
    pipelining a command per field cost most of an import's time in redis-py."""
    CHUNK = 1000                    # fields a command

    def __init__(self):
        self.sets, self.deletes = {}, {}

    def set(self, key, field, value):
        self.sets.setdefault(key, {})[field] = value

    def delete(self, key, field):
        self.deletes.setdefault(key, []).append(field)

    def ops(self):
        """durable()'s ops: the deletes, then the sets."""
        out = []
        for key, fields in self.deletes.items():
            out += [(key, "hdel", key, *fields[i:i + self.CHUNK]) for i in range(0, len(fields), self.CHUNK)]
        for key, mapping in self.sets.items():
            items = list(mapping.items())
            out += [(key, "hset", key, None, None, dict(items[i:i + self.CHUNK]))
                    for i in range(0, len(items), self.CHUNK)]
        return out


def upsert(unit, acct, fields, ends, bits_of):
    """core/backend.py Unit.upsert_profiles, row by row in Python over prefetched state."""
    n = len(ends) // 3
    rows, skipped, memo = [], [], {}
    for k in range(n):
        chans = value_at(fields, ends, 3 * k + 2)
        if chans not in memo:
            try:
                memo[chans] = bits_of(chans)
            except InvalidProfile as e:
                memo[chans] = e
        bits = memo[chans]
        if isinstance(bits, InvalidProfile):
            skipped.append((k, str(bits)))
        else:
            rows.append((value_at(fields, ends, 3 * k), value_at(fields, ends, 3 * k + 1), bits))
    guid_uids = array("I", unit.resolve(acct, b"g" * n, fields, ends, 3, 0))
    ident_uids = array("I", unit.resolve(acct, b"i" * n, fields, ends, 3, 1))
    bad = {k for k, _ in skipped}
    good = [k for k in range(n) if k not in bad]
    stored_g = {rows[j][0]: guid_uids[k] for j, k in enumerate(good) if guid_uids[k] != UNKNOWN}
    stored_i = {rows[j][1]: ident_uids[k] for j, k in enumerate(good) if ident_uids[k] != UNKNOWN and rows[j][1]}
    fresh = list(dict.fromkeys(g for g, _, _ in rows if g not in stored_g))
    meta = redis_account_key(acct)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])       # odd: a profile write is under way
    base = unit.b.durable([(meta, "hincrby", meta, b"next_uid", len(fresh))])[0] - len(fresh) if fresh else 0
    new_uid = {g: base + i for i, g in enumerate(fresh)}
    recs = {uid: decode_profile(raw) for uid, raw in
            unit._records(acct, set(stored_g.values()) | set(stored_i.values())).items()}
    before = {}
    gmap, imap = {}, {}              # what the batch writes: guid -> uid, identity -> uid or None (gone)
    for g, i, bits in rows:
        uid = gmap.get(g, stored_g.get(g, new_uid.get(g)))
        old = recs.get(uid)
        old_bits, _, old_ident = old if old else (0, g, b"")
        before.setdefault(uid, old_bits)
        if i != old_ident:
            if old_ident:
                imap[old_ident] = None
            if i:
                holder = imap[i] if i in imap else stored_i.get(i)
                if holder is not None and holder != uid:
                    if holder in recs:
                        hb, hg, _ = recs[holder]
                        recs[holder] = (hb, hg, b"")
                imap[i] = uid
        recs[uid] = (bits, g, i)
        gmap[g] = uid
    buckets = unit.b.buckets(acct)
    records = Writes()                                     # records first, then the maps that lead to them
    for uid, (bits, g, i) in recs.items():
        records.set(redis_block_key(acct, redis_block(uid), b"p"), str(uid).encode(), encode_profile(bits, g, i))
    unit.b.durable(records.ops())
    maps = Writes()
    for g, uid in gmap.items():
        if stored_g.get(g) != uid:
            maps.set(redis_bucket_key(acct, b"g", g, buckets), g, encode_uid(uid))
    for i, uid in imap.items():
        key = redis_bucket_key(acct, b"i", i, buckets)
        maps.delete(key, i) if uid is None else maps.set(key, i, encode_uid(uid))
    unit.b.durable(maps.ops())
    adds, drops = {}, {}
    for uid, old_bits in before.items():
        bits = recs[uid][0]
        for k, name in enumerate(CHANNELS):
            bit = 1 << k
            if bits & bit and not old_bits & bit:
                adds.setdefault(name, []).append(uid)
            elif old_bits & bit and not bits & bit:
                drops.setdefault(name, []).append(uid)
    update_channels(unit.b, acct, adds, drops)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])       # even: done
    return n - len(skipped), skipped


def delete(unit, acct, guids):
    guids = list(dict.fromkeys(guids))
    if not guids:
        return 0
    fields = b"".join(guids)
    ends, at = array("Q"), 0
    for g in guids:
        at += len(g)
        ends.append(at)
    uids = [u for u in array("I", unit.resolve(acct, b"g" * len(guids), fields, ends)) if u != UNKNOWN]
    if not uids:
        return 0
    meta = redis_account_key(acct)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])
    recs = unit._records(acct, uids)
    buckets = unit.b.buckets(acct)
    drops, maps, records = {}, Writes(), Writes()
    uids = [u for u in uids if u in recs]              # a map entry whose record a crash never wrote
    for uid in uids:
        bits, g, i = decode_profile(recs[uid])
        for kind, key in ((b"g", g), (b"i", i)):
            if key:
                maps.delete(redis_bucket_key(acct, kind, key, buckets), key)
        records.delete(redis_block_key(acct, redis_block(uid), b"p"), str(uid).encode())
        for name in channel_names(bits):
            drops.setdefault(name, []).append(uid)
    unit.b.durable(maps.ops())                         # the maps first: then nothing leads to the records
    unit.b.durable(records.ops())
    update_channels(unit.b, acct, {DELETED: uids}, drops)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])
    return len(uids)


def update_channels(backend, acct, adds, drops):
    """Read-modify-write the touched blocks' containers (under the account's profile lock)."""
    touched = {}
    for change, changes in ((0, adds), (1, drops)):
        for name, uids in changes.items():
            for uid in uids:
                touched.setdefault((name, redis_block(uid)), ([], []))[change].append(uid)
    if not touched:
        return
    items = list(touched.items())
    keys = [redis_block_key(acct, block, b"c:" + name.encode()) for (name, block), _ in items]
    writes = []
    for key, raw, (_, (add, drop)) in zip(keys, backend.get_many(keys), items):
        bm = BitMap.deserialize(raw) if raw else BitMap()
        bm.update(add)
        bm -= BitMap(drop)
        writes.append((key, "set", key, bm.serialize()))
    backend.durable(writes)
