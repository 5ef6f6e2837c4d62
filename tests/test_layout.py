"""The storage layout is defined once (core/layout.py), and the format on disk has not changed.

- Every key shape packs, parses and sorts as its table row says; the channel bits are pinned.
- The generated files (core/_layout.pxi for the Cython store, server/native/layout.h for the front,
  the table in docs/design.md) are what the table generates now.
- No module of core/ or server/ builds a key or a record itself (a grep, below, says what it checks).
- A data directory written by the code at c1ff166 (tests/fixtures/layout_c1ff166, see its build.py)
  opens unchanged and answers the same, through the engine and through the front; building it again
  with this code gives the same bytes.
- Layout 2 (issue 16): a guid of 32 hex digits is stored as its 16 bytes, every other one as given
  (escaped if it starts with a mark byte), and no two collide. A directory of layout 1 whose guids
  layout 2 stores otherwise (tests/fixtures/layout1_hex, written at 139a3c0) is upgraded when it
  opens, in one transaction, and answers the same through the engine and the front; the front
  refuses it before.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listseg.core import layout
from listseg.core.layout import (ACCOUNT, CHANNEL_BIT, GUID_KEY, KEYS, PROFILE_KEY, Tail, account_prefix,
                                 decode_profile, decode_reject, encode_profile, encode_reject, pack_guid,
                                 unpack_guid)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "layout_c1ff166")
BUILD = os.path.join(FIXTURE, "build.py")


# -- the table ---------------------------------------------------------------------------------------
def sample(part, k):
    if part is ACCOUNT:
        return account_prefix(7 + k)
    if isinstance(part, Tail):
        return b"tail-%d" % k
    return (1 << 8 * part.width) - 1 - k if k % 2 else k * 258


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.name)
def test_every_key_packs_and_parses_as_its_row_says(key):
    for k in range(4):
        values = tuple(sample(p, k) for p in key.parts)
        raw = key.pack(*values)
        assert raw == key.prefix(*values)                      # the fast packer is the table's
        assert raw.startswith(key.tag) and key.parse(raw) == values
        assert len(raw) == len(key.tag) + sum(len(v) if isinstance(v, bytes) else p.width
                                               for p, v in zip(key.parts, values))


def test_integer_keys_sort_in_numeric_order():
    p = account_prefix(1)
    uids = [0, 1, 255, 256, 65_535, 1 << 24, (1 << 32) - 2]
    assert sorted(PROFILE_KEY.pack(p, u) for u in reversed(uids)) == [PROFILE_KEY.pack(p, u) for u in uids]
    assert account_prefix(1) < account_prefix(256)                 # one account, one key range


def test_the_bytes_of_each_record_are_pinned():
    # literal bytes, not the codecs' own output: a change of order, width or endianness fails here
    assert CHANNEL_BIT == {"email": 1, "sms": 2, "push": 4, "whatsapp": 8, "webpush": 16}
    assert encode_profile(0b101, b"g1", b"a@b") == b"\x05\x02\x00g1a@b"
    assert decode_profile(b"\x05\x02\x00g1a@b") == (5, b"g1", b"a@b")
    assert decode_profile(encode_profile(1, b"x" * 300, None)) == (1, b"x" * 300, b"")
    assert encode_reject(3, "bad type") == b"\x00" * 7 + b"\x03bad type" and decode_reject(b"\x00" * 7 + b"\x03x") == (3, "x")
    assert layout.encode_uid(0x01020304) == b"\x04\x03\x02\x01"
    p = account_prefix(0x0A0B0C0D)
    assert p == b"\x0a\x0b\x0c\x0d"
    assert layout.VERSION_KEY.pack(p, 1, 2) == p + b"\0\0\0\x01\0\0\0\x02"
    assert layout.UPLOAD_KEY.pack(p, 5) == p + b"\0" * 7 + b"\x05"
    assert layout.ACCOUNT_NAME_KEY.pack(b"default") == b"ndefault" and layout.CREDENTIALS_KEY.pack() == b"#credentials"
    assert layout.DATABASES == ("accounts", "guid", "ident", "profile", "channels", "segments", "segnames",
                                "heads", "versions", "history", "uploads", "rejects")


# -- generated files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", sorted(layout.GENERATED))
def test_generated_file_is_current(flag):
    path, make = layout.GENERATED[flag]
    with open(os.path.join(ROOT, path)) as f:
        assert f.read() == make(), f"{path} is stale: run `python -m listseg.core.layout --write` and rebuild"


def test_design_doc_holds_the_current_table():
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        assert layout.markdown() in f.read(), "docs/design.md: paste `python -m listseg.core.layout --markdown`"


# -- no layout outside the layout module ------------------------------------------------------------
# What building a key or a record by hand looks like, per language. Each names a fact that
# core/layout.py (and the files it generates) defines: widths and byte orders, tags, the profile
# record's offsets, database names, the uid that means none.
INLINE = {
    ".py": [
        (r"\bu(32|64)\(|\bU(32|64)\b", "the old key-part helpers (u32/u64): use a layout Key"),
        (r"\.to_bytes\(|\bint\.from_bytes\(", "an integer's width and byte order: use a layout Int"),
        (r"\bstruct\.(pack|unpack|Struct)|\.unpack_from\(", "a packed record: use a layout codec"),
        (r"\bprefix \+|\+ (self\.|account\.)?prefix\b", "a key concatenated with the account prefix: use a layout Key"),
        (r"b[\"'][nag#][\"']\s*\+|b[\"']#credentials|[\"']#deleted", "an accounts-database tag or a reserved name"),
        (r"\bkey\[-?\d*:-?\d*\]|\bv\[:?\d+:?\]", "a key or record sliced by position: use Key.parse or a codec"),
        (r"0xFFFFFFFF|\b4294967295\b", "the no-uid value: layout.UNKNOWN"),
        (r"(open_db|\.db)\(\s*b?[\"'](" + "|".join(layout.DATABASES) + ")[\"']", "a database named by hand"),
    ],
    ".pyx": [
        (r"0xFFFFFFFF", "the no-uid value: LAYOUT_UNKNOWN"),
        (r">> 24|<< 24", "an integer's byte order: the pxi's put_/get_ helpers"),
        (r"\brec\[\d\]|\b3 \+ glen|mv_size == 4\b|mv_size = 4\b", "the profile record or uid width: LAYOUT_*"),
    ],
    ".cc": [
        (r"\bbe32\(|\bfrom_be\(|>> 24|<< 24", "an integer's byte order: layout.h's listseg_put_/get_"),
        (r"\bprefix \+", "a key concatenated by hand: layout.h's listseg_key_*"),
        (r"\"#credentials\"|\"default\"|\"n\" \+", "an accounts key or the default account: LISTSEG_*"),
        (r"open\(txn, \"", "a database named by hand: LISTSEG_DB_*"),
        (r"mv_size == 4\b|memcpy\(&uid", "the uid value's width or order: listseg_get_uid"),
    ],
}
INLINE[".pxd"] = INLINE[".pyx"]          # the Cython declarations the extensions share
# Files that may: the layout itself and what it generates; page tokens are the API's wire format,
# not storage (server/convert.py PageToken defines them once); a hash seed and resolve's sort key
# (the order of a batch in memory) are no stored integers.
ALLOWED = {"core/layout.py", "core/_layout.pxi", "server/native/layout.h"}
ALLOWED_LINES = {("server/convert.py", "self.layout = struct.Struct("),
                 ("core/_keyindex.pyx", 'self.t.seed = int.from_bytes(os.urandom(8), "little")'),
                 ("core/keyorder.py", 'int.from_bytes(bytes(value[:8]).ljust(8, b"\\0"), "big") >> 1')}


def inline_layout(root):
    """[(file, line number, line, what)] of every line of core/ and server/ that matches INLINE."""
    found = []
    for folder in ("core", "core/includes", "server", "server/native"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            rel = f"{folder}/{name}"
            ext = os.path.splitext(name)[1]
            if ext not in INLINE or rel in ALLOWED:
                continue
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    code = line.split("#", 1)[0] if ext != ".cc" else line.split("//", 1)[0]
                    if ext != ".cc" and ('"#' in line or "'#" in line):
                        code = line                          # a "#..." string is code, not a comment
                    if any(rel == r and text in line for r, text in ALLOWED_LINES):
                        continue
                    for pattern, what in INLINE[ext]:
                        if re.search(pattern, code):
                            found.append((rel, n, line.strip(), what))
    return found


def test_no_key_or_record_is_built_outside_the_layout_module():
    found = inline_layout(ROOT)
    assert not found, "keys or records built outside core/layout.py:\n" + "\n".join(
        f"  {f}:{n}: {line}  <- {what}" for f, n, line, what in found)


def test_the_grep_sees_inline_layout(tmp_path):
    """The check above can fail: each kind of inline layout, planted in a copy, is found."""
    planted = {
        "core/x.py": ['key = self.prefix + u32(seg_id)', 'n = int.from_bytes(raw, "big")', 'txn.get(db, b"n" + name)',
                      'h = struct.pack("<BH", 1, 2)', 'version = key[-4:]', 'txn.get(db, b"#credentials")'],
        "core/x.pyx": ["dst[0] = <uint8_t>(uid >> 24)", "glen = rec[1] | rec[2] << 8", "cdef uint32_t U = 0xFFFFFFFF"],
        "core/includes/x.pxd": ["cdef uint32_t NO_UID = 0xFFFFFFFF"],
        "server/native/x.cc": ['std::string k = prefix + be32(id);', 'open(txn, "guid");', 'name = "default";'],
    }
    for folder in ("core", "core/includes", "server", "server/native"):
        os.makedirs(tmp_path / folder, exist_ok=True)
    for rel, lines in planted.items():
        (tmp_path / rel).write_text("\n".join(lines) + "\n")
    found = {(f, n) for f, n, _, _ in inline_layout(str(tmp_path))}
    assert found == {(rel, n) for rel, lines in planted.items() for n in range(1, len(lines) + 1)}


# -- a data directory from c1ff166 -------------------------------------------------------------------
def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_build(*args):
    subprocess.run([sys.executable, BUILD, *map(str, args)], check=True, cwd=ROOT)


def old_data(tmp_path, fixture=FIXTURE):
    """A copy of a fixture's data directory, as tmp_path/data."""
    data = tmp_path / "data"
    os.makedirs(data)
    shutil.copy(os.path.join(fixture, "data", "data.mdb"), data / "data.mdb")
    return data


