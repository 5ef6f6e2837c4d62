"""LMDB's profile table, the records of a block of uids under each key (layout.PROFILE_KEY and
encode_block), read and written a uid at a time over a binding's Txn (get, put and delete by dbi and
key): for lmdb_profiles.py, the twin and the upgrade. The C loops of _store.pyx do the same in bulk.
"""
from listseg.core.errors import StoreError
from listseg.core.layout import PROFILE_KEY, decode_block, encode_block, profile_block


def get_records(txn, dbi, p, uids):
    """[record or None] of each uid: a block is read once while its uids follow each other."""
    out, at, slots = [], None, None
    for uid in uids:
        block, slot = profile_block(uid)
        if block != at:
            at, slots = block, _read_block(txn, dbi, p, block)
        out.append(slots[slot] if slots else None)
    return out


def _read_block(txn, dbi, p, block):
    """The slots of a stored block; None for none, or for bytes that are not one (as the C loop, a
    reader skips them rather than read past them)."""
    raw = txn.get(dbi, PROFILE_KEY.pack(p, block))
    try:
        return decode_block(raw) if raw is not None else None
    except ValueError:
        return None


def get_record(txn, dbi, p, uid):
    return get_records(txn, dbi, p, (uid,))[0]


def put_records(txn, dbi, p, items):
    """Write [(uid, record or None)] (None: no profile there): a block is read and written once
    while its uids follow each other; a block left with no profile is deleted. A stored block that
    is not one is a StoreError: its other profiles would be lost."""
    at, slots = None, None
    for uid, rec in items:
        block, slot = profile_block(uid)
        if block != at:
            _put_block(txn, dbi, p, at, slots)
            raw = txn.get(dbi, PROFILE_KEY.pack(p, block))
            try:
                at, slots = block, decode_block(raw or b"")
            except ValueError:
                raise StoreError(f"the profile block of uid {uid} is damaged") from None
        slots[slot] = rec
    _put_block(txn, dbi, p, at, slots)


def _put_block(txn, dbi, p, block, slots):
    if block is None:
        return
    raw = encode_block(slots)
    if raw:
        txn.put(dbi, PROFILE_KEY.pack(p, block), raw)
    else:
        txn.delete(dbi, PROFILE_KEY.pack(p, block))
