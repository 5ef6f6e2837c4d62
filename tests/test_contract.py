"""The read side's contract as third-party clients meet it (grpcurl, grpc-js, grpclib): page tokens are
checked, never trusted; every ListMembers page fits a stock client's 4 MiB; CheckMembers names its limits
and the Python client splits a check that does not fit one call; identity_lines may end lines in CRLF.
A real server on loopback; "stock" calls go through a channel with grpc's default 4 MiB receive limit."""
import base64
import json
from array import array

import grpc
import pytest

from conftest import people, upload
from harness import InProcess, start_server, stop_server
from listseg import CallError, Client
from listseg.core.engine import Engine
from listseg.core.ingest import REJECTS_KEPT
from listseg.core.parser import MAX_FIELD
from listseg.server import convert
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

STOCK_LIMIT = 4 << 20               # what grpc-js, grpcurl, grpclib and grpcio receive by default
GUID = pb.IDENTITY_TYPE_GUID
PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,user%d@x.com,email\n" % (k, k) for k in range(300))


def csv(guids):
    return b"Type,Identity\n" + b"".join(b"g,%s\n" % g for g in guids)


@pytest.fixture
def served(server):
    with Client(server.target, timeout=30) as c, grpc.insecure_channel(server.target) as stock:
        c.import_profiles(PROFILES)
        yield c, stock


