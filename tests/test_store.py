"""The LMDB bindings: the compiled store and its py-lmdb twin behave alike and share a file format."""
import os
from array import array

import pytest

from listseg.core import _store_py, keyorder, store
from listseg.core.layout import GUID_KEY
from listseg.core.parser import parse_all
from listseg.core.store import UNKNOWN, Database, next_key


def test_get_put_delete_scan(tmp_path, store_cls):
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    d = db.db.segments
    db.write(lambda t: [t.put(d, b"k%03d" % i, b"v%d" % i) for i in range(50)])
    with db.read() as t:
        assert t.get(d, b"k007") == b"v7"
        assert t.get(d, b"nope") is None
        assert [k for k, _ in Database.scan(t, d, b"k01")] == [b"k01%d" % i for i in range(10)]
        assert len(list(Database.scan(t, d, b"k", page=7))) == 50
    assert db.write(lambda t: t.delete(d, b"k007")) is True
    assert db.write(lambda t: t.delete(d, b"k007")) is False
    db.close()


def test_failed_write_changes_nothing(tmp_path, store_cls):
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    d = db.db.segments

    def boom(t):
        t.put(d, b"a", b"1")
        raise RuntimeError("halfway")
    with pytest.raises(RuntimeError):
        db.write(boom)
    with db.read() as t:
        assert t.get(d, b"a") is None
    db.close()


def test_resolve_in_any_order(tmp_path, store_cls):
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    pre = b"\x00\x00\x00\x07"
    keys = [os.urandom(16).hex().encode() for _ in range(3000)]

    def fill(t):
        for uid, k in enumerate(keys):
            t.put(db.db.guid, GUID_KEY.pack(pre, k), uid.to_bytes(4, "little"))
        t.put(db.db.ident, pre + b"jane", (5).to_bytes(4, "little"))
        t.put(db.db.guid, GUID_KEY.pack(b"\x00\x00\x00\x08", b"other-account"), (9).to_bytes(4, "little"))
    db.write(fill)
    lines = [b"g," + k for k in reversed(keys)] + [b"i,jane", b"g,jane", b"g,missing", b"g,other-account"]
    _, batch = parse_all(b"\n".join(lines))
    with db.read() as t:
        uids = array("I")
        uids.frombytes(t.resolve(db.db.guid, db.db.ident, pre, batch.kinds, batch.fields, batch.ends))
    assert list(uids) == list(range(2999, -1, -1)) + [5, UNKNOWN, UNKNOWN, UNKNOWN]
    db.close()


def _ranged_batch(db, pre):
    """Fill db for the key-range tests; return an upload batch and the uids it resolves to: guids of
    every length around the sort key's 8 bytes, keys that share their first 8 bytes, non-ASCII keys,
    guids stored packed (32 hex digits) beside ones that are not (capitals, one digit short, a mark
    byte first: stored escaped), whose stored order is not their order as given, identities,
    repeats, unknowns."""
    hexes = [os.urandom(16).hex().encode() for _ in range(2000)]
    guids = hexes + [h.upper() for h in hexes[:40]] + [h[:31] for h in hexes[40:80]] + \
        [b"\x01" + h[:16] for h in hexes[80:120]] + [b"k" * n for n in range(1, 12)] + \
        [b"samefirst8-%d" % i for i in range(50)] + ["é%d" % i for i in range(50)]
    guids = [g.encode() if isinstance(g, str) else g for g in guids]
    idents = [b"c%d" % i for i in range(300)]

    def fill(t):
        for uid, g in enumerate(guids):
            t.put(db.db.guid, GUID_KEY.pack(pre, g), uid.to_bytes(4, "little"))
        for uid, i in enumerate(idents):
            t.put(db.db.ident, pre + i, (10_000 + uid).to_bytes(4, "little"))
    db.write(fill)
    rows = [(b"g", g) for g in guids[::-1]] + [(b"i", i) for i in idents] + [(b"g", g) for g in guids[:99]] + \
        [(b"g", b"unknown-%d" % i) for i in range(40)] + [(b"i", b"c1"), (b"g", b"c1")]
    uid = {(b"g", g): u for u, g in enumerate(guids)} | {(b"i", i): 10_000 + u for u, i in enumerate(idents)}
    return parse_all(b"\n".join(k + b"," + v for k, v in rows))[1], array("I", [uid.get(r, UNKNOWN) for r in rows])


