"""The in-memory guid index: compiled vs twin vs a dict, and that it never answers from stale profiles."""
import os
import time
import warnings
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import InProcess, open_engine
from listseg import Client
from listseg.core import _keyindex_py, keyindex, profile_import
from listseg.core.errors import InvalidProfile
from listseg.core.profile import bits_byte

UNKNOWN = 0xFFFFFFFF
IMPLEMENTATIONS = [(_keyindex_py.KeyIndex, _keyindex_py.resolve_rows)]
if keyindex.COMPILED:
    from listseg.core import _keyindex
    IMPLEMENTATIONS.append((_keyindex.KeyIndex, _keyindex.resolve_rows))


def lines(keys):
    return b"".join(k + b"\n" for k in keys)


def answers(index, keys):
    out = array("I")
    out.frombytes(index.lookup(lines(keys)))
    return list(out)


@pytest.mark.skipif(bool(os.environ.get("LISTSEG_NO_EXTENSIONS")), reason="twin-only run")
def test_compiled_index_loaded():
    assert keyindex.COMPILED, "listseg.core._keyindex did not load; run `make install`"


# Keys as the guid table holds them: no newline, no surrounding space or tab (the parser trims them).
stored_key = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").strip(b" \t"))


@settings(max_examples=300, deadline=None)
@given(st.lists(stored_key, max_size=200), st.lists(st.tuples(st.integers(0, 250), st.sampled_from(
    [b"", b" ", b"\t", b" \t "]), st.sampled_from([b"", b" ", b"\t"]), stored_key), max_size=200))
def test_every_implementation_answers_like_a_dict(stored, probes):
    ids = array("I", range(1000, 1000 + len(stored)))
    model = {}
    for key, uid in zip(stored, ids):
        model.setdefault(key, uid)                   # a key named twice keeps its first id
    queries, expected = [], []
    for pick, left, right, other in probes:
        key = stored[pick] if pick < len(stored) else other      # stored keys, padded, and others
        queries.append(left + key + right)
        expected.append(model.get(key, UNKNOWN))
    for impl, _ in IMPLEMENTATIONS:
        index = impl(lines(stored), ids)
        assert index.count == len(stored)
        assert answers(index, queries) == expected, impl


@settings(max_examples=200, deadline=None)
@given(st.lists(stored_key, max_size=60), st.lists(stored_key, max_size=60),
       st.lists(st.tuples(st.booleans(), st.integers(0, 70), stored_key), max_size=150))
def test_upload_rows_resolve_by_kind(guids, identities, rows):
    """A parsed batch's g rows are looked up among the guids, its i rows among the identities."""
    kinds, fields, ends, expected = bytearray(), bytearray(), array("Q"), []
    for is_guid, pick, other in rows:
        keys = guids if is_guid else identities
        key = keys[pick] if pick < len(keys) else other
        kinds.append(103 if is_guid else 105)
        fields += key
        ends.append(len(fields))
        first = keys.index(key) if key in keys else None
        expected.append(UNKNOWN if first is None else (1000 if is_guid else 5000) + first)
    for impl, resolve_rows in IMPLEMENTATIONS:
        pair = (impl(lines(guids), array("I", range(1000, 1000 + len(guids)))),
                impl(lines(identities), array("I", range(5000, 5000 + len(identities)))))
        out = array("I")
        out.frombytes(resolve_rows(*pair, bytes(kinds), bytes(fields), ends))
        assert list(out) == expected, impl


def test_a_big_index_and_its_probe_runs():
    """Enough keys that probes wrap around and run long, and batches pass the compiled loop's block
    of 65,536 keys; every key finds its own id."""
    keys = [b"%032x" % (k * 0x9E3779B97F4A7C15 % (1 << 128)) for k in range(70_000)]
    fields, ends = b"".join(keys), array("Q", range(32, 32 * len(keys) + 1, 32))
    for impl, resolve_rows in IMPLEMENTATIONS:
        index = impl(lines(keys), array("I", range(len(keys))))
        assert answers(index, keys) == list(range(len(keys)))
        assert answers(index, [k[:-1] for k in keys[:100]]) == [UNKNOWN] * 100
        rows = array("I")
        rows.frombytes(resolve_rows(index, index, b"g" * len(keys), fields, ends))
        assert list(rows) == list(range(len(keys)))


@pytest.mark.parametrize("impl", [impl for impl, _ in IMPLEMENTATIONS])
def test_bad_input_is_refused(impl):
    with pytest.raises(ValueError, match="newline"):
        impl(b"a\nb", array("I", [1, 2]))
    with pytest.raises(ValueError, match="keys but"):
        impl(b"a\nb\n", array("I", [1]))
    index = impl(b"a\n", array("I", [7]))
    with pytest.raises(ValueError, match="newline"):
        index.lookup(b"a")
    assert index.lookup(b"") == b""


# -- the index inside the engine ---------------------------------------------------------------------
@pytest.fixture
def account(tmp_path, backend):
    engine = open_engine(tmp_path / "data", backend=backend)
    acct = engine.account()
    acct.profiles.upsert([(f"g{k}", f"id{k}", ["email"]) for k in range(100)])
    up = acct.upload("create", name="s")
    up.feed(b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(0, 100, 2)))
    up.finish()
    yield acct
    engine.close()