def test_a_data_directory_of_c1ff166_opens_unchanged_and_answers_the_same(tmp_path):
    data = old_data(tmp_path)
    run_build("--read", data, tmp_path)           # its own process: build.py never runs in this one
    expected = read_json(os.path.join(FIXTURE, "answers.json"))
    got = read_json(tmp_path / "answers.json")
    assert got["answers"]["accounts"] == ["acct-000000000000", "default"]
    for name in got["answers"]:
        assert got["answers"][name] == expected["answers"][name], name
    assert read_json(tmp_path / "dump.json") == read_json(os.path.join(FIXTURE, "dump.json"))   # opened, unchanged


#: What a history row has gained since c1ff166 (issue 14's versions list): keys added to a JSON
#: record, which code of either age reads.
ORIGIN_KEYS = ("upload", "rollback_of")


def without_origins(dump):
    """The dump with each history row decoded and its origin left out."""
    rows = [[key, json.loads(bytes.fromhex(value))] for key, value in dump["history"]]
    return dict(dump, history=[[key, strip_origins(row)] for key, row in rows])


def strip_origins(value):
    """value less ORIGIN_KEYS in every history row (a dict with "time" and "size") within it."""
    if isinstance(value, dict):
        keep = {k: strip_origins(v) for k, v in value.items()}
        return {k: v for k, v in keep.items() if k not in ORIGIN_KEYS} if {"time", "size"} <= set(value) else keep
    return [strip_origins(v) for v in value] if isinstance(value, list) else value


