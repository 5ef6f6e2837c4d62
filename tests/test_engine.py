"""Profiles, segments and uploads through the engine: the conformance suite, once per backend (conftest `backend`)."""
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import channels_of, people, upload
from harness import open_engine
from listseg.core.backend import Retention
from listseg.core.engine import Engine
from listseg.core.errors import AlreadyExists, InUse, InvalidArgument, InvalidProfile, NotFound, TooLarge, VersionGone


# -- profiles -----------------------------------------------------------------------------------
def test_profiles_and_reachability(account):
    assert account.profiles.upsert(people(8)) == 8
    p = account.profiles.find(guid="g3")
    assert (p.uid, p.identity, p.channels) == (3, "id3", ("email", "whatsapp", "webpush"))
    assert account.profiles.find(identity="id5").guid == "g5"
    assert account.profiles.find(guid="nobody") is None
    ch = channels_of(account)
    assert list(ch["email"]) == [0, 3, 4, 7] and list(ch["sms"]) == [1, 5]


def test_profile_update_moves_identity_and_channels(account):
    account.profiles.upsert(people(4))
    account.profiles.upsert([("g1", "new@x.com", ["email"]), ("g0", "id3", [])])
    assert account.profiles.find(identity="id1") is None
    assert account.profiles.find(identity="new@x.com").uid == 1
    assert account.profiles.find(identity="id3").guid == "g0"          # identities are unique
    assert account.profiles.find(guid="g3").identity is None
    ch = channels_of(account)
    assert list(ch["email"]) == [1, 3] and list(ch["sms"]) == []


def test_profile_delete(account):
    account.profiles.upsert(people(4))
    assert account.profiles.delete(["g1", "nobody"]) == 1
    assert account.profiles.find(guid="g1") is None and account.profiles.find(identity="id1") is None
    account.profiles.upsert([("g9", None, [])])
    assert account.profiles.find(guid="g9").uid == 4                    # uids are never reused


def test_deleted_profiles_leave_sizes_at_once_and_the_next_version_for_good(account):
    account.profiles.upsert(people(8))
    csv = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(6))
    upload(account, csv, name="s")
    upload(account, csv, name="t")
    account.profiles.delete(["g1", "g4"])
    for seg in (account.segments.get("s"), *account.segments.list()):
        assert (seg["version"], seg["size"]) == (1, 4)            # the version is unchanged, its size is not
    assert account.segments.get("s")["reachability"]["email"] == 2     # g0 and g3: deleted g4 had email too
    for _ in range(5):                                   # 4 of 6 ranks would rarely miss both deleted
        assert sorted(p.guid for p in account.segments.sample("t", 4)) == ["g0", "g2", "g3", "g5"]
    up = upload(account, b"Type,Identity\ng,g7\n", "append", segment="s")
    assert up["report"]["size"] == 5
    assert list(account.segments.members("s")[1]) == [0, 2, 3, 5, 7]      # g1 and g4 are gone for good
    assert b"".join(account.segments.export("t")) == b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in (0, 2, 3, 5))
    removed = upload(account, b"Type,Identity\ng,g0\n", "remove", segment="t")
    assert removed["report"]["size"] == 3 and list(account.segments.members("t")[1]) == [2, 3, 5]


def test_profile_validation(account):
    with pytest.raises(InvalidProfile):
        account.profiles.upsert([("g1", None, ["fax"])])
    with pytest.raises(InvalidProfile):
        account.profiles.upsert([("", None, [])])
    assert account.profiles.find(guid="g1") is None                    # nothing half-written


def test_profile_import_csv(account):
    data = b'guid,identity,channels\ng1,a@x.com,"email;sms"\ng2,,\n,x,email\ng3,b,fax\n'
    report = account.profiles.import_csv([data[:10], data[10:]])
    assert (report["rows"], report["upserted"], report["invalid"]) == (4, 2, 2)
    assert report["errors"][0] == (4, "empty guid")
    assert account.profiles.find(identity="a@x.com").channels == ("email", "sms")
    assert set(report["timings"]) == {"read", "load", "wait"} and min(report["timings"].values()) >= 0