def ready_index(acct, rounds=3):
    """Ask (which starts a build), wait for it, and check the index now serves reads. A round that
    ends with no index is a warning with the index's state, and is asked again: on a loaded
    machine a Redis-backed build once came back without one, cause not found (see issue 12's note);
    every round failing fails the test."""
    index = acct.profiles.index
    for _ in range(rounds):
        acct.segments.check_lines("s", b"g0\n", "g")
        # the build may wait its turn: REBUILD_GAP times the last build, which is slow on a loaded machine
        index.wait(timeout=300)
        with acct.backend.snapshot() as snap:
            if index.get(snap, build=False) is not None:
                return
            state = (f"built at {index._current[1]}, generation {acct.profiles.generation(snap)}, "
                     f"failed at {index._failed_at}, thread {index._thread}, timer {index._timer}, "
                     f"turn in {index._not_before - time.monotonic():.3f} s")
        warnings.warn(f"ready_index: no index after a round: {state}")
    raise AssertionError(f"the index was not built: {state}")


def test_bulk_answers_match_the_lmdb_path(account):
    probe = [f"g{k}" for k in range(0, 120, 3)] + [" g4\t", "id4", ""]
    _, slow = account.segments.check_members("s", probe, "g")    # before any index exists: LMDB
    ready_index(account)
    version, flags = account.segments.check_lines("s", "".join(p + "\n" for p in probe).encode(), "g")
    assert (version, list(map(bool, flags))) == (1, slow)
    assert slow[:4] == [True, False, True, False] and slow[-3:] == [True, False, False]
    _, fast = account.segments.check_members("s", probe, "g")
    assert fast == slow


def test_a_deleted_profile_is_no_member_at_once(account):
    """The index still maps g2 after the delete; the profiles generation makes readers skip it."""
    ready_index(account)
    assert account.segments.is_member("s", "g", "g2")
    account.profiles.delete(["g2"])
    assert not account.segments.is_member("s", "g", "g2")
    assert account.segments.check_lines("s", b"g2\ng4\n", "g")[1] == b"\x00\x01"


def test_a_new_profile_counts_at_once(account):
    ready_index(account)
    account.profiles.upsert([("fresh", None, [])])
    up = account.upload("append", segment="s")
    up.feed(b"Type,Identity\ng,fresh\n")
    assert up.finish()["report"]["qualified"] == 1
    assert account.segments.check_lines("s", b"fresh\n", "g")[1] == b"\x01"


def test_the_index_is_rebuilt_after_a_change(account):
    ready_index(account)
    account.profiles.upsert([("later", None, [])])
    with account.backend.snapshot() as snap:
        assert account.profiles.index.get(snap) is None             # stale: LMDB answers
    account.profiles.index.wait(timeout=300)
    with account.backend.snapshot() as snap:
        pair = account.profiles.index.get(snap)
        assert pair is not None and pair[0].count == 101 and pair[1].count == 100


def test_line_breaks_in_guids_and_identities_are_refused(account):
    report = account.profiles.import_csv([b'guid,identity,channels\nn1,,\n"two\nlines",,\nn3,"id\r3",\nn4,,\n'])
    assert (report["upserted"], report["invalid"]) == (2, 2)
    assert report["errors"] == [(0, profile_import.LINE_BREAK)] * 2
    with pytest.raises(InvalidProfile, match="line break in guid"):
        account.profiles.upsert([("a\nb", None, [])])
    ready_index(account)                                  # no such key reached the store


def test_a_stored_guid_with_a_newline_keeps_the_lmdb_path(account):
    """A store written before line breaks were refused: the guid cannot be framed by newlines, so the
    build refuses and readers keep using LMDB."""
    fields, ends = b"two\nlines" + b"\x00", array("Q", [9, 9, 10])
    account.profiles._write_batch(fields, ends, bits_byte)
    account.segments.check_lines("s", b"g0\n", "g")
    account.profiles.index.wait(timeout=300)
    with account.backend.snapshot() as snap:
        assert account.profiles.index.get(snap) is None
    assert account.segments.check_members("s", ["g0", "two\nlines"], "g")[1] == [True, False]


def upload_report(acct, body, **kw):
    up = acct.upload("replace", segment="s", **kw)
    up.feed(b"Type,Identity\n" + body)
    return up.finish()["report"]