#: What the accounts table has gained since c1ff166: the layout's number (layout 2: issue 16).
LAYOUT_ROW = [layout.LAYOUT_KEY.pack().hex(), layout.LAYOUT_VERSION.pack(layout.LAYOUT).hex()]


def in_blocks(records):
    """Layouts 1-2's profile table [(key, record)] as layout 3 holds it: [(block key, block)], each
    record in its uid's slot, re-encoded (a guid of 32 hex digits packed)."""
    blocks = {}
    for key, rec in records:
        p, uid = layout.UID_PROFILE_KEY.parse(key)
        block, slot = layout.profile_block(uid)
        blocks.setdefault((p, block), [None] * layout.PROFILES_PER_BLOCK)[slot] = encode_profile(*decode_profile(rec))
    return sorted((layout.PROFILE_KEY.pack(*at), layout.encode_block(slots)) for at, slots in blocks.items())


def test_this_code_writes_the_bytes_c1ff166_wrote(tmp_path):
    """Byte for byte (its guids are none that layout 2 stores otherwise), but for the origins history
    rows have since gained, the layout's number, and profile records by blocks (layout 3)."""
    run_build(tmp_path)
    written, fixture = read_json(tmp_path / "dump.json"), read_json(os.path.join(FIXTURE, "dump.json"))
    assert all("upload" in json.loads(bytes.fromhex(v)) for _, v in written["history"])    # each has its origin
    assert LAYOUT_ROW in written["accounts"]
    written["accounts"].remove(LAYOUT_ROW)
    fixture["profile"] = [[k.hex(), v.hex()] for k, v in
                          in_blocks((bytes.fromhex(k), bytes.fromhex(v)) for k, v in fixture["profile"])]
    assert without_origins(written) == without_origins(fixture)
    assert strip_origins(read_json(tmp_path / "answers.json")) == read_json(os.path.join(FIXTURE, "answers.json"))


