"""Bulk profile writes (import_csv, upsert): the batch path must give exactly what writing the rows one
at a time, in order, gives. Every test runs on both store bindings (the `store_cls` fixture)."""
import random
from array import array

import pytest

from conftest import TWIN_ONLY, channels_of
from listseg.core import _store_py, parser
from listseg.core.errors import InvalidProfile
from listseg.core.layout import CHANNELS, GUID_KEY
from listseg.core.store import DATABASES, UNKNOWN


class Model:
    """The semantics, one row at a time: guid -> uid (dense, in order, never reused), identities
    unique (the last row naming one takes it), channels as given."""

    def __init__(self):
        self.next_uid = 0
        self.by_guid = {}
        self.profiles = {}          # uid -> [guid, identity, bits]
        self.idents = {}
        self.seen_idents = set()

    def put(self, guid, identity, bits):
        uid = self.by_guid.get(guid)
        if uid is None:
            uid = self.by_guid[guid] = self.next_uid
            self.next_uid += 1
            self.profiles[uid] = [guid, "", 0]
        old = self.profiles[uid][1]
        if identity != old:
            if old:
                del self.idents[old]
            if identity:
                holder = self.idents.get(identity)
                if holder is not None and holder != uid:
                    self.profiles[holder][1] = ""
                self.idents[identity] = uid
        self.profiles[uid] = [guid, identity, bits]
        self.seen_idents.add(identity)


def bits_of(names):
    return sum(1 << CHANNELS.index(n) for n in names)


def check(account, model):
    profiles = account.profiles
    for uid, (guid, identity, bits) in model.profiles.items():
        p = profiles.find(guid=guid)
        assert (p.uid, p.guid, p.identity, p.channels) == (
            uid, guid, identity or None, tuple(n for n in CHANNELS if bits & 1 << CHANNELS.index(n)))
    for identity in model.seen_idents - {""}:
        p = profiles.find(identity=identity)
        assert (p.uid if p else None) == model.idents.get(identity), identity
    channels = channels_of(account)
    assert account.state()["next_uid"] == model.next_uid
    for k, name in enumerate(CHANNELS):
        assert set(channels[name]) == {u for u, (_, _, b) in model.profiles.items() if b & 1 << k}, name


def random_rows(rng, n, guids=40, idents=25):
    """Rows drawn from small pools, so guids repeat, identities move, channels flip."""
    rows = []
    for _ in range(n):
        g = f"g{rng.randrange(guids)}" if rng.random() < 0.6 else f"new{rng.getrandbits(40):x}"
        i = f"id{rng.randrange(idents)}@x.com" if rng.random() < 0.6 else ""
        rows.append((g, i, rng.sample(CHANNELS, rng.randrange(len(CHANNELS) + 1))))
    return rows


def csv_of(rows):
    return "".join(f"{g},{i},{';'.join(c)}\n" for g, i, c in rows).encode()


# -- the cases named in the brief -------------------------------------------------------------------
def test_same_guid_twice_in_a_batch(account):
    report = account.profiles.import_csv([b"a,ia,email\nb,,sms\na,ia2,push\n"])
    assert (report["rows"], report["upserted"], report["invalid"]) == (3, 3, 0)
    a = account.profiles.find(guid="a")
    assert (a.uid, a.identity, a.channels) == (0, "ia2", ("push",))
    assert account.profiles.find(guid="b").uid == 1
    assert account.profiles.find(identity="ia") is None
    ch = channels_of(account)
    assert account.state()["next_uid"] == 2
    assert (list(ch["email"]), list(ch["sms"]), list(ch["push"])) == ([], [1], [0])


def test_identity_moves_between_profiles_in_one_batch(account):
    account.profiles.import_csv([b"a,shared,email\nb,other,\nc,shared,sms\nb,shared,push\n"])
    assert account.profiles.find(identity="shared").guid == "b"
    assert account.profiles.find(guid="a").identity is None
    assert account.profiles.find(guid="c").identity is None
    assert account.profiles.find(identity="other") is None
    assert [account.profiles.find(guid=g).uid for g in "abc"] == [0, 1, 2]