# -- uploads ------------------------------------------------------------------------------------
def test_report_accounts_for_every_row(account):
    account.profiles.upsert(people(10))
    data = b"Type,Identity\ng,g1\ni,id1\ng,g2\ng,g2\ng,nobody\ng,nobody\nx,1\ng,\n\ni,id3\n"
    up = upload(account, data, name="s1")
    r = up["report"]
    assert up["state"] == "succeeded"
    assert (r["rows"], r["qualified"], r["unknown"], r["invalid"], r["duplicates"]) == (9, 3, 2, 2, 2)
    assert r["rows"] == r["qualified"] + r["unknown"] + r["invalid"] + r["duplicates"]
    assert r["size"] == 3 and r["errors"] == [{"line": 8, "reason": "bad type"}, {"line": 9, "reason": "empty identity"}]
    assert account.upload_errors(up["id"]) == ([(8, "bad type"), (9, "empty identity")], None)
    seg = account.segments.get("s1")
    assert (seg["size"], seg["version"], seg["state"], seg["last_upload"]) == (3, 1, "ready", up["id"])


def test_modes_replace_append_remove(account):
    account.profiles.upsert(people(10))
    upload(account, b"g,g1\ng,g2\ng,g3\n", name="s")
    assert upload(account, b"g,g4\ng,g1\n", "append", segment="s")["report"]["size"] == 4
    assert upload(account, b"g,g1\ng,g9\n", "remove", segment="s")["report"]["size"] == 3
    assert upload(account, b"g,g7\n", "replace", segment="s")["report"]["size"] == 1
    assert list(account.segments.members("s")[1]) == [7]
    assert [t["size"] for t in account.segments.get("s")["trend"]] == [3, 4, 3, 1]


def test_failures_keep_the_live_version(account):
    account.profiles.upsert(people(10))
    upload(account, b"g,g1\ng,g2\n", name="s")
    failures = {
        b"Name,Email\ng,g3\n": "bad header",
        b"g,nobody\nx,y\n": "no row names a known profile",
        b"": "no row names a known profile",
    }
    for data, reason in failures.items():
        up = upload(account, data, "replace", segment="s")
        assert up["state"] == "failed" and up["reason"].startswith(reason)
        assert up["report"]["size"] == 2
    strict = upload(account, b"g,g3\nx,y\n", "replace", segment="s", strict=True)
    assert strict["state"] == "failed" and "line 2: bad type" in strict["reason"]
    seg = account.segments.get("s")
    assert (seg["size"], seg["version"], seg["last_upload"]) == (2, 1, strict["id"])


def test_abort_and_size_limit_change_nothing(engine):
    account = engine.account()
    account.profiles.upsert(people(10))
    upload(account, b"g,g1\n", name="s")
    up = account.upload("replace", segment="s")
    up.feed(b"g,g2\ng,g3\n")
    assert up.abort("client cancelled")["state"] == "failed"
    engine.max_upload_bytes = 20
    up = account.upload("replace", segment="s")
    up.feed(b"g,g2\n")
    with pytest.raises(TooLarge):
        up.feed(b"g,g3\n" * 10)
    assert account.get_upload(up.id)["reason"].startswith("file too large")
    assert list(account.segments.members("s")[1]) == [1]


def test_failed_create_leaves_no_segment_unless_a_consumer_holds_it(account):
    account.profiles.upsert(people(3))
    up = upload(account, b"g,nobody\n", name="s")
    assert (up["state"], up["segment_name"], up["reason"]) == ("failed", "s", "no row names a known profile")
    with pytest.raises(NotFound):
        account.segments.get("s")
    assert account.segments.list() == [] and account.get_upload(up["id"])["state"] == "failed"
    again = upload(account, b"g,g1\n", name="s")
    assert again["state"] == "succeeded" and again["segment"] != up["segment"]
    # a campaign attached while the create ran: the segment stays, failed, with the campaign, and
    # the next create of its name takes it over
    up = account.upload("create", name="t")
    account.segments.attach("t", "campaign", "c1")
    up.feed(b"g,nobody\n")
    assert up.finish()["state"] == "failed"
    seg = account.segments.get("t")
    assert (seg["state"], seg["version"], [c["id"] for c in seg["consumers"]]) == ("failed", 0, ["c1"])
    retry = upload(account, b"g,g2\n", name="t")
    assert retry["state"] == "succeeded" and retry["segment"] == seg["id"]
    seg = account.segments.get("t")
    assert (seg["state"], seg["size"], [c["id"] for c in seg["consumers"]]) == ("ready", 1, ["c1"])
    with pytest.raises(AlreadyExists):                  # it has a version now: the name is taken
        account.upload("create", name="t")