def test_resolve_by_key_range_covers_each_row_once(tmp_path, store_cls):
    """An upload's batch resolved in parts: key_ranges splits it into ranges of about equal size,
    each row's sort key (the compiled loop's and the twin's alike) in exactly one; a range looks up
    its rows into `out` and leaves every other row as it was; the parts together are the whole."""
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    pre = b"\x00\x00\x00\x07"
    batch, expected = _ranged_batch(db, pre)
    n, args = batch.valid, (db.db.guid, db.db.ident, pre, batch.kinds, batch.fields, batch.ends, 1, 0)
    keys = [keyorder.sort_key(batch.kinds[r], batch.value(r)) for r in range(n)]
    ranges = keyorder.key_ranges(batch.kinds, batch.fields, batch.ends, 1, 0, 3)
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == keyorder.ALL_KEYS
    assert all(hi + 1 == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    with db.read() as t:
        whole = array("I")
        whole.frombytes(t.resolve(*args))
        untouched = 7_777_777
        out, done = array("I", [untouched]) * n, set()
        for lo, hi in ranges:
            mine = {r for r in range(n) if lo <= keys[r] <= hi}
            assert n / 3 * 0.8 < len(mine) < n / 3 * 1.2
            assert t.resolve(*args, lo, hi, out) is None
            done |= mine
            assert {r for r in range(n) if out[r] != untouched} == done
        alone = array("I")
        alone.frombytes(t.resolve(*args, *ranges[1]))
        lo, hi = ranges[1]
        assert all(alone[r] == (whole[r] if lo <= keys[r] <= hi else UNKNOWN) for r in range(n))
    assert out == whole == expected
    db.close()


def test_a_snapshot_resolves_in_parts_as_in_one(tmp_path, store_cls, monkeypatch):
    """Snapshot.resolve(parts=N) (an upload's batches): the same uids as one part; a unit (no
    database to read beside it) resolves in one; a part that fails fails the whole call rather than
    leave its rows with uids they do not have."""
    from listseg.core import lmdb_backend
    from listseg.core.errors import StoreError
    monkeypatch.setattr(lmdb_backend, "SPLIT_RESOLVE_ROWS", 1)
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    batch, expected = _ranged_batch(db, b"\x00\x00\x00\x07")
    rows = (7, batch.kinds, batch.fields, batch.ends)
    with db.read() as t:
        one = lmdb_backend.LmdbSnapshot(t, db.db).resolve(*rows, parts=3)
        assert lmdb_backend.LmdbSnapshot(t, db.db, db).resolve(*rows, parts=3) == one == expected.tobytes()

        def unreadable():
            raise StoreError("no reader slot")
        monkeypatch.setattr(db, "read", unreadable)
        with pytest.raises(StoreError, match="no reader slot"):
            lmdb_backend.LmdbSnapshot(t, db.db, db).resolve(*rows, parts=3)
    db.close()


def test_twins_share_the_file_format(tmp_path):
    if not store.COMPILED:
        pytest.skip("compiled store not built")
    from listseg.core._store import Store as Compiled
    path = str(tmp_path)
    for writer, reader in ((Compiled, _store_py.Store), (_store_py.Store, Compiled)):
        db = Database(path, map_size=1 << 26, store_cls=writer)
        db.write(lambda t: t.put(db.db.heads, b"key", writer.__module__.encode()))
        db.close()
        db = Database(path, map_size=1 << 26, store_cls=reader)
        with db.read() as t:
            assert t.get(db.db.heads, b"key") == writer.__module__.encode()
        db.close()


def test_map_full_is_a_clean_error_and_loses_nothing(tmp_path, store_cls):
    db = Database(str(tmp_path), map_size=1 << 20, store_cls=store_cls)
    db.write(lambda t: t.put(db.db.versions, b"kept", b"x" * 1000))
    with pytest.raises(store.MapFullError):
        db.write(lambda t: [t.put(db.db.versions, b"big%d" % i, os.urandom(4000)) for i in range(1000)])
    with db.read() as t:
        assert t.get(db.db.versions, b"kept") == b"x" * 1000
        assert t.get(db.db.versions, b"big0") is None
    db.close()


def test_next_key():
    assert next_key(b"ab") == b"ac"
    assert next_key(b"a\xff") == b"b"


@pytest.mark.skipif(bool(os.environ.get("LISTSEG_NO_EXTENSIONS")), reason="twin-only run")
def test_compiled_store_loaded():
    assert store.COMPILED, "listseg.core._store did not load; run `make install`"


@pytest.mark.parametrize("binding", ["lmdb", "lmdb-twin"])
def test_usage_counts_the_pages_lmdb_will_use_again(tmp_path, binding):
    """lmdb_backend.usage's free bytes, from either binding's page counts: deleting profiles frees
    pages (the file does not shrink), and both bindings count one file alike."""
    from conftest import people
    from harness import open_engine
    with open_engine(tmp_path / "data", backend=binding) as engine:
        engine.account().profiles.upsert(people(20_000))
        before = engine.backend.usage()
        engine.account().profiles.delete([f"g{k}" for k in range(0, 20_000, 2)])
        engine.account().profiles.upsert(people(1))        # a later commit: LMDB reuses no page freed by
        after = engine.backend.usage()                      # the one before while a reader may see it
    assert after["free"] > before["free"] + 100 * 4096                 # ~1.6 MB freed here, of a 3.7 MB file
    assert after["free"] < after["file"] <= after["map"]
    other = "lmdb-twin" if binding == "lmdb" else "lmdb"
    with open_engine(tmp_path / "data", backend=other) as engine:
        assert engine.backend.usage()["free"] == after["free"]


def test_member_keys_read_each_profile_from_its_block(tmp_path, store_cls):
    """member_guids over the profile blocks the other code writes (profile_blocks.put_records): packed
    and raw guids, records of 255 bytes and more, empty slots, a missing block, a block that is not
    one (skipped, never read past), uids repeated or out of order; guids or identities."""
    from listseg.core import profile_blocks
    from listseg.core.layout import PROFILE_KEY, encode_profile, frame_keys
    db = Database(str(tmp_path), map_size=1 << 26, store_cls=store_cls)
    pre = b"\x00\x00\x00\x07"
    records = {uid: encode_profile(uid % 32, b"%032x" % (uid * 7919), b"id%d" % uid if uid % 3 else b"")
               for uid in range(70) if uid % 5 != 2}
    records[9] = encode_profile(1, b"G" * 200, b"i" * 250)                    # a long slot
    records[40] = encode_profile(4, b"raw-guid", b"")
    db.write(lambda t: profile_blocks.put_records(t, db.db.profile, pre, sorted(records.items())))
    db.write(lambda t: t.put(db.db.profile, PROFILE_KEY.pack(pre, 3), b"\x05\x01"))   # uids 48-63: not a block
    uids = array("I", list(range(0, 100)) + [10, 10, 64, 1, 65, 200, 5])
    with db.read() as t:
        for identities in (False, True):
            want = frame_keys(((u, None if 48 <= u < 64 else records.get(u)) for u in uids), identities)
            assert t.member_guids(db.db.profile, pre, uids, identities) == want
    db.close()