def test_updates_mixed_with_inserts_keep_uid_order(account):
    account.profiles.upsert([("old1", "i1", ["email"]), ("old2", None, [])])
    # new guids interleaved with updates, an identity taken from a stored profile, and a new guid
    # that must go the slow way (its identity is stored): uids still follow row order
    account.profiles.import_csv([b"n1,,sms\nold1,,push\nn2,i1,\nold2,x,email\nn3,fresh,webpush\n"])
    assert [account.profiles.find(guid=g).uid for g in ("old1", "old2", "n1", "n2", "n3")] == [0, 1, 2, 3, 4]
    assert account.profiles.find(identity="i1").guid == "n2"
    assert account.profiles.find(guid="old1").identity is None
    ch = channels_of(account)
    assert (list(ch["email"]), list(ch["sms"]), list(ch["push"]), list(ch["webpush"])) == ([1], [2], [0], [4])


def test_a_channel_flipping_within_a_batch_ends_as_the_last_row_says(account):
    account.profiles.upsert([("a", None, ["email"])])
    account.profiles.import_csv([b"a,,\na,,email\nb,,email\nb,,\nb,,email\n"])
    account.profiles.upsert([("c", None, ["sms"]), ("c", None, []), ("c", None, ["sms"])])
    ch = channels_of(account)
    assert list(ch["email"]) == [0, 1] and list(ch["sms"]) == [2]


def test_bad_channel_rows_are_skipped_and_take_no_uid(account):
    data = b"guid,identity,channels\na,ia,email\nb,ib,fax\nc,,\n,x,email\nb,ib2,sms\n"
    report = account.profiles.import_csv([data])
    assert (report["rows"], report["upserted"], report["invalid"]) == (5, 3, 2)
    assert report["errors"] == [(5, "empty guid"),
                                (0, "unknown channel 'fax'; expected one of " + ", ".join(CHANNELS))]
    assert [account.profiles.find(guid=g).uid for g in "abc"] == [0, 2, 1]
    assert account.profiles.find(identity="ib") is None
    assert account.profiles.find(identity="ib2").guid == "b"


def test_errors_across_batches_stay_in_file_order(account):
    # 6-row batches, each written on the import thread while the next parses; one error in each,
    # alternately a parse error (empty guid) and a channel error (only known when written)
    lines, expected = [b"guid,identity,channels\n"], []
    for k in range(42):
        if k % 6 != 3:
            lines.append(b"g%d,,email\n" % k)
        elif k % 12 == 3:
            lines.append(b",x,email\n")
            expected.append((k + 2, "empty guid"))
        else:
            lines.append(b"g%d,,fax%d\n" % (k, k))
            expected.append((0, f"unknown channel 'fax{k}'; expected one of " + ", ".join(CHANNELS)))
    report = account.profiles.import_csv(lines, batch_rows=6)
    assert (report["rows"], report["upserted"], report["invalid"]) == (42, 35, 7)
    assert report["errors"] == expected
    assert [account.profiles.find(guid=f"g{k}").uid for k in (0, 4, 41)] == [0, 3, 34]


def test_channel_spellings(account):
    account.profiles.import_csv([b'a,,"Email; SMS ;"\nb,,PUSH\nc,, \n'])
    assert account.profiles.find(guid="a").channels == ("email", "sms")
    assert account.profiles.find(guid="b").channels == ("push",)
    assert account.profiles.find(guid="c").channels == ()


def test_upsert_rejects_out_of_range_bits(account):
    with pytest.raises(InvalidProfile):
        account.profiles.upsert([("a", None, 1 << len(CHANNELS))])
    assert account.profiles.upsert([("a", None, 0b101)]) == 1
    assert account.profiles.find(guid="a").channels == ("email", "push")