def test_a_create_under_way_holds_its_name(account):
    account.profiles.upsert(people(3))
    up = account.upload("create", name="s")
    up.feed(b"g,g1\n")
    # a replace of the new segment that fails meanwhile leaves it the create's (it was marked failed,
    # which would have let another create take it over)
    assert upload(account, b"g,nobody\n", "replace", segment="s")["state"] == "failed"
    assert account.segments.get("s")["state"] == "processing"
    for dry_run in (False, True):
        with pytest.raises(AlreadyExists):
            account.upload("create", name="s", dry_run=dry_run)
    assert up.finish()["state"] == "succeeded" and account.segments.get("s")["size"] == 1


def test_dry_run_changes_nothing(account):
    account.profiles.upsert(people(10))
    upload(account, b"g,g1\n", name="s")
    up = upload(account, b"g,g2\ng,g3\n", "append", segment="s", dry_run=True)
    assert up["state"] == "succeeded" and up["report"]["size"] == 3
    assert upload(account, b"g,g2\n", name="new", dry_run=True)["report"]["size"] == 1
    assert [s["name"] for s in account.segments.list()] == ["s"]
    assert account.segments.get("s")["size"] == 1


def test_names_and_modes_are_checked(account):
    account.profiles.upsert(people(3))
    upload(account, b"g,g1\n", name="s")
    with pytest.raises(AlreadyExists):
        account.upload("create", name="s")
    with pytest.raises(InvalidArgument):
        account.upload("create", name="  ")
    with pytest.raises(InvalidArgument):
        account.upload("replace", name="s")
    with pytest.raises(NotFound):
        account.upload("replace", segment="nope")


def test_consumers_block_changes_and_are_named(account):
    account.profiles.upsert(people(3))
    upload(account, b"g,g1\n", name="s")
    account.segments.attach("s", "campaign", "c-42", "Black Friday")
    account.segments.attach("s", "journey", "j-7")
    for mode in ("replace", "append", "remove"):
        with pytest.raises(InUse) as e:
            account.upload(mode, segment="s")
        assert "campaign c-42" in str(e.value) and "journey j-7" in str(e.value)
    with pytest.raises(InUse):
        account.segments.delete("s")
    assert [c["id"] for c in account.segments.get("s")["consumers"]] == ["c-42", "j-7"]
    account.segments.detach("s", "campaign", "c-42")
    account.segments.detach("s", "journey", "j-7")
    assert upload(account, b"g,g2\n", "replace", segment="s")["state"] == "succeeded"
    account.segments.delete("s")
    with pytest.raises(NotFound):
        account.segments.get("s")


def test_consumer_attached_mid_upload_fails_it(account):
    account.profiles.upsert(people(3))
    upload(account, b"g,g1\n", name="s")
    up = account.upload("replace", segment="s")
    up.feed(b"g,g2\n")
    account.segments.attach("s", "campaign", "c1")
    result = up.finish()
    assert result["state"] == "failed" and "campaign c1" in result["reason"]
    assert list(account.segments.members("s")[1]) == [1]


def test_membership_queries(account):
    account.profiles.upsert(people(10))
    upload(account, b"g,g1\ni,id3\ng,g4\n", name="s")
    assert account.segments.is_member("s", "g", "g3") and account.segments.is_member("s", "i", "id1")
    assert not account.segments.is_member("s", "g", "g2") and not account.segments.is_member("s", "g", "zz")
    version, answers = account.segments.check_members("s", [("g", "g4"), ("i", "id5"), ("g", " g1 ")])
    assert (version, answers) == (1, [True, False, True])
    seg = account.segments.get("s", sample=2)
    assert seg["reachability"] == {"email": 2, "sms": 1, "push": 1, "whatsapp": 1, "webpush": 1}
    assert len(seg["sample"]) == 2 and {p["guid"] for p in seg["sample"]} <= {"g1", "g3", "g4"}
    assert b"".join(account.segments.export("s")) == b"Type,Identity\ng,g1\ng,g3\ng,g4\n"


def test_export_reuploads_as_is(account):
    account.profiles.upsert([("a,b", None, []), ('q"t', None, []), ("plain", None, [])])
    upload(account, b'g,"a,b"\ng,"q""t"\ng,plain\n', name="s")
    exported = b"".join(account.segments.export("s"))
    assert upload(account, exported, name="copy")["report"]["size"] == 3