def test_the_front_answers_from_a_data_directory_of_c1ff166(tmp_path):
    from test_front import GUID, IDENT, Pair, is_member, pytestmark as needs_front
    if needs_front.args[0]:
        pytest.skip(needs_front.kwargs["reason"])
    old_data(tmp_path)
    fixture = read_json(os.path.join(FIXTURE, "answers.json"))
    account = fixture["other"]
    md = (("x-account-id", account), ("x-passcode", fixture["passcode"]))
    want = fixture["answers"][account]
    sid = want["segments"][0]["id"]
    checks = [(GUID, g) for g in (layout.DEFAULT_ACCOUNT, "a1", "g3", "g1")] + [(IDENT, "x@acme")]
    pair = Pair(tmp_path)
    try:
        assert pair.fronted.IsMember(is_member("vip", "a1"), metadata=md).member     # relayed: the passcode is new
        pair.server.stop(0)                                                          # from now on, the front alone
        for ref in ("vip", str(sid), f"segments/{sid}"):
            got = [pair.fronted.IsMember(is_member(ref, key, kind), metadata=md, timeout=10) for kind, key in checks]
            assert [r.member for r in got] == [False, True, True, False, True], ref
            assert {r.version for r in got} == {want["segments"][0]["version"]}
    finally:
        pair.close()


# -- layout 2: guids of 32 hex digits stored as 16 bytes, and the upgrade from layout 1 ---------------
HEX_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "layout1_hex")
HEX_A = b"4142434445464748494a4b4c4d4e4f50"          # packs to the bytes of "\x00ABCDEFGHIJKLMNOP"


def test_a_guid_is_stored_packed_escaped_or_as_given():
    p = account_prefix(7)
    assert pack_guid(HEX_A) == b"\x00ABCDEFGHIJKLMNOP" and GUID_KEY.pack(p, HEX_A) == p + b"\x00ABCDEFGHIJKLMNOP"
    assert GUID_KEY.parse(p + b"\x00ABCDEFGHIJKLMNOP") == (p, HEX_A)
    for as_given in (HEX_A.upper(), HEX_A[:31], HEX_A + b"0", b"4142434445464748494a4b4c4d4e4f5g", b"plain", b"\x02x"):
        assert pack_guid(as_given) == as_given
    assert pack_guid(b"\x00ABCDEFGHIJKLMNOP") == b"\x01\x00ABCDEFGHIJKLMNOP" and pack_guid(b"\x01") == b"\x01\x01"
    assert encode_profile(0b101, HEX_A, b"a@b") == b"\x85ABCDEFGHIJKLMNOPa@b"
    assert decode_profile(b"\x85ABCDEFGHIJKLMNOPa@b") == (5, HEX_A, b"a@b")
    assert decode_profile(encode_profile(0, HEX_A.upper(), None)) == (0, HEX_A.upper(), b"")
    assert layout.frame_keys([(3, b"\x81ABCDEFGHIJKLMNOP"), (4, b"\x81ABC"), (5, b"\x01\x05\x00abc")]) == \
        (HEX_A + b"\n", (3).to_bytes(4, "little"))            # a record shorter than its head is none