def fail_every_unit(account, monkeypatch):
    """From now on each unit of the account's backend fails after it has written all it would."""
    write = account.backend.write

    def failing(fn):
        def run(unit):
            fn(unit)
            raise RuntimeError("disk on fire")
        return write(run)
    monkeypatch.setattr(account.backend, "write", failing)


def test_a_failing_batch_writes_nothing(account, monkeypatch):
    if not account.backend.atomic_bulk_writes:
        pytest.skip("this backend's profile batch is not one unit (core/redis_backend.py says what it keeps)")
    account.profiles.upsert([("a", "ia", ["email"])])
    fail_every_unit(account, monkeypatch)
    with pytest.raises(RuntimeError):
        account.profiles.import_csv([b"a,ib,sms\nb,ia,push\nc,ic,email\n"])
    monkeypatch.undo()
    model = Model()
    model.put("a", "ia", bits_of(["email"]))
    check(account, model)
    assert account.profiles.find(guid="c") is None and account.profiles.find(identity="ic") is None


# -- against the model --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_import_matches_one_row_at_a_time(account, seed):
    rng = random.Random(seed)
    model = Model()
    for round_ in range(3):
        rows = random_rows(rng, 300)
        report = account.profiles.import_csv([csv_of(rows)], batch_rows=rng.choice([7, 64, 1000]))
        assert report["upserted"] == len(rows) and report["invalid"] == 0
        for g, i, c in rows:
            model.put(g, i, bits_of(c))
        check(account, model)


@pytest.mark.parametrize("seed", range(3))
def test_upsert_matches_one_row_at_a_time(account, seed):
    rng = random.Random(seed)
    model = Model()
    for _ in range(3):
        rows = random_rows(rng, 200)
        assert account.profiles.upsert([(g, i or None, c) for g, i, c in rows]) == len(rows)
        for g, i, c in rows:
            model.put(g, i, bits_of(c))
        check(account, model)
    assert account.profiles.delete(["g1", "g2"]) == len({"g1", "g2"} & set(model.by_guid))


def test_large_fresh_import(account):
    rows = [(f"{k:032x}", f"u{k}@x.com" if k % 3 else "", CHANNELS[: k % 4]) for k in range(50_000)]
    report = account.profiles.import_csv([csv_of(rows)], batch_rows=20_000)
    assert report["upserted"] == 50_000
    for k in (0, 1, 2, 49_999):
        p = account.profiles.find(guid=f"{k:032x}")
        assert (p.uid, p.identity, p.channels) == (k, f"u{k}@x.com" if k % 3 else None, CHANNELS[: k % 4])
    ch = channels_of(account)
    assert len(ch["email"]) == 37_500 and len(ch["push"]) == 12_500


def test_other_accounts_keys_around(engine):
    # account 1's profile keys sort after account 0's: appending account 0's records must fall back
    a, b = engine.account("a"), engine.account("b")
    b.profiles.upsert([("x", "ix", ["sms"])])
    a.profiles.import_csv([b"p,ip,email\nq,,\n"])
    b.profiles.import_csv([b"y,ip,push\n"])
    assert (a.profiles.find(guid="q").uid, b.profiles.find(guid="y").uid) == (1, 1)
    assert a.profiles.find(identity="ip").guid == "p" and b.profiles.find(identity="ip").guid == "y"


# -- the store methods: compiled and twin agree -------------------------------------------------------
def _batch(rows):
    _, batch = parser.parse_all(csv_of(rows), parser.PROFILES)
    return batch


