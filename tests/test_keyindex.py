"""The in-memory guid index: compiled vs twin vs a dict, and that it never answers from stale profiles."""
import os
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listseg.core import _keyindex_py, keyindex
from listseg.core.engine import Engine

UNKNOWN = 0xFFFFFFFF
IMPLEMENTATIONS = [_keyindex_py.KeyIndex]
if keyindex.COMPILED:
    from listseg.core._keyindex import KeyIndex as Compiled
    IMPLEMENTATIONS.append(Compiled)


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
    for impl in IMPLEMENTATIONS:
        index = impl(lines(stored), ids)
        assert index.count == len(stored)
        assert answers(index, queries) == expected, impl


def test_a_big_index_and_its_probe_runs():
    """Enough keys that probes wrap around and run long; every key finds its own id."""
    keys = [b"%032x" % (k * 0x9E3779B97F4A7C15 % (1 << 128)) for k in range(50_000)]
    for impl in IMPLEMENTATIONS:
        index = impl(lines(keys), array("I", range(len(keys))))
        assert answers(index, keys) == list(range(len(keys)))
        assert answers(index, [k[:-1] for k in keys[:100]]) == [UNKNOWN] * 100


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
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
def account(tmp_path):
    engine = Engine(str(tmp_path / "data"), map_size=1 << 30)
    acct = engine.account()
    acct.profiles.upsert([(f"g{k}", f"id{k}", ["email"]) for k in range(100)])
    up = acct.upload("create", name="s")
    up.feed(b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(0, 100, 2)))
    up.finish()
    yield acct
    engine.close()


def ready_index(acct):
    """Ask once (which starts a build), wait for it, and check the index now serves reads."""
    acct.segments.check_lines("s", b"g0\n", "g")
    acct.profiles.guid_index.wait()
    with acct.database.read() as txn:
        assert acct.profiles.guid_index.get(txn) is not None, "the index was not built"


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
    with account.database.read() as txn:
        assert account.profiles.guid_index.get(txn) is None             # stale: LMDB answers
    account.profiles.guid_index.wait()
    with account.database.read() as txn:
        index = account.profiles.guid_index.get(txn)
        assert index is not None and index.count == 101


def test_a_guid_with_a_newline_keeps_the_lmdb_path(account):
    """Such a guid cannot be framed by newlines: the build refuses and readers keep using LMDB."""
    account.profiles.upsert([("two\nlines", None, [])])
    account.segments.check_lines("s", b"g0\n", "g")
    account.profiles.guid_index.wait()
    with account.database.read() as txn:
        assert account.profiles.guid_index.get(txn) is None
    assert account.segments.check_members("s", ["g0", "two\nlines"], "g")[1] == [True, False]