GUIDS = st.one_of(st.binary(max_size=40), st.binary(min_size=16, max_size=16).map(lambda b: b.hex().encode()),
                  st.builds(lambda mark, rest: bytes([mark]) + rest, st.sampled_from([0, 1, 2]), st.binary(max_size=33)))


@settings(max_examples=300, deadline=None)
@given(st.lists(GUIDS, max_size=30))
def test_no_two_guids_are_stored_alike(guids):
    stored = {g: pack_guid(g) for g in guids}
    assert len(set(stored.values())) == len(stored)
    assert all(unpack_guid(s) == g and decode_profile(encode_profile(3, g, b"i"))[1:] == (g, b"i")
               for g, s in stored.items())


def hex_data(tmp_path):
    return old_data(tmp_path, HEX_FIXTURE)


def tables(data):
    """{database: [(key, value)]} of a data directory, read-only, in key order."""
    import lmdb
    env = lmdb.open(str(data), max_dbs=32, readonly=True, lock=False)
    with env.begin() as txn:
        out = {name: list(txn.cursor(db=env.open_db(name.encode(), txn=txn, create=False)))
               for name in layout.DATABASES}
    env.close()
    return out


@pytest.mark.parametrize("binding", ["compiled", "twin"])
def test_a_layout_1_directory_is_upgraded_when_it_opens_and_answers_the_same(tmp_path, binding):
    data = hex_data(tmp_path)
    before = tables(data)
    assert layout.LAYOUT_KEY.pack() not in dict(before["accounts"])
    env = {k: v for k, v in os.environ.items() if k != "LISTSEG_NO_EXTENSIONS"}
    if binding == "twin":
        env["LISTSEG_NO_EXTENSIONS"] = "1"
    subprocess.run([sys.executable, os.path.join(HEX_FIXTURE, "build.py"), "--read", data, tmp_path], check=True,
                   cwd=ROOT, env=env)
    assert read_json(tmp_path / "answers.json") == read_json(os.path.join(HEX_FIXTURE, "answers.json"))
    after = tables(data)
    assert dict(after["accounts"])[layout.LAYOUT_KEY.pack()] == layout.LAYOUT_VERSION.pack(layout.LAYOUT)
    width = ACCOUNT.width
    assert after["guid"] == sorted((GUID_KEY.pack(k[:width], k[width:]), v) for k, v in before["guid"])
    assert sum(len(k) == width + 17 and k[width] == 0 for k, _ in after["guid"]) > 10      # packed ones
    assert len(after["guid"]) == len(before["guid"])                                      # none collided
    assert after["profile"] == in_blocks(before["profile"])
    assert {k: v for k, v in after.items() if k not in ("guid", "accounts", "profile")} == \
        {k: v for k, v in before.items() if k not in ("guid", "accounts", "profile")}


def test_an_upgrade_cut_short_leaves_layout_1_and_runs_again(tmp_path, monkeypatch):
    from listseg.core import lmdb_migrate
    from listseg.core.lmdb_backend import LmdbBackend
    data = hex_data(tmp_path)
    before = tables(data)
    block_profiles = lmdb_migrate._block_profiles            # the upgrade's last pass

    def cut_short(txn, database):
        block_profiles(txn, database)        # every key rewritten, then the power goes
        raise OSError("power cut")
    monkeypatch.setattr(lmdb_migrate, "_block_profiles", cut_short)
    with pytest.raises(OSError, match="power cut"):
        LmdbBackend(str(data), map_size=1 << 26)
    assert tables(data) == before
    monkeypatch.undo()
    LmdbBackend(str(data), map_size=1 << 26).close()
    assert len(tables(data)["guid"]) == len(before["guid"]) and tables(data)["guid"] != before["guid"]
    LmdbBackend(str(data), map_size=1 << 26).close()             # once upgraded, opening changes nothing
    assert tables(data)["guid"] == sorted((GUID_KEY.pack(k[:4], k[4:]), v) for k, v in before["guid"])
    assert tables(data)["profile"] == in_blocks(before["profile"])