def _run(store_cls, path, rows, stored):
    """Call groups/resolve/put_new_profiles on a fresh store; returns the outputs and every key."""
    path.mkdir()
    store = store_cls(str(path), 1 << 28, list(DATABASES))
    db = {name: store.db(name) for name in DATABASES}
    p = b"\x00\x00\x00\x07"
    txn = store.begin(True)
    for k, g in enumerate(stored):
        txn.put(db["guid"], GUID_KEY.pack(p, g.encode()), k.to_bytes(4, "little"))
        txn.put(db["ident"], p + b"id-" + g.encode(), k.to_bytes(4, "little"))
    batch = _batch(rows)
    n = batch.valid
    gids, firsts = txn.groups(batch.fields, batch.ends, 3, 2)
    table = bytes(0xFF if batch.value(r, 2) == b"bad" else len(batch.value(r, 2))
                  for r in memoryview(firsts).cast("I"))
    gu = txn.resolve(db["guid"], db["ident"], p, b"g" * n, batch.fields, batch.ends, 3, 0)
    iu = txn.resolve(db["guid"], db["ident"], p, b"i" * n, batch.fields, batch.ends, 3, 1)
    out = txn.put_new_profiles(db["guid"], db["ident"], db["profile"], p, batch.fields, batch.ends, 3,
                               memoryview(gu).cast("I"), memoryview(iu).cast("I"),
                               memoryview(gids).cast("I"), table, 100)
    txn.commit()
    with store.begin() as txn:
        keys = {name: txn.scan(db[name], b"", b"\xff" * 8, 10 ** 6) for name in ("guid", "ident", "profile")}
    store.close()
    return (gids, firsts, gu, iu) + tuple(out), keys


@pytest.mark.skipif(TWIN_ONLY, reason="needs the compiled store")
def test_compiled_matches_twin(tmp_path):
    from listseg.core._store import Store
    rng = random.Random(7)
    hexes = [f"{rng.getrandbits(128):032x}" for _ in range(40)]       # stored packed; in capitals, as given
    stored = [f"g{k}" for k in range(0, 60, 3)] + hexes[::2]
    rows = []
    for _ in range(500):
        g = rng.choice([f"g{rng.randrange(60)}", f"n{rng.randrange(400)}", rng.choice(hexes), rng.choice(hexes).upper()])
        i = rng.choice(["", f"id-g{rng.randrange(60)}", f"i{rng.randrange(300)}"])
        rows.append((g, i, [rng.choice(["email", "sms", "bad", ""])]))
    compiled = _run(Store, tmp_path / "c", rows, stored)
    twin = _run(_store_py.Store, tmp_path / "t", rows, stored)
    assert compiled == twin
    slow_rows = compiled[0][4]
    assert 0 < len(slow_rows) // 4 < 500                  # both paths exercised


def test_resolve_reads_one_column(tmp_path, store_cls):
    store = store_cls(str(tmp_path), 1 << 26, list(DATABASES))
    g, i = store.db("guid"), store.db("ident")
    with store.begin(True) as txn:
        txn.put(g, b"PPPPgb", (5).to_bytes(4, "little"))
        txn.put(i, b"PPPPic", (6).to_bytes(4, "little"))
    batch = _batch([("ga", "ic", []), ("gb", "", ["email"])])
    with store.begin() as txn:
        def uids(kinds, *args):
            return list(array("I", txn.resolve(g, i, b"PPPP", kinds, batch.fields, batch.ends, *args)))
        assert uids(b"gg", 3, 0) == [UNKNOWN, 5]
        assert uids(b"ii", 3, 1) == [6, UNKNOWN]
        assert list(array("I", txn.resolve(g, i, b"PPPP", b"gi", b"gbic", array("Q", [2, 4])))) == [5, 6]
        with pytest.raises(ValueError):
            txn.resolve(g, i, b"PPPP", b"gg", batch.fields, batch.ends)        # 6 ends, 2 kinds, nvals 1
        gids, firsts = txn.groups(b"abab", array("Q", [1, 2, 3, 4]))
        assert (list(array("I", gids)), list(array("I", firsts))) == ([0, 1, 0, 1], [0, 1])
    store.close()


