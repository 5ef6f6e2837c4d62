"""Bring an LMDB data directory of an older layout up to layout.LAYOUT, when it opens.

Layout 1 -> 2: each guid key is rewritten in its stored form (layout.pack_guid: 32 hex digits as 16
bytes, a guid that starts with a mark byte escaped). Profile records need nothing: a record without
PROFILE_HEX_GUID reads as before, and records written from then on are packed. It is one write
transaction, LAYOUT_KEY with it: a crash leaves layout 1 as it was, and the next open starts again.
(Chunks would not do: a packed key and a layout-1 guid of 17 bytes that starts with a mark are the
same bytes, so a run cut short could not tell which keys it had done.) The membership front refuses
a directory of another layout (server/native/lmdb_source.cc).
"""
import logging

from listseg.core.layout import (ACCOUNT, ESCAPED_GUID_MARK, GUID_KEY, LAYOUT, LAYOUT_KEY, LAYOUT_VERSION,
                                 PACKED_GUID_MARK, is_hex_guid)
from listseg.core.store import next_key

log = logging.getLogger("listseg.store")

#: Keys read per scan call.
PAGE = 10_000


def layout_of(database):
    with database.read() as txn:
        raw = txn.get(database.db.accounts, LAYOUT_KEY.pack())
    return LAYOUT_VERSION.unpack(raw) if raw is not None else 1


def upgrade(database):
    """Rewrite what the data directory holds in layout LAYOUT; a no-op where it does already.
    Raises ValueError for a directory of a later layout (written by newer code)."""
    found = layout_of(database)
    if found == LAYOUT:
        return
    if found > LAYOUT:
        raise ValueError(f"{database.path} holds data of layout {found}; this listseg reads layout {LAYOUT} "
                         "and older: upgrade listseg")

    def run(txn):
        moved = _escape_marked(txn, database) + _pack_hex(txn, database)
        txn.put(database.db.accounts, LAYOUT_KEY.pack(), LAYOUT_VERSION.pack(LAYOUT))
        return moved
    moved = database.write(run)
    if moved:
        log.info("upgraded %s from layout %d to %d: %d guid keys rewritten", database.path, found, LAYOUT,
                 moved)


def _scan(txn, dbi, lo, hi):
    while True:
        items = txn.scan(dbi, lo, hi, PAGE)
        yield from items
        if len(items) < PAGE:
            return
        lo = items[-1][0] + b"\x00"


def _escape_marked(txn, database):
    """The guids that start with a mark byte, escaped, all read before any is written: the escaped
    form of one may be the bytes of another as layout 1 stored it."""
    dbi, width, marked = database.db.guid, ACCOUNT.width, []
    first = txn.scan(dbi, b"", b"\xff" * database.max_key_size, 1)
    while first:
        account = first[0][0][:width]             # each account's keys, from its first one on
        marked += _scan(txn, dbi, account + bytes((PACKED_GUID_MARK,)), account + bytes((ESCAPED_GUID_MARK + 1,)))
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
    for key, value in _scan(txn, dbi, b"", b"\xff" * database.max_key_size):
        if is_hex_guid(key[width:]):
            txn.delete(dbi, key)
            txn.put(dbi, GUID_KEY.pack(key[:width], key[width:]), value)
            moved += 1
    return moved
