"""Bring an LMDB data directory of an older layout up to layout.LAYOUT, when it opens.

Layout 1 -> 2: each guid key is rewritten in its stored form (layout.pack_guid: 32 hex digits as 16
bytes, a guid that starts with a mark byte escaped). Layout 2 -> 3: the profile table's records, a
key each, are rewritten by blocks of uids (layout.PROFILE_KEY), each record re-encoded (a guid of 32
hex digits packed). It is one write transaction, LAYOUT_KEY with it: a crash leaves the old layout
as it was, and the next open starts again. (Chunks would not do: a packed key and a layout-1 guid
of 17 bytes that starts with a mark are the same bytes, and so are a block's key and a uid's, so a
run cut short could not tell which keys it had done.) The membership front refuses a directory of
another layout (server/native/lmdb_source.cc).
"""
import logging

from listseg.core.layout import (ACCOUNT, ESCAPED_GUID_MARK, GUID_KEY, LAYOUT, LAYOUT_KEY, LAYOUT_VERSION,
                                 PACKED_GUID_MARK, UID_PROFILE_KEY, decode_profile, encode_profile, is_hex_guid,
                                 is_profile, profile_block)
from listseg.core.profile_blocks import put_records
from listseg.core.store import Database, next_key

log = logging.getLogger("listseg.store")

#: Keys read per scan call (Database.scan reads a page before it hands any out: the upgrade writes
#: behind the last key it was given).
PAGE = 10_000


def layout_of(database):
    """The directory's layout; None for a new one (nothing in it yet)."""
    with database.read() as txn:
        raw = txn.get(database.db.accounts, LAYOUT_KEY.pack())
        if raw is None and not txn.scan(database.db.accounts, b"", b"\xff" * database.max_key_size, 1):
            return None
    return LAYOUT_VERSION.unpack(raw) if raw is not None else 1


def upgrade(database):
    """Rewrite what the data directory holds in layout LAYOUT; a no-op where it does already.
    Raises ValueError for a directory of a later layout (written by newer code)."""
    found = layout_of(database)
    if found == LAYOUT:
        return
    if found is None:
        database.write(lambda txn: txn.put(database.db.accounts, LAYOUT_KEY.pack(), LAYOUT_VERSION.pack(LAYOUT)))
        return
    if found > LAYOUT:
        raise ValueError(f"{database.path} holds data of layout {found}; this listseg reads layout {LAYOUT} "
                         "and older: upgrade listseg")
    log.info("upgrading %s from layout %d to %d: one transaction, ~5 s a million profiles", database.path,
             found, LAYOUT)

    def run(txn):
        moved = _escape_marked(txn, database) + _pack_hex(txn, database) if found < 2 else 0
        blocked = _block_profiles(txn, database) if found < 3 else 0
        txn.put(database.db.accounts, LAYOUT_KEY.pack(), LAYOUT_VERSION.pack(LAYOUT))
        return moved, blocked
    moved, blocked = database.write(run)
    log.info("upgraded %s to layout %d: %d guid keys rewritten, %d profiles put in blocks", database.path, LAYOUT,
             moved, blocked)


def _escape_marked(txn, database):
    """The guids that start with a mark byte, escaped, all read before any is written: the escaped
    form of one may be the bytes of another as layout 1 stored it."""
    dbi, width, marked = database.db.guid, ACCOUNT.width, []
    first = txn.scan(dbi, b"", b"\xff" * database.max_key_size, 1)
    while first:
        account = first[0][0][:width]             # each account's keys, from its first one on
        for mark in (PACKED_GUID_MARK, ESCAPED_GUID_MARK):
            marked += Database.scan(txn, dbi, account + bytes((mark,)), page=PAGE)
        first = txn.scan(dbi, next_key(account), b"\xff" * database.max_key_size, 1)
    for key, _ in marked:
        txn.delete(dbi, key)
    for key, value in marked:
        txn.put(dbi, GUID_KEY.pack(key[:width], key[width:]), value)
    return len(marked)


def _pack_hex(txn, database):
    """Each 32-hex-digit guid's key packed. The packed key sorts before every hex one of its
    account (its first byte is PACKED_GUID_MARK), so the scan never meets a key it wrote."""
    dbi, width, moved = database.db.guid, ACCOUNT.width, 0
    for key, value in Database.scan(txn, dbi, b"", page=PAGE):
        if is_hex_guid(key[width:]):
            txn.delete(dbi, key)
            txn.put(dbi, GUID_KEY.pack(key[:width], key[width:]), value)
            moved += 1
    return moved


def _block_profiles(txn, database):
    """Each uid's profile record moved into its block. The scan goes up the uid keys, and a block's
    key (its first uid >> PROFILE_BLOCK_BITS, or 0) is never past the uid just read: the scan never
    meets a key it wrote, and a block is put only once every uid key it could overwrite is read."""
    dbi, moved, at, block = database.db.profile, 0, None, []
    for key, raw in Database.scan(txn, dbi, b"", page=PAGE):
        p, uid = UID_PROFILE_KEY.parse(key)
        here = (p, profile_block(uid)[0])
        if here != at:
            if block:
                put_records(txn, dbi, at[0], block)
            at, block = here, []
        block.append((uid, encode_profile(*decode_profile(raw)) if is_profile(raw) else raw))
        txn.delete(dbi, key)
        moved += 1
    if block:
        put_records(txn, dbi, at[0], block)
    return moved