# -- an account's first import: held whole, loaded in key order (issue 16) ----------------------------
def _fresh_rows(n, seed=3):
    rng = random.Random(seed)
    return [(f"{rng.getrandbits(128):032x}", f"c{rng.getrandbits(40)}" if k % 4 else "", CHANNELS[: k % 5])
            for k in range(n)]


def test_first_import_is_loaded_in_one_unit_past_the_bound_in_batches(account, monkeypatch):
    if not account.backend.bulk_load_rows:
        pytest.skip("this backend upserts every import in batches")
    monkeypatch.setattr(type(account.backend), "bulk_load_rows", 250)
    loads = []
    load = account.profiles._load
    monkeypatch.setattr(account.profiles, "_load", lambda rows: loads.append(len(rows)) or load(rows))
    rng, model = random.Random(11), Model()
    rows = random_rows(rng, 600)
    report = account.profiles.import_csv([csv_of(rows[k:k + 50]) for k in range(0, 600, 50)], batch_rows=100)
    assert report["upserted"] == 600
    assert loads == [200]                     # batches of 100 rows held while 200 + 100 <= 250
    for g, i, c in rows:
        model.put(g, i, bits_of(c))
    check(account, model)
    account.profiles.import_csv([csv_of(rows[:50])])          # no longer the first import: batches
    assert loads == [200]


def test_a_profile_written_during_the_first_import_makes_it_upsert_in_order(account, monkeypatch):
    if not account.backend.bulk_load_rows:
        pytest.skip("this backend upserts every import in batches")
    load = account.profiles._load

    def racing(rows):                          # another writer gets in before the load
        account.profiles.upsert([("g1", "id3@x.com", ["sms"]), ("zz", "", [])])
        return load(rows)
    monkeypatch.setattr(account.profiles, "_load", racing)
    rows = random_rows(random.Random(5), 300)
    report = account.profiles.import_csv([csv_of(rows[k:k + 20]) for k in range(0, 300, 20)], batch_rows=64)
    assert report["upserted"] == 300 and report["invalid"] == 0
    model = Model()
    model.put("g1", "id3@x.com", bits_of(["sms"]))
    model.put("zz", "", 0)
    for g, i, c in rows:
        model.put(g, i, bits_of(c))
    check(account, model)


def test_one_first_import_is_held_at_a_time(engine):
    """The held rows are the memory bound's: a second first import meanwhile upserts in batches."""
    if not engine.backend.bulk_load_rows:
        pytest.skip("this backend upserts every import in batches")
    held = engine.backend.profile_rows()
    assert engine.backend.profile_rows() is None
    b = engine.account("b")
    assert b.profiles.import_csv([b"x,ix,email\ny,,sms\n"])["upserted"] == 2
    assert b.profiles.find(identity="ix").uid == 0 and b.profiles.find(guid="y").uid == 1
    held.close()
    again = engine.backend.profile_rows()
    assert again is not None
    again.close()
    with pytest.raises(RuntimeError):                 # an import that fails lets its rows go too
        engine.account("c").profiles.import_csv(_failing_chunks())
    engine.backend.profile_rows().close()


def _failing_chunks():
    yield b"p,ip,email\n"
    raise RuntimeError("the client went away")


def test_a_failing_first_import_writes_nothing(account, monkeypatch):
    if not account.backend.bulk_load_rows:
        pytest.skip("this backend upserts every import in batches")
    fail_every_unit(account, monkeypatch)
    with pytest.raises(RuntimeError):
        account.profiles.import_csv([csv_of(_fresh_rows(1000))], batch_rows=300)
    monkeypatch.undo()
    assert account.state()["next_uid"] == 0 and account.profiles.find(guid=_fresh_rows(1)[0][0]) is None
    assert not any(channels_of(account).values())