def test_the_bytes_of_a_profile_block_are_pinned():
    recs = [b"\x01\x02\x00g1", None, b"\x82" + bytes(16) + b"x" * 300]
    assert layout.encode_block(recs + [None] * 13) == b"\x05\x01\x02\x00g1\x00\xff\x3d\x01" + recs[2]
    assert layout.decode_block(layout.encode_block(recs)) == recs + [None] * 13
    assert layout.encode_block([None] * 16) == b"" and layout.decode_block(b"") == [None] * 16
    for broken in (b"\x05\x01\x02", b"\xff\x01", b"\x00" * 17):                    # short, or too many slots
        with pytest.raises(ValueError):
            layout.decode_block(broken)
    assert layout.PROFILE_KEY.pack(account_prefix(1), 2) == b"\0\0\0\x01\0\0\0\x02" and layout.profile_block(35) == (2, 3)


def test_a_new_directory_is_written_in_this_layout_without_an_upgrade(tmp_path, caplog):
    from listseg.core.lmdb_backend import LmdbBackend
    caplog.set_level("INFO", logger="listseg.store")
    LmdbBackend(str(tmp_path), map_size=1 << 26).close()
    assert tables(tmp_path)["accounts"] == [(layout.LAYOUT_KEY.pack(), layout.LAYOUT_VERSION.pack(layout.LAYOUT))]
    assert "upgrad" not in caplog.text
    data = hex_data(tmp_path / "old")
    LmdbBackend(str(data), map_size=1 << 26).close()
    assert "upgrading" in caplog.text and "to layout %d" % layout.LAYOUT in caplog.text


def test_a_directory_of_a_later_layout_is_refused(tmp_path):
    from listseg.core.lmdb_backend import LmdbBackend
    LmdbBackend(str(tmp_path), map_size=1 << 26).close()
    import lmdb
    env = lmdb.open(str(tmp_path), max_dbs=32, map_size=1 << 26)
    with env.begin(write=True, db=env.open_db(b"accounts")) as txn:
        txn.put(layout.LAYOUT_KEY.pack(), layout.LAYOUT_VERSION.pack(layout.LAYOUT + 1))
    env.close()
    with pytest.raises(ValueError, match=f"layout {layout.LAYOUT + 1}"):
        LmdbBackend(str(tmp_path), map_size=1 << 26)


def test_the_front_refuses_layout_1_and_answers_once_upgraded(tmp_path):
    from test_front import GUID, IDENT, Pair, is_member, pytestmark as needs_front
    from listseg.server import front
    if needs_front.args[0]:
        pytest.skip(needs_front.kwargs["reason"])
    data = hex_data(tmp_path)
    refused = subprocess.run([front.BINARY, "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9", "--data", data],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "layout 1" in refused.stderr, refused.stderr
    hexes = json.loads(subprocess.run([sys.executable, "-c", "import build, json; print(json.dumps(build.HEX + build.RAW))"],
                                      cwd=HEX_FIXTURE, capture_output=True, text=True, check=True).stdout)
    checks = [(GUID, hexes[k]) for k in (0, 1, 2, 3, 4)] + [(GUID, hexes[12]), (GUID, hexes[13]), (GUID, "plain"),
                                                            (IDENT, "id3@x.com")]
    pair = Pair(tmp_path)                    # the server upgrades it, then starts the front
    try:
        pair.server.stop(0)                  # from now on, the front alone
        got = [pair.fronted.IsMember(is_member("hex", key, kind), timeout=10).member for kind, key in checks]
        assert got == [True, False, True, True, False, True, True, False, True]
    finally:
        pair.close()