def test_sharded_paging_covers_every_member_once(account):
    account.profiles.upsert(people(1000))
    upload(account, b"".join(b"g,g%d\n" % k for k in range(0, 1000, 3)), name="s")
    seen = []
    for shard in range(4):
        start = 0
        while start is not None:
            _, uids, start = account.segments.members("s", start, 17, shard_index=shard, shard_count=4)
            seen.extend(uids)
    assert seen == list(range(0, 1000, 3))


def test_pinned_version_survives_replace_then_expires(engine):
    account = engine.account()
    account.profiles.upsert(people(100))
    upload(account, b"".join(b"g,g%d\n" % k for k in range(50)), name="s")
    version, first, start = account.segments.members("s", 0, 10)
    upload(account, b"g,g99\n", "replace", segment="s")
    _, rest, _ = account.segments.members("s", start, 100, version=version)
    assert list(first) + list(rest) == list(range(50))                # one consistent snapshot
    account.segments.retention = Retention(-1, 1)
    engine.cache._items.clear()
    upload(account, b"g,g98\n", "replace", segment="s")
    with pytest.raises(VersionGone):
        account.segments.members("s", 0, 10, version=version)


def test_the_last_versions_are_kept_whatever_their_age(engine, tmp_path):
    """Retention keeps the last `versions` (the head among them) however old, and a version out of
    them only once its time window has passed."""
    account = engine.account()
    account.profiles.upsert(people(20))
    upload(account, b"g,g0\n", name="s")
    account.segments.retention = Retention(-1, 3)
    for k in range(1, 6):
        upload(account, b"g,g%d\n" % k, "replace", segment="s")
    assert [(v["version"], v["kept"], v["head"]) for v in account.segments.versions("s")] == \
        [(6, True, True), (5, True, False), (4, True, False), (3, False, False), (2, False, False), (1, False, False)]
    account.segments.retention = Retention(3600, 1)                   # out of the count, in the window
    upload(account, b"g,g9\n", "replace", segment="s")
    assert [v["version"] for v in account.segments.versions("s") if v["kept"]] == [7, 6, 5, 4]
    with pytest.raises(InvalidArgument):
        Engine(str(tmp_path / "other"), keep_versions=0)                # the head is always kept


def changes(account, segment, old, new=None, **kw):
    """({guids added}, {guids removed}, page) over every page of change_page."""
    added, removed, start = set(), set(), 0
    while start is not None:
        page = account.segments.change_page(segment, old, new, start, **kw)
        for guid, joined in zip(page.guids.split(), page.added, strict=True):
            (added if joined else removed).add(guid.decode())
        assert len(page.found) == 4 * len(page.added)
        start = page.next_start
    return added, removed, page


def test_member_changes_are_the_difference_of_two_versions(account):
    account.profiles.upsert(people(100))
    upload(account, b"".join(b"g,g%d\n" % k for k in range(60)), name="s")                  # version 1
    upload(account, b"".join(b"g,g%d\n" % k for k in range(40, 100)), "replace", segment="s")  # version 2
    added, removed, page = changes(account, "s", 1, count=7)
    assert added == {f"g{k}" for k in range(60, 100)} and removed == {f"g{k}" for k in range(40)}
    assert (page.from_version, page.to_version, page.added_total, page.removed_total) == (1, 2, 40, 40)
    assert changes(account, "s", 0)[:2] == ({f"g{k}" for k in range(40, 100)}, set())    # 0: everyone joined
    assert changes(account, "s", 2, 1)[:2] == (removed, added)                            # and back
    assert changes(account, "s", 2)[:2] == (set(), set())
    seen = []                                           # shards: every change once, in uid order
    for shard in range(3):
        start = 0
        while start is not None:
            page = account.segments.change_page("s", 1, 2, start, 11, shard_index=shard, shard_count=3)
            seen += page.guids.split()
            start = page.next_start
    assert seen == [b"g%d" % k for k in list(range(40)) + list(range(60, 100))]
    account.profiles.delete(["g70", "g10"])             # a deleted profile is in no change, either way
    added2, removed2, page = changes(account, "s", 1)
    assert (added2, removed2) == (added - {"g70"}, removed - {"g10"}) and (page.added_total, page.removed_total) == (39, 39)
    with pytest.raises(NotFound):
        account.segments.change_page("s", 3)
    with pytest.raises(InvalidArgument):                # the same, from a page token
        account.segments.change_page("s", 1, 3, pinned=True)
    with pytest.raises(InvalidArgument):
        account.segments.change_page("s", 1, 2, 80)     # a position past the changes