@pytest.mark.skipif(TWIN_ONLY, reason="page fill is the compiled binding's (the twin does not append)")
def test_first_import_builds_full_pages(tmp_path, monkeypatch):
    """Written in key order the guid and identity tables' pages fill; inserted between keys (as
    batches of random keys are) they split in half."""
    import harness
    import lmdb
    from listseg.core.lmdb_backend import LmdbBackend
    rows = _fresh_rows(30_000)
    chunks = [csv_of(rows[k:k + 1000]) for k in range(0, len(rows), 1000)]

    def leaf_pages(bulk):
        with monkeypatch.context() as m:
            if not bulk:
                m.setattr(LmdbBackend, "bulk_load_rows", 0)
            with harness.open_engine(tmp_path / f"bulk{bulk}", backend="lmdb") as e:
                assert e.account().profiles.import_csv(chunks, batch_rows=1000)["upserted"] == 30_000
                path = e.backend.lmdb_path
        env = lmdb.open(path, max_dbs=len(DATABASES) + 1, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                return sum(txn.stat(env.open_db(name.encode(), txn=txn))["leaf_pages"] for name in ("guid", "ident"))
        finally:
            env.close()
    loaded, batched = leaf_pages(True), leaf_pages(False)
    assert loaded < 0.8 * batched, (loaded, batched)


def _load_run(store_cls, path, rows, stored_after):
    """load_new_profiles of rows (guid, identity, bits) on a fresh store where another account's keys
    (stored_after) sort after this one's; returns the outputs and every key."""
    path.mkdir()
    store = store_cls(str(path), 1 << 28, list(DATABASES))
    db = {name: store.db(name) for name in DATABASES}
    p = b"\x00\x00\x00\x07"
    fields, ends = bytearray(), array("Q")
    for g, i, bits in rows:
        for value in (g, i, bytes([bits])):
            fields += value
            ends.append(len(fields))
    with store.begin(True) as txn:
        for k, g in enumerate(stored_after):
            txn.put(db["guid"], b"\x00\x00\x00\x08" + g, k.to_bytes(4, "little"))
        out = txn.load_new_profiles(db["guid"], db["ident"], db["profile"], p, fields, ends, 40)
    with store.begin() as txn:
        keys = {name: txn.scan(db[name], b"", b"\xff" * 8, 10 ** 6) for name in ("guid", "ident", "profile")}
    store.close()
    return out, keys


@pytest.mark.skipif(TWIN_ONLY, reason="needs the compiled store")
@pytest.mark.parametrize("after", [[], [b"a", b"z"]], ids=["appends", "inserts"])
def test_load_compiled_matches_twin(tmp_path, after):
    """Keys the 8-byte radix cannot tell apart (a shared 12-byte head, prefixes of each other, NUL
    bytes, runs long and short), guids stored packed and escaped (their stored order is not their
    order as given), repeats, identities moving: the compiled load writes what the twin writes."""
    from listseg.core._store import Store
    rng = random.Random(2)
    pool = ([b"customer-%06d" % rng.randrange(3000) for _ in range(400)] + [b"ab", b"ab\x00", b"ab\x00\x00", b"a",
            b"ab\x00\x00\x00\x00\x00\x00\x00x"] + [b"%032x" % rng.getrandbits(128) for _ in range(300)] +
            [b"%032X" % rng.getrandbits(128) for _ in range(20)] + [b"\x00" + b"%016x" % k for k in range(10)] +
            [b"\x01" + b"%032x" % k for k in range(10)])
    rows = []
    for _ in range(3000):
        g = rng.choice(pool)
        i = rng.choice([b"", rng.choice(pool), b"same-identity-for-many"])
        rows.append((g, i, rng.randrange(32)))
    compiled = _load_run(Store, tmp_path / "c", rows, after)
    twin = _load_run(_store_py.Store, tmp_path / "t", rows, after)
    assert compiled == twin
    assert compiled[0][2] == len({g for g, _, _ in rows})