def test_uploads_resolve_alike_from_the_index_and_from_lmdb(account, monkeypatch):
    body = b"".join(b"%s,%s\n" % ((b"g", b"g%d" % k) if k % 3 else (b"i", b"id%d" % k)) for k in range(0, 130, 1))
    body += b"g,g5\ni,id6\ni,nobody\ng,nobody\ni,g7\n"             # duplicates, unknowns, a guid as identity
    ready_index(account)
    account.profiles.upsert([("extra", None, [])])                   # the index is stale now
    with monkeypatch.context() as m:
        m.setattr(account.profiles.index, "warm", lambda: None)
        with account.backend.snapshot() as snap:
            assert account.profiles.index.get(snap) is None            # so LMDB resolves
        cold = upload_report(account, body)
        cold_members = account.segments.members("s", count=1000)[1]
    ready_index(account)
    warm = upload_report(account, body)
    warm_members = account.segments.members("s", count=1000)[1]
    drop = ("version", "bytes")
    assert {k: v for k, v in warm.items() if k not in drop} == {k: v for k, v in cold.items() if k not in drop}
    assert (warm["qualified"], warm["unknown"], warm["duplicates"]) == (100, 33, 2)
    assert list(warm_members) == list(cold_members) == list(range(100))


def test_an_identity_that_moves_is_resolved_where_it_is_now(account):
    ready_index(account)
    account.profiles.upsert([("g1", "id2", ["email"])])          # id2 moves from g2 to g1
    assert upload_report(account, b"i,id2\n")["qualified"] == 1
    assert list(account.segments.members("s")[1]) == [1]


def test_the_index_can_be_turned_off(tmp_path):
    with open_engine(tmp_path / "data", profile_index=False) as engine:
        acct = engine.account()
        acct.profiles.upsert([("g1", "id1", []), ("g2", None, [])])
        up = acct.upload("create", name="s")
        up.feed(b"Type,Identity\ni,id1\n")
        up.finish()
        assert acct.segments.check_lines("s", b"g1\ng2\n", "g") == (1, b"\x01\x00")
        with acct.backend.snapshot() as snap:
            assert acct.profiles.index.get(snap) is None
        assert acct.profiles.index._thread is None            # and none is being built


def test_no_index_past_its_bound(tmp_path):
    """An account with more profiles than the bound (counted as uids given: deleted ones too) keeps
    no index, and lets the one it had go; its look-ups read the store and answer alike."""
    with open_engine(tmp_path / "data", profile_index_max=150) as engine:
        acct = engine.account()
        acct.profiles.upsert([(f"g{k}", f"id{k}", []) for k in range(100)])
        with acct.backend.snapshot() as snap:
            acct.profiles.index.get(snap)                           # stale: a build is requested
        acct.profiles.index.wait(timeout=300)
        assert acct.profiles.index.sizes()["guids"] == 100          # under the bound: built
        acct.profiles.upsert([(f"g{k}", None, []) for k in range(100, 200)])
        with acct.backend.snapshot() as snap:
            assert acct.profiles.index.get(snap) is None
        acct.profiles.index.wait(timeout=300)
        assert acct.profiles.index.sizes() == {"guids": 0, "identities": 0, "builds": 1}   # past it: none
        with acct.backend.snapshot() as snap:
            assert acct.profiles.index.get(snap) is None and acct.profiles.index._thread is None
        up = acct.upload("create", name="s")
        up.feed(b"Type,Identity\ni,id5\ng,g150\ng,nobody\n")
        assert up.finish()["report"]["qualified"] == 2
        assert acct.segments.check_lines("s", b"g5\ng150\ng7\n", "g") == (1, b"\x01\x01\x00")


def test_serve_without_the_index(tmp_path, serve_process):
    _, target = serve_process(tmp_path / "data", "--no-profile-index")
    with Client(target, timeout=10) as c:
        c.import_profiles(b"guid,identity,channels\ng1,,\ng2,,\n")
        c.upload(b"Type,Identity\ng,g1\n", name="s")
        assert c.check_members("s", ["g1", "g2"]) == (1, [True, False])


def test_uploads_use_the_index_but_never_start_a_build(account):
    ready_index(account)
    account.profiles.upsert([("extra", None, [])])
    assert upload_report(account, b"g,extra\n")["qualified"] == 1       # resolved by LMDB
    index = account.profiles.index
    assert index._thread is None and index._timer is None
    with account.backend.snapshot() as snap:
        assert index.get(snap, build=False) is None


def test_rebuilds_wait_their_turn(account, monkeypatch):
    """After a build of t seconds the next waits REBUILD_GAP * t: constant profile changes cannot
    keep a core busy rebuilding."""
    ready_index(account)
    monkeypatch.setattr(keyindex, "REBUILD_GAP", 1e6)
    account.profiles.upsert([("one", None, [])])
    ready = account.profiles.index
    ready.warm()
    ready.wait(timeout=300)                 # this one's turn came after the last build's 10x
    account.profiles.upsert([("two", None, [])])
    assert account.segments.check_lines("s", b"two\n", "g") == (1, b"\x00")   # LMDB answers meanwhile
    assert ready._timer is not None and ready._thread is None               # a rebuild waits its turn


def test_the_server_warms_the_index_after_an_import(tmp_path):
    with InProcess(tmp_path / "data") as server:
        with Client(server.target, timeout=10) as c:
            c.import_profiles(b"guid,identity,channels\ng1,id1,\ng2,,\n")
        index = server.engine.account().profiles.index
        index.wait(timeout=300)
        with server.engine.backend.snapshot() as snap:
            pair = index.get(snap, build=False)
        assert pair is not None and (pair[0].count, pair[1].count) == (2, 1)