def test_versions_say_what_made_each_and_rollback_copies_one(engine):
    account = engine.account()
    account.profiles.upsert(people(20))
    first = upload(account, b"g,g1\ng,g2\n", name="s", file_name="a.csv")
    upload(account, b"g,g3\n", "append", segment="s")
    upload(account, b"g,g4\n", "replace", segment="s")
    assert account.segments.rollback("s", 1) == 4
    assert list(account.segments.members("s")[1]) == [1, 2]
    versions = account.segments.versions("s")
    assert [(v["version"], v["size"], v["head"], v["rollback_of"]) for v in versions] == \
        [(4, 2, True, 1), (3, 1, False, None), (2, 3, False, None), (1, 2, False, None)]
    assert versions[3]["upload"]["id"] == first["id"] and versions[3]["upload"]["mode"] == "create"
    assert versions[1]["upload"]["mode"] == "replace" and versions[0]["upload"] is None
    account.profiles.delete(["g2"])                                      # a deleted profile does not come back
    assert account.segments.rollback("s", 2) == 5
    assert list(account.segments.members("s")[1]) == [1, 3]
    with pytest.raises(InvalidArgument):
        account.segments.rollback("s", 5)                                # the head
    with pytest.raises(NotFound):
        account.segments.rollback("s", 9)
    account.segments.attach("s", "journey", "j1", "Welcome")
    with pytest.raises(InUse):
        account.segments.rollback("s", 1)
    account.segments.detach("s", "journey", "j1")
    account.segments.retention = Retention(-1, 1)
    upload(account, b"g,g5\n", "replace", segment="s")                  # 1 to 5 expire
    with pytest.raises(VersionGone):
        account.segments.rollback("s", 1)
    assert account.segments.versions("s")[0]["version"] == 6


def test_accounts_are_isolated(engine):
    a, b = engine.account("a"), engine.account("b")
    a.profiles.upsert(people(5))
    b.profiles.upsert([("g1", None, [])])
    upload(a, b"g,g1\ng,g2\n", name="s")
    with pytest.raises(NotFound):
        b.segments.get("s")
    assert upload(b, b"g,g2\ng,g1\n", name="s")["report"]["size"] == 1  # b only knows g1
    assert a.segments.get("s")["size"] == 2


def test_readers_see_only_whole_versions(account):
    """A reader checking membership in a loop while the segment is replaced 50 times sees, every time,
    exactly one of the committed lists: all of list A or all of list B, never a mix."""
    account.profiles.upsert(people(2000))
    list_a = [f"g{k}" for k in range(0, 1000)]
    list_b = [f"g{k}" for k in range(1000, 2000)]
    files = ["".join(f"g,{g}\n" for g in lst).encode() for lst in (list_a, list_b)]
    upload(account, files[0], name="s")
    probe = [("g", g) for g in list_a[::50] + list_b[::50]]
    half = len(probe) // 2
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            _, answers = account.segments.check_members("s", probe)
            if answers not in ([True] * half + [False] * half, [False] * half + [True] * half):
                bad.append(answers)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(50):
        assert upload(account, files[(i + 1) % 2], "replace", segment="s", chunk=977)["state"] == "succeeded"
    stop.set()
    for t in threads:
        t.join()
    assert not bad
    assert account.segments.get("s")["version"] == 51


CRASH_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from harness import open_engine
    e = open_engine(sys.argv[1], backend=sys.argv[2])
    a = e.account()
    up = a.upload("replace", segment="s")
    up.feed(b"g,g3\\n" * 1000)
    print("fed", flush=True)
    sys.stdin.read()