def refused(call, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The CallError (status, ErrorInfo) a raw call ends with."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    err = CallError.from_rpc(e.value)
    assert err.code == code, (err.code, str(err))
    return err


# -- page tokens ---------------------------------------------------------------------------------
def old_style(**state):
    """A token as the server used to write them (base64 JSON), which clients could edit."""
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode()


def tampered(token, at, value):
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[at] = value
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def test_forged_page_tokens_are_invalid_argument_on_page_token(served):
    """Each token below was once INTERNAL, looped, or paged from a place no page ends at."""
    client, stock = served
    client.upload(csv(b"g%d" % k for k in range(150)), name="s")
    client.upload(csv([b"g1"]), name="t")
    up = client.upload(csv([b"g1"]) + b"x,bad\n" * 3, name="u")
    seg = client.get_segment("s").id
    members = pb_grpc.MembershipStub(stock).ListMembers
    segments = pb_grpc.SegmentsStub(stock)
    good = dict(segment=seg, version=1, position=40, shard_index=0, shard_count=1)
    token = convert.MEMBERS_PAGE.write(**good)
    assert members(pb.ListMembersRequest(segment="s", page_size=40, page_token=token), timeout=10).count == 40

    forged = [
        old_style(s=seg, v=1, p=-5, i=0, n=1),          # the last members, then the same token forever
        old_style(s=seg, v=1, p="x", i=0, n=1),         # INTERNAL
        "not a token", token[:-4], token + "AAAA", " " + token, token[:10] + "+" + token[11:],
        tampered(token, 0, 9),                           # a format this server does not know
        convert.SEGMENTS_PAGE.write(position=40),        # another method's token
        convert.UPLOAD_ERRORS_PAGE.write(upload=up.id, position=1),
        *(convert.MEMBERS_PAGE.write(**dict(good, **bad)) for bad in (
            {"segment": client.get_segment("t").id},     # another segment
            {"version": 0}, {"version": 2}, {"version": 1 << 40},      # versions s never had
            {"position": 0}, {"position": 150}, {"position": 1 << 40},  # no page starts there
            {"shard_index": 1}, {"shard_count": 2})),    # another shard than the request's
    ]
    for bad in forged:
        err = refused(lambda: members(pb.ListMembersRequest(segment="s", page_token=bad), timeout=10))
        assert (err.reason, err.metadata) == ("INVALID_ARGUMENT", {"field": "page_token"}), bad

    for bad in (old_style(o=-1), old_style(o="x"), "%%%", convert.SEGMENTS_PAGE.write(position=0), token):
        err = refused(lambda: segments.ListSegments(pb.ListSegmentsRequest(page_token=bad), timeout=10))
        assert err.metadata == {"field": "page_token"}, bad
    for bad in (old_style(u=up.id, p=-1), old_style(u=up.id, p=1.5),
                convert.UPLOAD_ERRORS_PAGE.write(upload=up.id + 1, position=1),
                convert.UPLOAD_ERRORS_PAGE.write(upload=up.id, position=0),
                convert.UPLOAD_ERRORS_PAGE.write(upload=up.id, position=REJECTS_KEPT + 1), token):
        err = refused(lambda: segments.ListUploadErrors(
            pb.ListUploadErrorsRequest(id=up.id, page_token=bad), timeout=10))
        assert err.metadata == {"field": "page_token"}, bad


def test_every_paged_method_pages_to_the_end_with_its_own_tokens(served):
    client, stock = served
    for k in range(5):
        client.upload(csv([b"g%d" % k]), name=f"s{k}")
    up = client.upload(csv([b"g1"]) + b"x,bad\n" * 5, name="errors")
    segments, names, token = pb_grpc.SegmentsStub(stock), [], ""
    for _ in range(10):
        page = segments.ListSegments(pb.ListSegmentsRequest(page_size=2, page_token=token), timeout=10)
        names += [s.name for s in page.segments]
        token = page.next_page_token
        if not token:
            break
    assert names == ["s0", "s1", "s2", "s3", "s4", "errors"]
    lines, token = [], ""
    for _ in range(10):
        page = segments.ListUploadErrors(pb.ListUploadErrorsRequest(id=up.id, page_size=2, page_token=token),
                                         timeout=10)
        lines += [e.line for e in page.errors]
        token = page.next_page_token
        if not token:
            break
    assert lines == [3, 4, 5, 6, 7]


def test_page_tokens_outlive_the_server_process(tmp_path):
    """No per-process state in a token: one written by a `listseg serve` process works on the next
    one (a restart, or another of --workers N processes)."""
    data = str(tmp_path / "data")
    with Engine(data) as engine:
        account = engine.account()
        account.profiles.upsert(people(100))
        upload(account, csv(b"g%d" % k for k in range(100)), name="s")
    tokens, guids = [], []
    for _ in range(4):                      # a new server process for each page
        proc, target = start_server(data)
        try:
            with Client(target, timeout=30) as c:
                page = c.membership.ListMembers(pb.ListMembersRequest(
                    segment="s", page_size=30, page_token=tokens[-1] if tokens else ""), timeout=10)
        finally:
            stop_server(proc)
        guids += page.guids.split()
        tokens.append(page.next_page_token)
    assert guids == [b"g%d" % k for k in range(100)] and tokens[-1] == ""


# -- ListMembers pages fit 4 MiB -----------------------------------------------------------------
N_LONG = 60_000


def long_guid(k):
    """Unique guids, most of them as long as a guid may be (MAX_FIELD bytes), some short."""
    return b"%07d" % k + b"x" * ((MAX_FIELD - 7) if k % 5 else k % 40)


@pytest.fixture(scope="module")
def long_guids(tmp_path_factory):
    """A server whose segment "long" has N_LONG members with long guids, every 7th profile deleted."""
    server = InProcess(tmp_path_factory.mktemp("long") / "data")
    target = server.target
    guids = [long_guid(k) for k in range(N_LONG)]
    with Client(target, timeout=120) as c:
        c.import_profiles(b"guid,identity,channels\n" + b"".join(g + b",,\n" for g in guids))
        assert c.upload(csv(guids), name="long").report.size == N_LONG
        gone = guids[::7]
        assert c.delete_profiles([g.decode() for g in gone]) == len(gone)
    yield target, set(guids) - set(gone)
    server.stop()


def stock_pages(stock, method="ListMembers", **request):
    """Every page of a member listing through a channel with grpc's default receive limit."""
    stub, token, pages = pb_grpc.MembershipStub(stock), "", []
    make = getattr(pb, f"{method}Request")
    while True:
        page = getattr(stub, method)(make(page_token=token, **request), timeout=30)
        pages.append(page)
        token = page.next_page_token
        if not token or len(pages) > 1000:
            return pages


def members_of(pages):
    guids = [g for p in pages for g in p.guids.split(b"\n")[:-1]]
    uids = array("I")
    for p in pages:
        uids.frombytes(p.uids)
    assert len(guids) == len(uids) == sum(p.count for p in pages)
    assert list(uids) == sorted(set(uids)), "uids repeat or go back"
    return guids


@pytest.mark.parametrize("request_", [{}, {"page_size": 1_000_000}, {"shard_count": 2}],
                         ids=["default-page", "largest-page", "sharded"])
def test_every_list_members_page_fits_a_stock_client(long_guids, request_):
    target, expected = long_guids
    with grpc.insecure_channel(target) as stock:
        shards = request_.get("shard_count", 1)
        pages, guids = [], []
        for shard in range(shards):
            got = stock_pages(stock, segment="long", shard_index=shard, **request_)
            pages += got
            guids += members_of(got)
    assert len(guids) == len(set(guids)) and set(guids) == expected      # none lost, none repeated
    assert len(pages) > shards                                          # the byte budget cut pages
    assert max(p.ByteSize() for p in pages) < STOCK_LIMIT - (128 << 10)   # with margin


N_SHORT = 400_000          # members with 5-hex-digit guids: 10 bytes each with uid and newline, over 4 MiB


def test_every_member_changes_page_fits_a_stock_client(tmp_path):
    """ListMemberChanges adds a byte a member to what ListMembers sends: with short guids and the
    largest page, that byte too must stay inside the page's byte budget."""
    server = InProcess(tmp_path / "data")
    guids = [b"%05x" % k for k in range(N_SHORT)]
    try:
        with Client(server.target, timeout=120) as c, grpc.insecure_channel(server.target) as stock:
            c.import_profiles(b"guid,identity,channels\n" + b"".join(g + b",,\n" for g in guids))
            c.upload(csv(guids), name="short")
            pages = stock_pages(stock, "ListMemberChanges", segment="short", page_size=1_000_000)
    finally:
        server.stop()
    assert len(pages) > 1 and max(p.ByteSize() for p in pages) < STOCK_LIMIT - (128 << 10)
    assert members_of(pages) == guids and b"".join(p.added for p in pages) == b"\x01" * N_SHORT


def test_every_export_message_fits_a_stock_client(long_guids):
    target, expected = long_guids
    with grpc.insecure_channel(target) as stock:
        messages = list(pb_grpc.SegmentsStub(stock).ExportMembers(pb.ExportMembersRequest(segment="long"),
                                                                    timeout=60))
    assert max(m.ByteSize() for m in messages) < STOCK_LIMIT - (128 << 10)
    rows = b"".join(m.data for m in messages).split(b"\n")
    assert rows[0] == b"Type,Identity" and rows[-1] == b""
    assert sorted(rows[1:-1]) == sorted(b"g," + g for g in expected)


def test_member_pages_cut_by_bytes_lose_and_repeat_nothing(account):
    """The core's byte budget at every scale: guids of 1 to 256 bytes, deleted profiles between
    members, budgets down to less than one member (a page still holds one)."""
    guids = [b"%d-" % k + b"y" * (k * 37 % (MAX_FIELD - 5)) for k in range(600)]
    account.profiles.upsert([(g.decode(), None, []) for g in guids])
    upload(account, csv(guids[::2]), name="s")
    account.profiles.delete([g.decode() for g in guids[::6]])
    live = [g for g in guids[::2] if g not in set(guids[::6])]
    for budget in (1, 300, 1000, 5000, 1 << 20):
        for count in (1, 7, 1000):
            got, start, version = [], 0, None
            while start is not None:
                version, page, found, start = account.segments.member_page(
                    "s", start, count, version, max_bytes=budget)
                assert len(page) + len(found) <= budget or len(found) == 4      # or one member alone
                assert page.count(b"\n") == len(found) // 4
                got += page.split(b"\n")[:-1]
            assert got == live, (budget, count)


# -- CheckMembers' limits ------------------------------------------------------------------------
def test_check_members_names_its_limits(served):
    client, stock = served
    client.upload(csv([b"g1"]), name="s")
    check = pb_grpc.MembershipStub(stock).CheckMembers
    for field, kw in (("identity_lines", {"identity_lines": b"g1\n" * 100_001}),
                      ("identities", {"identities": ["g1"] * 100_001})):
        err = refused(lambda: check(pb.CheckMembersRequest(segment="s", type=GUID, **kw), timeout=30))
        assert err.metadata == {"field": field, "limit": "100000"}
    # over the 4 MiB request limit: RESOURCE_EXHAUSTED with an ErrorInfo naming it
    big = pb.CheckMembersRequest(segment="s", type=GUID, identity_lines=b"g1\n" * 1_500_000)
    err = refused(lambda: check(big, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert (err.reason, err.metadata) == ("REQUEST_TOO_LARGE", {"limit": str(4 << 20)})


def test_the_client_splits_a_check_that_does_not_fit_one_call(long_guids):
    target, members = long_guids
    probe = [long_guid(k) for k in range(0, 2 * N_LONG, 3)]         # 40,000 guids, 8.4 MB of them
    assert len(b"\n".join(probe)) > STOCK_LIMIT
    expected = [g in members for g in probe]
    with Client(target, timeout=30) as c:
        text = [g.decode() for g in probe]
        assert c.check_members("long", text) == (1, expected)                            # identity_lines
        assert c.check_members("long", text + ["two\nlines"]) == (1, expected + [False])  # identities
        short = [long_guid(k).decode() for k in (5, 10, 15, 20, 25)] + ["nobody"]
        assert c.check_members("long", short * 16_668) == (1, ([True] * 5 + [False]) * 16_668)  # 100,008


class ReplacingAfterEachCall:
    """The real Membership stub, but a replace of the segment follows some of its CheckMembers calls:
    a split check then straddles two versions."""

    def __init__(self, client, replaces):
        self.client, self.stub, self.replaces = client, client.membership, replaces

    def CheckMembers(self, request, **kw):
        resp = self.stub.CheckMembers(request, **kw)
        if self.replaces:
            self.replaces -= 1
            self.client.upload(csv([b"g%d" % (resp.version % 2)]), replace="s")
        return resp


def test_a_split_check_answers_from_one_version(served, monkeypatch):
    client, _ = served
    client.upload(csv([b"g0"]), name="s")                  # version 1: g0; 2: g1; 3: g0; ...
    probe = ["g0", "g1"] * 60_000                          # two calls (100,000 a call)
    monkeypatch.setattr(client, "membership", ReplacingAfterEachCall(client, replaces=1))
    version, answers = client.check_members("s", probe)
    assert version == 2 and answers == [False, True] * 60_000
    monkeypatch.setattr(client, "membership", ReplacingAfterEachCall(client, replaces=100))
    with pytest.raises(CallError) as e:
        client.check_members("s", probe)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.ABORTED, "VERSION_CHANGED")


# -- CRLF in identity_lines ----------------------------------------------------------------------
CRLF_PROBE = b"g0\r\ng1\r\n g2 \r\ng4\ng6\t\r\ng0\r\r\n\r\n"
CRLF_FLAGS = b"\x01\x00\x01\x01\x01\x00\x00"          # "g0\r" (one CR left) and "" are no members


def test_crlf_identity_lines_through_lmdb_and_the_index(account):
    """The same answers from LMDB (the profile index not built yet) and from the index, with the
    compiled store and its twin (and, in `make test-twin`, the twin index)."""
    account.profiles.upsert(people(10))
    upload(account, csv(b"g%d" % k for k in range(0, 10, 2)), name="s")
    with account.backend.snapshot() as snap:
        assert account.profiles.index.get(snap, build=False) is None          # not built: LMDB answers
    assert account.segments.check_lines("s", CRLF_PROBE, "g") == (1, CRLF_FLAGS)       # LMDB
    assert account.segments.check_lines("s", b"id1\r\nid2\r\nid3\r\n", "i") == (1, b"\x00\x00\x00")
    account.profiles.index.wait()
    with account.backend.snapshot() as snap:
        assert account.profiles.index.get(snap) is not None, "the index was not built"
    assert account.segments.check_lines("s", CRLF_PROBE, "g") == (1, CRLF_FLAGS)       # the index
    upload(account, csv([b"g1", b"g3"]), "replace", segment="s")
    assert account.segments.check_lines("s", b"id1\r\nid2\r\nid3\r\n", "i")[1] == b"\x01\x00\x01"
    # a key's own CR is kept where no line ends: IsMember and the plain form (as the membership front)
    assert account.segments.check_members("s", ["g1\r", "g1"], "g")[1] == [False, True]


def test_crlf_identity_lines_over_grpc(served):
    client, stock = served
    client.upload(csv([b"g1", b"g3"]), name="s")
    check = pb_grpc.MembershipStub(stock).CheckMembers
    resp = check(pb.CheckMembersRequest(segment="s", type=GUID, identity_lines=b"g1\r\ng2\r\ng3\r\n"), timeout=10)
    assert resp.member_flags == b"\x01\x00\x01"
    resp = check(pb.CheckMembersRequest(segment="s", type=pb.IDENTITY_TYPE_IDENTITY,
                                        identity_lines=b"user1@x.com\r\nuser3@x.com\r\n"), timeout=10)
    assert resp.member_flags == b"\x01\x01"