""")


def test_crash_mid_upload_keeps_last_version(tmp_path, backend):
    path = str(tmp_path / "data")
    with open_engine(path, backend=backend) as e:
        a = e.account()
        a.profiles.upsert(people(10))
        upload(a, b"g,g1\ng,g2\n", name="s")
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, path, backend, os.path.dirname(__file__)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"fed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_engine(path, backend=backend) as e:                      # opens cleanly, recovers
        a = e.account()
        uploads = [a.get_upload(i) for i in (1, 2)]
        assert uploads[1]["state"] == "failed" and uploads[1]["reason"] == "interrupted"
        assert list(a.segments.members("s")[1]) == [1, 2]
        assert upload(a, b"g,g5\n", "replace", segment="s")["state"] == "succeeded"


def test_one_million_rows_smoke(account):
    account.profiles.upsert((f"{k:032x}", None, []) for k in range(200_000))
    rows = b"".join(b"g,%032x\n" % (k % 250_000) for k in range(1_000_000))
    r = upload(account, b"Type,Identity\n" + rows, name="big", chunk=1 << 20)["report"]
    assert (r["rows"], r["qualified"], r["unknown"], r["duplicates"]) == (1_000_000, 200_000, 200_000, 600_000)
    assert account.segments.get("big")["size"] == 200_000


def test_resolve_batches_grow_to_the_backends_bound(account, monkeypatch):
    """Each batch is as large as all before it (one table walk each), never past the backend's bound
    (the memory an upload holds), and duplicates across batches are still counted once."""
    from listseg.core.ingest import FIRST_BATCH_ROWS
    account.profiles.upsert((f"{k:032x}", None, []) for k in range(100_000))
    bound, sizes, resolve = 600_000, [], account.profiles.resolve
    monkeypatch.setattr(account.backend, "max_resolve_rows", bound)
    monkeypatch.setattr(account.profiles, "resolve",
                        lambda snap, batch, parts: sizes.append(batch.valid) or resolve(snap, batch, parts))
    rows = b"".join(b"g,%032x\n" % (k % 150_000) for k in range(2_000_000))
    r = upload(account, b"Type,Identity\n" + rows, name="big", chunk=1 << 20)["report"]
    assert (r["rows"], r["qualified"], r["unknown"], r["duplicates"]) == (2_000_000, 100_000, 650_000, 1_250_000)
    chunk_rows = (1 << 20) // 35 + 1
    for k, size in enumerate(sizes[:-1]):
        wanted = min(max(FIRST_BATCH_ROWS, sum(sizes[:k])), bound)
        assert wanted <= size < wanted + chunk_rows, (k, sizes)
    assert sizes[2] > 2 * FIRST_BATCH_ROWS and max(sizes) < bound + chunk_rows, sizes


def test_an_uploads_bulk_work_runs_nicer_than_the_caller(account, monkeypatch):
    """Parsing and look-ups run on threads BULK_NICE nicer than the thread that feeds the upload
    (a server thread, which membership checks share; the look-ups' key-range threads inherit it), and
    none of that work runs on the feeding thread, whose priority stays as it was."""
    from listseg.core import ingest, parser
    account.profiles.upsert((f"{k:032x}", None, []) for k in range(2000))
    seen, feeder = {}, threading.get_native_id()

    def watched(name, fn):
        def run(*args, **kwargs):
            tid = threading.get_native_id()
            seen.setdefault(name, set()).add((tid, os.getpriority(os.PRIO_PROCESS, tid)))
            return fn(*args, **kwargs)
        return run
    monkeypatch.setattr(parser.Parser, "feed", watched("parse", parser.Parser.feed))
    monkeypatch.setattr(account.profiles, "resolve", watched("resolve", account.profiles.resolve))
    base = os.getpriority(os.PRIO_PROCESS, feeder)
    rows = b"".join(b"g,%032x\n" % k for k in range(3000))
    assert upload(account, b"Type,Identity\n" + rows, name="nice")["report"]["qualified"] == 2000
    assert os.getpriority(os.PRIO_PROCESS, feeder) == base
    assert set(seen) == {"parse", "resolve"}
    for name, threads in seen.items():
        assert feeder not in {tid for tid, _ in threads}, name
        assert {nice for _, nice in threads} == {min(19, base + ingest.BULK_NICE)}, name


def test_only_this_hosts_dead_uploads_are_judged_dead():
    """Servers on several machines share a Redis store: recover() must not fail another host's
    uploads because no process here has their pid."""
    import socket
    from listseg.core.ingest import owner_alive, process_token
    here = socket.gethostname()
    assert owner_alive(process_token(os.getpid()))
    assert not owner_alive(f"999999999:1@{here}")              # no such process here
    assert owner_alive("999999999:1@some-other-host")           # not ours to judge
    assert not owner_alive("999999999:1")                        # a record from before hosts were named
