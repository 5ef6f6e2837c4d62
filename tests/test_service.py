"""The gRPC service end to end: a real server on an ephemeral loopback port, the real client."""
import http.server
import json
import signal
import threading
import time

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import needs_tgkill, upload_state, wait_until
from harness import InProcess, signal_a_worker_thread, start_server
from harness import free_port as _free_port
from listseg import CallError, Client
from listseg.core.accounts import Credentials
from listseg.core.engine import Engine
from listseg.server.app import Server
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

PROFILES = b"guid,identity,channels\n" + b"".join(
    b"g%d,user%d@x.com,%s\n" % (k, k, [b"email", b"sms;push", b""][k % 3]) for k in range(300))


#: The service suite runs on the embedded store and on a real Redis Cluster (conftest `backend`).
BACKENDS = ["lmdb", "redis-cluster"]


@pytest.fixture
def served(backend, server):
    return server.engine, server.server, server.target


@pytest.fixture
def client(served):
    with Client(served[2], timeout=10) as c:
        c.import_profiles(PROFILES)
        yield c


def csv(*guids):
    return b"Type,Identity\n" + b"".join(b"g,%s\n" % g.encode() for g in guids)


def test_upload_show_query_export(client):
    up = client.upload(csv("g1", "g2", "g2", "nobody") + b"i,user3@x.com\nbad,row\n", name="vip")
    assert up.state == pb.UPLOAD_STATE_SUCCEEDED
    r = up.report
    assert (r.rows, r.qualified, r.unknown, r.invalid, r.duplicates, r.size) == (6, 3, 1, 1, 1, 3)
    assert [(e.line, e.reason) for e in r.errors] == [(7, "bad type")]
    seg = client.get_segment("vip", sample=2)
    assert (seg.size, seg.version, seg.state) == (3, 1, pb.SEGMENT_STATE_READY)
    assert dict(seg.reachability) == {"email": 1, "sms": 1, "push": 1, "whatsapp": 0, "webpush": 0}
    assert len(seg.sample) == 2 and seg.last_upload.id == up.id and len(seg.trend) == 1
    assert client.get_segment(str(seg.id)).name == "vip"                    # by id too
    assert client.is_member("vip", guid="g1") and client.is_member("vip", identity="user3@x.com")
    assert not client.is_member("vip", guid="g4")
    assert client.check_members("vip", ["g1", "g4", "g3", "zz"]) == (1, [True, False, True, False])
    assert client.export("vip") == b"Type,Identity\ng,g1\ng,g2\ng,g3\n"
    listed, = client.list_segments()              # with its last upload, as GetSegment, less the errors
    assert (listed.name, listed.size, listed.last_upload.id, listed.last_upload.report.invalid) == ("vip", 3, up.id, 1)
    assert len(seg.last_upload.report.errors) == 1 and not listed.last_upload.report.errors
    assert client.upload_errors(up.id) == [(7, "bad type")]
    assert client.get_upload(up.id).state == pb.UPLOAD_STATE_SUCCEEDED
    assert client.get_profile(guid="g4").identity == "user4@x.com"
    assert len(client.sample("vip", 5)) == 3
    assert client.delete_profiles(["g4", "nobody"]) == 1
    with pytest.raises(CallError) as e:
        client.get_profile(guid="g4")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_check_members_plain_and_bulk_forms(client):
    client.upload(csv("g1", "g3"), name="vip")
    probe = ["g1", " g3\t", "g2", "", "zz"]
    guid = pb.IDENTITY_TYPE_GUID

    def check(**kw):
        return client.membership.CheckMembers(pb.CheckMembersRequest(segment="vip", type=guid, **kw), timeout=5)
    bulk = check(identity_lines="".join(p + "\n" for p in probe).encode())
    plain = check(identities=probe)
    assert (list(bulk.member_flags), list(bulk.members)) == ([1, 1, 0, 0, 0], [])
    assert (list(plain.members), plain.member_flags) == ([True, True, False, False, False], b"")
    assert client.check_members("vip", ["g1", "a\nb", "g3"]) == (1, [True, False, True])   # the plain form
    assert client.check_members("vip", ["user1@x.com", "user2@x.com"], type="i") == (1, [True, False])
    assert client.check_members("vip", []) == (1, [])
    for kw in (dict(identities=["g1"], identity_lines=b"g1\n"), dict(identity_lines=b"g1"),
               dict(identity_lines=b"\n" * 100_001)):
        with pytest.raises(grpc.RpcError) as e:
            check(**kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kw


def test_lookups_answer_while_every_rpc_thread_is_busy(tmp_path):
    """IsMember and CheckMembers run on threads of their own: uploads holding all of the server's
    other threads (2 here, both waiting for data that does not come) do not hold them up."""
    served = InProcess(tmp_path / "data", max_workers=2)
    port = served.port
    release = threading.Event()

    def stalled(name):
        yield pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name=name))
        release.wait(30)
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as c:
            c.import_profiles(PROFILES)
            c.upload(csv("g1"), name="vip")
            stub = pb_grpc.SegmentsStub(c.channel)
            calls = [stub.UploadList.future(stalled(f"s{k}"), timeout=30) for k in range(2)]
            time.sleep(0.5)                          # both uploads now hold a server thread
            assert c.membership.IsMember(pb.IsMemberRequest(
                segment="vip", type=pb.IDENTITY_TYPE_GUID, identity="g1"), timeout=3).member
            assert c.check_members("vip", ["g1", "g2"]) == (1, [True, False])
            release.set()
            for call in calls:
                with pytest.raises(grpc.RpcError):
                    call.result()                    # no UploadFinish: refused, nothing committed
    finally:
        release.set()
        served.stop()


def test_watch_upload_ends_with_the_upload(client):
    up = client.upload(csv("g1"), name="w")
    progress = client.watch_upload(up.id, timeout=5)
    assert progress[-1].upload.id == up.id and progress[-1].state == pb.UPLOAD_STATE_SUCCEEDED


def test_errors_carry_status_and_reason(client):
    client.upload(csv("g1"), name="vip")
    cases = [
        (lambda: client.get_segment("nope"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (lambda: client.upload(csv("g1"), name="vip"), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
        (lambda: client.upload(csv("g1"), replace="nope"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (lambda: client.upload(csv("g1"), name=""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (lambda: client.membership.IsMember(pb.IsMemberRequest(segment="vip", identity="g1"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, None),
        (lambda: client.get_profile(guid="nobody"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    ]
    for call, code, reason in cases:
        with pytest.raises((CallError, grpc.RpcError)) as e:
            call()
        err = e.value if isinstance(e.value, CallError) else CallError.from_rpc(e.value)
        assert err.code == code
        if reason:
            assert err.reason == reason


def test_names_a_reference_would_read_as_an_id_are_refused(client):
    first = client.upload(csv("g1"), name="vip")
    for name in ("42", str(first.segment), " 007 ", "segments/42", "segments/vip"):
        for dry_run in (False, True):
            with pytest.raises(CallError) as e:
                client.upload(csv("g2"), name=name, dry_run=dry_run)
            err = e.value
            assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                                                            {"field": "name"}), name
    assert [s.name for s in client.list_segments()] == ["vip"]
    with pytest.raises(CallError) as e:
        client.get_upload(first.id + 1)                   # refused before an upload began
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    for name in ("٣", "²", "vip 2", "2024-06"):            # digits beyond ASCII, digits among others: names
        up = client.upload(csv("g2"), name=name)
        assert client.get_segment(name).id == int(up.segment) and client.is_member(name, guid="g2"), name
    assert client.get_segment("segments/" + first.segment).name == "vip"


def test_requests_that_do_not_parse_are_invalid_argument(client):
    client.upload(csv("g1"), name="vip")
    garbage = b"\xff\xff\xff"                                 # a field tag cut short
    for method, streams in (("/listseg.v1.Membership/IsMember", False), ("/listseg.v1.Membership/CheckMembers", False),
                            ("/listseg.v1.Segments/GetSegment", False), ("/listseg.v1.Segments/ExportMembers", True)):
        call = client.channel.unary_stream(method) if streams else client.channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as e:
            list(call(garbage, timeout=5)) if streams else call(garbage, timeout=5)
        err = CallError.from_rpc(e.value)
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), method
        assert "not a valid listseg.v1." in str(err)
    replace = pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_REPLACE, segment="vip"))
    upload = client.channel.stream_unary("/listseg.v1.Segments/UploadList")
    with pytest.raises(grpc.RpcError) as e:                    # a good spec and data, then garbage
        upload(iter([replace.SerializeToString(), pb.UploadListRequest(data=csv("g2")).SerializeToString(),
                     garbage]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.get_upload(2).state == pb.UPLOAD_STATE_FAILED
    assert client.export("vip") == b"Type,Identity\ng,g1\n"


def test_versions_list_what_made_each_and_a_rollback_is_a_new_head(client, tmp_path):
    (tmp_path / "spring.csv").write_bytes(csv("g1", "g2"))
    first = client.upload(str(tmp_path / "spring.csv"), name="vip")
    client.upload(csv("g3"), replace="vip")
    seg = client.rollback("vip", 1)
    assert (seg.version, seg.size) == (3, 2)
    assert client.is_member("vip", guid="g1") and not client.is_member("vip", guid="g3")
    versions = client.versions("vip")
    assert [(v.version, v.size, v.head, v.kept, v.rollback_of) for v in versions] == \
        [(3, 2, True, True, 1), (2, 1, False, True, 0), (1, 2, False, True, 0)]
    assert not versions[0].HasField("upload") and versions[2].upload.id == first.id
    assert (versions[2].upload.mode, versions[2].upload.file_name) == (pb.UPLOAD_MODE_CREATE, "spring.csv")
    assert [t.version for t in client.get_segment("vip").trend] == [1, 2, 3]
    for version, code in ((3, grpc.StatusCode.INVALID_ARGUMENT), (7, grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(CallError) as e:
            client.rollback("vip", version)
        assert e.value.code == code and e.value.reason, version
    client.attach("vip", "journey", "j1", "Welcome")
    with pytest.raises(CallError) as e:
        client.rollback("vip", 2)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SEGMENT_IN_USE")
    assert client.get_segment("vip").version == 3                      # nothing changed
    with pytest.raises(CallError) as e:
        client.versions("nope")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_in_use_is_failed_precondition_naming_consumers(client):
    client.upload(csv("g1"), name="vip")
    client.attach("vip", "campaign", "c-1", "Spring")
    for kw in ({"replace": "vip"}, {"append": "vip"}, {"remove": "vip"}):
        with pytest.raises(CallError) as e:
            client.upload(csv("g2"), **kw)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and e.value.reason == "SEGMENT_IN_USE"
        assert "campaign c-1" in e.value.metadata["consumers"]
    with pytest.raises(CallError) as e:
        client.delete_segment("vip")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.detach("vip", "campaign", "c-1")
    assert client.upload(csv("g2"), replace="vip").report.size == 1
    client.delete_segment("vip")
    assert client.list_segments() == []


def test_upload_stream_misuse(served, client):
    stub = pb_grpc.SegmentsStub(client.channel)
    names = iter(f"s{k}" for k in range(100))

    def spec(mode=pb.UPLOAD_MODE_CREATE):
        return pb.UploadListRequest(spec=pb.UploadSpec(mode=mode, name=next(names)))
    data = pb.UploadListRequest(data=b"g,g1\n")

    def finish(total):
        return pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=total))
    for messages, code in (([], grpc.StatusCode.INVALID_ARGUMENT),
                           ([data, spec()], grpc.StatusCode.INVALID_ARGUMENT),
                           ([spec(), data, spec()], grpc.StatusCode.INVALID_ARGUMENT),
                           ([spec(mode=7)], grpc.StatusCode.INVALID_ARGUMENT),
                           ([spec(), pb.UploadListRequest(data=b"x" * (3 << 20))], grpc.StatusCode.RESOURCE_EXHAUSTED),
                           ([spec(), pb.UploadListRequest(data=b"x" * (5 << 20))], grpc.StatusCode.RESOURCE_EXHAUSTED),
                           ([spec(), data], grpc.StatusCode.INVALID_ARGUMENT),                 # no finish
                           ([spec(), data, finish(999)], grpc.StatusCode.INVALID_ARGUMENT)):   # bytes lost
        with pytest.raises(grpc.RpcError) as e:
            stub.UploadList(iter(messages), timeout=10)
        assert e.value.code() == code, messages[:1]
    assert all(client.get_upload(u).state == pb.UPLOAD_STATE_FAILED for u in (1, 2, 3, 5))
    assert client.get_upload(5).reason == "the finish message counts 999 bytes, 5 arrived"
    # the stream that stopped without its finish message (s6) may have been cut short: its upload waits
    # for a resume, holding its segment; the creates that failed left none
    waiting = client.get_upload(4)
    assert (waiting.state, waiting.committed_bytes) == (pb.UPLOAD_STATE_RECEIVING, 5)
    assert waiting.HasField("resume_deadline")
    assert [(s.name, s.state) for s in client.list_segments()] == [("s6", pb.SEGMENT_STATE_PROCESSING)]
    resume = pb.UploadListRequest(resume=pb.UploadResume(upload_id=4, offset=5))
    done = stub.UploadList(iter([resume, finish(5)]), timeout=10)               # its finish, at last
    assert (done.id, done.state, done.report.size, done.committed_bytes) == (4, pb.UPLOAD_STATE_SUCCEEDED, 1, 5)
    ok = stub.UploadList(iter([spec(), data, finish(5)]), timeout=10)           # the same, finished
    assert ok.state == pb.UPLOAD_STATE_SUCCEEDED and ok.report.size == 1


def test_cancelled_upload_changes_nothing(client):
    client.upload(csv("g1"), name="vip")
    stub = pb_grpc.SegmentsStub(client.channel)
    sent, cancelled = threading.Event(), threading.Event()

    def messages():
        yield pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_REPLACE, segment="vip"))
        yield pb.UploadListRequest(data=csv("g2", "g3"))
        sent.set()
        cancelled.wait(30)                             # holds the stream open until the client cancels
        yield pb.UploadListRequest(data=csv("g4"))
    future = stub.UploadList.future(messages(), timeout=60)
    assert sent.wait(10)
    wait_until(lambda: upload_state(client, 2) == pb.UPLOAD_STATE_RECEIVING)   # the server is mid-upload
    wait_until(lambda: client.get_upload(2).committed_bytes == len(csv("g2", "g3")))   # and has the data
    future.cancel()
    cancelled.set()
    # the upload waits for a resume with the bytes it had; the segment never saw them
    wait_until(lambda: client.get_upload(2).HasField("resume_deadline"))
    waiting = client.get_upload(2)
    assert (waiting.state, waiting.committed_bytes) == (pb.UPLOAD_STATE_RECEIVING, len(csv("g2", "g3")))
    assert client.export("vip") == b"Type,Identity\ng,g1\n"


def _spec(name):
    return pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name=name))


def _hold_open(client, name, sent, release):
    """A create's stream that sends a spec and some data, then waits for `release` (never finishes)."""
    yield _spec(name)
    yield pb.UploadListRequest(data=csv("g1", "g2"))
    sent.set()
    release.wait(30)


def _fail_create(how, served, client, name):
    """Run a create of `name` that fails in the way `how`; returns the reason its upload gives."""
    stub = pb_grpc.SegmentsStub(client.channel)
    data = pb.UploadListRequest(data=csv("g1"))
    if how == "bad header":
        assert client.upload(b"Name,Email\ng,g1\n", name=name).state == pb.UPLOAD_STATE_FAILED
        return "bad header"
    if how == "no row qualifies":
        assert client.upload(csv("nobody"), name=name).state == pb.UPLOAD_STATE_FAILED
        return "no row names a known profile"
    if how == "strict, an invalid row":
        assert client.upload(csv("g1") + b"q,zz\n", name=name, strict=True).state == pb.UPLOAD_STATE_FAILED
        return "strict: 1 invalid rows"
    if how == "over the size limit":
        services = served[1].services
        limit, services.max_upload_bytes = services.max_upload_bytes, 100
        try:
            with pytest.raises(CallError) as e:
                client.upload(csv(*[f"g{k}" for k in range(50)]), name=name)
        finally:
            services.max_upload_bytes = limit
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return "file too large"
    if how in ("no finish message", "finish counts other bytes"):
        messages = [_spec(name), data] + ([pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=999))]
                                          if how == "finish counts other bytes" else [])
        with pytest.raises(grpc.RpcError) as e:
            stub.UploadList(iter(messages), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return "without a finish message" if how == "no finish message" else "the finish message counts 999 bytes"
    sent, release = threading.Event(), threading.Event()
    call = stub.UploadList.future(_hold_open(client, name, sent, release), timeout=3 if how == "deadline" else 60)
    try:
        assert sent.wait(10)
        wait_until(lambda: upload_state(client, 1) == pb.UPLOAD_STATE_RECEIVING)   # the server is mid-upload
        if how == "client cancel":
            call.cancel()
        with pytest.raises(grpc.FutureCancelledError if how == "client cancel" else grpc.RpcError) as e:
            call.result(30)
        if how == "deadline":
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    wait_until(lambda: client.get_upload(1).HasField("resume_deadline"))     # waiting for a resume
    return "the stream ended"                   # or, now and then for a cancel, "...without a finish message"


CREATE_FAILURES = ["bad header", "no row qualifies", "strict, an invalid row", "over the size limit",
                   "no finish message", "finish counts other bytes", "client cancel", "deadline"]
BROKEN_STREAMS = ("no finish message", "client cancel", "deadline")      # these wait for a resume first


@pytest.mark.parametrize("how", CREATE_FAILURES)
def test_a_failed_create_leaves_no_segment_and_the_same_create_succeeds(served, client, how):
    """"Fix the errors and re-upload the file": a create that fails, however it fails, makes no
    segment, and its upload record still says why; the same create then just works. A create whose
    stream broke waits for a resume, holding its segment, until a new create of the name takes it."""
    reason = _fail_create(how, served, client, "vip")
    if how in BROKEN_STREAMS:
        assert client.get_segment("vip").state == pb.SEGMENT_STATE_PROCESSING
        retry = client.upload(csv("g1", "g2"), name="vip")      # a new create takes the name from it
        assert retry.state == pb.UPLOAD_STATE_SUCCEEDED
        assert "a new create of 'vip' took the name before it was resumed" in client.get_upload(1).reason
        client.delete_segment("vip")
    failed = client.get_upload(1)
    assert (failed.state, failed.mode, failed.segment_name) == (pb.UPLOAD_STATE_FAILED, pb.UPLOAD_MODE_CREATE, "vip")
    assert reason in failed.reason or (how == "client cancel" and "without a finish message" in failed.reason)
    for ref in ("vip", failed.segment):
        with pytest.raises(CallError) as e:
            client.get_segment(ref)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert client.list_segments() == []
    retry = client.upload(csv("g1", "g2"), name="vip")
    assert retry.state == pb.UPLOAD_STATE_SUCCEEDED and retry.segment != failed.segment
    seg = client.get_segment("vip")
    assert (seg.size, seg.version, seg.state, seg.last_upload.id) == (2, 1, pb.SEGMENT_STATE_READY, retry.id)
    assert client.get_upload(1).reason == failed.reason          # the failed upload's record stays


def test_list_members_pinned_and_sharded(client):
    client.upload(csv(*[f"g{k}" for k in range(0, 300, 2)]), name="s")
    pages = client.list_members("s", page_size=40)
    first = next(pages)
    client.upload(csv("g1"), replace="s")                      # replaced while paging
    rest = list(pages)
    guids = b"".join(p.guids for p in [first] + rest).split()
    assert guids == [b"g%d" % k for k in range(0, 300, 2)]
    assert {p.version for p in [first] + rest} == {1}
    seen = []
    for shard in range(3):
        for page in client.list_members("s", page_size=7, shard_index=shard, shard_count=3):
            seen += page.guids.split()
    assert seen == [b"g1"]
    with pytest.raises(CallError) as e:
        next(client.list_members("s", shard_index=3, shard_count=3))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_member_changes_pinned_to_both_versions_and_paged(client):
    client.upload(csv(*[f"g{k}" for k in range(0, 200, 2)]), name="s")                  # version 1
    client.upload(csv(*[f"g{k}" for k in range(0, 300, 3)]), replace="s")                # version 2
    old, new = set(range(0, 200, 2)), set(range(0, 300, 3))
    pages = client.member_changes("s", 1, page_size=20)
    first = next(pages)
    client.upload(csv("g1"), replace="s")                      # version 3, while paging version 2
    got = []
    for page in [first, *pages]:
        assert (page.from_version, page.to_version) == (1, 2)
        assert (page.added_total, page.removed_total) == (len(new - old), len(old - new))
        uids = memoryview(page.uids).cast("I")
        assert page.count == len(uids) == len(page.added) <= 20
        got += [(int(g[1:]), bool(a)) for g, a in zip(page.guids.decode().split(), page.added, strict=True)]
    assert got == sorted([(k, True) for k in new - old] + [(k, False) for k in old - new])
    everyone = [p for p in client.member_changes("s", 0)]      # from 0: the head's members, all added
    assert [(p.to_version, p.guids, bytes(p.added)) for p in everyone] == [(3, b"g1\n", b"\x01")]
    sharded = [g for shard in range(3) for p in client.member_changes("s", 2, 3, page_size=7, shard_index=shard,
                                                                       shard_count=3) for g in p.guids.split()]
    assert sharded == sorted([b"g%d" % k for k in new ^ {1}], key=lambda g: int(g[1:]))
    token = first.next_page_token
    for request, code in ((pb.ListMemberChangesRequest(segment="s", from_version=9), grpc.StatusCode.NOT_FOUND),
                          (pb.ListMemberChangesRequest(segment="s", from_version=2, page_token=token),
                           grpc.StatusCode.INVALID_ARGUMENT),           # another request's token
                          (pb.ListMemberChangesRequest(segment="s", from_version=1, to_version=3, page_token=token),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.ListMemberChangesRequest(segment="s", from_version=1, page_token="bm90IGEgdG9rZW4"),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.ListMemberChangesRequest(segment="s", shard_index=2, shard_count=2),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.ListMemberChangesRequest(segment="nope"), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as e:
            client.membership.ListMemberChanges(request, timeout=10)
        assert e.value.code() == code, request
    resumed = client.membership.ListMemberChanges(pb.ListMemberChangesRequest(
        segment="s", from_version=1, page_token=token, page_size=20), timeout=10)
    assert resumed.guids == list(client.member_changes("s", 1, 2, page_size=20))[1].guids


def change(c):
    return c.version, c.from_version, c.added, c.removed, c.size


def test_watch_segment_sends_each_head_change(client):
    client.upload(csv(*[f"g{k}" for k in range(10)]), name="s")                          # version 1
    watch = client.watch_segment("s", timeout=60)
    assert change(next(watch)) == (1, 0, 10, 0, 10)             # the head now, as joined from nothing
    client.upload(csv(*[f"g{k}" for k in range(5, 15)]), replace="s")
    assert change(next(watch)) == (2, 1, 5, 5, 10)
    client.upload(csv("g20"), append="s")
    assert change(next(watch)) == (3, 2, 1, 0, 11)
    client.rollback("s", 1)                                     # g0-g4 back; g10-g14 and g20 out
    assert change(next(watch)) == (4, 3, 5, 6, 10)
    resumed = client.watch_segment("s", after_version=4, timeout=60)   # seen 4: the next event is 5's
    client.delete_profiles(["g0"])                              # no new version: no event
    client.upload(csv("g30"), append="s")
    assert change(next(resumed)) == (5, 4, 1, 0, 10)            # g0 left with its profile, g30 joined
    assert change(next(watch)) == (5, 4, 1, 0, 10)
    client.delete_segment("s")
    for stream in (watch, resumed):
        with pytest.raises(CallError) as e:
            next(stream)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(CallError) as e:
        next(client.watch_segment("nope"))
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_watchers_never_take_the_threads_uploads_need(client):
    """Each stream holds a server thread: past MAX_SEGMENT_WATCHES a watch is refused, and however
    many watch (without reading), uploads and checks go on."""
    from listseg.server.servicers import MAX_SEGMENT_WATCHES
    client.upload(csv("g1"), name="s")
    watches = [client.watch_segment("s", timeout=60) for _ in range(MAX_SEGMENT_WATCHES)]
    assert all(next(w).version == 1 for w in watches)
    with pytest.raises(CallError) as e:
        next(client.watch_segment("s", timeout=60))
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES")
    for k in range(3):                                         # nobody reads the watches meanwhile
        assert client.upload(csv(f"g{k + 2}"), replace="s").state == pb.UPLOAD_STATE_SUCCEEDED
        assert client.is_member("s", guid=f"g{k + 2}")
    watches.pop().close()                                      # a closed watch frees its place

    seen = []

    def watched():
        try:
            seen.append(next(client.watch_segment("s", timeout=60)))
        except CallError as e:
            assert e.reason == "TOO_MANY_WATCHES"              # not yet: the server sees the close within 0.25 s
        return seen
    wait_until(watched, 10)
    assert seen[0].version == 4
    for w in watches:
        w.close()


def test_health_and_reflection(served):
    channel = grpc.insecure_channel(served[2])
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="listseg.v1.Segments"),
                                                     timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert {"listseg.v1.Segments", "listseg.v1.Membership", "listseg.v1.Profiles"} <= names
    channel.close()


def test_accounts_auth_and_isolation(served):
    engine, _, target = served
    creds = Credentials(engine)
    a_id, a_pass = creds.create("Shop A")
    b_id, b_pass = creds.create("Shop B")
    with Client(target, a_id, a_pass) as a, Client(target, b_id, b_pass) as b:
        a.import_profiles(PROFILES)
        a.upload(csv("g1", "g2"), name="vip")
        with pytest.raises(CallError) as e:
            b.get_segment("vip")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert b.list_segments() == []
        assert a.get_segment("vip").size == 2
    for account, passcode in ((None, None), (a_id, "wrong"), ("acct-nobody", a_pass), (a_id, None)):
        with Client(target, account, passcode) as c:
            with pytest.raises(CallError) as e:
                c.list_segments()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert str(e.value) == "missing or invalid credentials (x-account-id, x-passcode)"


def test_dev_mode_refuses_a_public_address(tmp_path):
    engine = Engine(str(tmp_path / "d"), map_size=1 << 26)
    with pytest.raises(PermissionError):
        Server(engine, "0.0.0.0:0")
    Credentials(engine).create("someone")
    Server(engine, "0.0.0.0:0").stop(0)                     # with an account it may
    engine.close()


def test_webhook_receives_the_upload_the_call_returns(served, client):
    """The body is {"upload": ...}: the Upload message the call returned, in proto3 JSON with every
    field, and nothing of the stored record beyond it (its owner process, say)."""
    got = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.headers["Content-Type"], self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{httpd.server_port}/done"
    try:
        ups = [client.upload(csv("g1", "nobody") + b"q,zz\n", name="hooked", webhook_url=hook),
               client.upload(csv("nobody"), replace="hooked", webhook_url=hook)]      # one failed
        wait_until(lambda: len(got) == 2, timeout=10)
    finally:
        httpd.shutdown()
    stored = served[0].account().get_upload(ups[0].id)
    assert "owner" in stored                                        # the record has it; the body must not
    for up in ups:
        ctype, raw = next((c, r) for c, r in got if str(json.loads(r)["upload"]["id"]) == str(up.id))
        body = json.loads(raw)
        assert ctype == "application/json" and list(body) == ["upload"]
        assert body["upload"] == json_format.MessageToDict(up, always_print_fields_with_no_presence=True)
        assert json_format.ParseDict(body["upload"], pb.Upload()) == up == client.get_upload(up.id)
        assert "owner" not in raw.decode()
        assert set(body["upload"]) == {f.json_name for f in pb.Upload.DESCRIPTOR.fields} - {"resumeDeadline"}   # unset
    failed = json.loads(next(r for _, r in got if str(json.loads(r)["upload"]["id"]) == str(ups[1].id)))["upload"]
    assert (failed["state"], failed["reason"], failed["report"]["qualified"]) == (
        "UPLOAD_STATE_FAILED", "no row names a known profile", "0")
    with pytest.raises(CallError) as e:
        client.upload(csv("g1"), name="x", webhook_url="ftp://example.com/")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_dead_webhook_never_fails_the_upload(served, client):
    notifier = served[1].services.webhooks
    notifier.backoff_s = 0.01
    up = client.upload(csv("g1"), name="h", webhook_url=f"http://127.0.0.1:{_free_port()}/gone")
    assert up.state == pb.UPLOAD_STATE_SUCCEEDED
    assert notifier.notify(f"http://127.0.0.1:{_free_port()}/gone", up).result(10) is False


def test_sigterm_drains_an_upload_in_flight(tmp_path):
    """SIGTERM while an upload streams: the server stops taking calls but the upload completes."""
    data = str(tmp_path / "data")
    with Engine(data) as e:
        e.account().profiles.upsert([(f"g{k}", None, []) for k in range(10)])
    proc, target = start_server(data, "--grace", "20")
    try:
        with Client(target, timeout=30) as c:
            taken, signalled = threading.Event(), threading.Event()

            def slow():
                yield b"Type,Identity\ng,g1\n"
                assert taken.wait(30)         # the server holds the call: a draining server refuses new ones
                proc.send_signal(signal.SIGTERM)
                signalled.set()
                time.sleep(1.0)
                yield b"g,g2\n"

            class Chunks:
                def __init__(self):
                    self.parts = slow()

                def read(self, n):
                    return next(self.parts, b"")
            up = c.upload(Chunks(), name="drained", on_stream=lambda *_: taken.set())
            assert signalled.is_set() and up.state == pb.UPLOAD_STATE_SUCCEEDED and up.report.size == 2
        assert proc.wait(30) == 0
        logs = proc.stderr.read().decode()
        assert '"msg": "draining"' in logs and '"msg": "stopped"' in logs, logs
    finally:
        if proc.poll() is None:
            proc.kill()


@needs_tgkill
def test_sigterm_handed_to_another_thread_stops_the_server(tmp_path):
    """The kernel hands a process's SIGTERM to any of its threads; Python runs the handler in the main
    thread only when that thread runs, so a main thread asleep for good would never drain."""
    proc, _ = start_server(str(tmp_path / "data"), "--grace", "5")
    try:
        signal_a_worker_thread(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert '"msg": "stopped"' in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_share_the_port(tmp_path):
    data = str(tmp_path / "data")
    with Engine(data) as e:
        e.account().profiles.upsert([(f"g{k}", None, []) for k in range(10)])
    proc, target = start_server(data, "--workers", "2")
    try:
        with Client(target, timeout=30) as c:
            c.upload(csv("g1", "g2"), name="w")
            for _ in range(20):                       # new connections land on either worker
                with Client(target, timeout=10) as fresh:
                    assert fresh.is_member("w", guid="g2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        pids = {json.loads(line)["pid"] for line in proc.stderr.read().decode().splitlines()
                if '"serving"' in line}
        assert len(pids) == 2
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_waits_for_the_handlers_still_running(tmp_path, monkeypatch):
    """A handler still in the engine when the server stops (here an upload setting up) ends before
    the engine may close: one inside a closed LMDB environment would crash the process."""
    from listseg.core import ingest
    events, entered = [], threading.Event()
    start = ingest.Upload.__init__

    def slow_start(self, *args, **kwargs):
        entered.set()
        time.sleep(0.5)
        if "closed" in events:          # rather than crash in LMDB, which is what would happen
            raise RuntimeError("the engine was closed under a running handler")
        start(self, *args, **kwargs)
        events.append("upload started")
    monkeypatch.setattr(ingest.Upload, "__init__", slow_start)
    server = InProcess(tmp_path / "data")
    close = server.engine.close
    server.engine.close = lambda: (events.append("closed"), close())
    with Client(server.target, timeout=10) as c:
        c.import_profiles(PROFILES)
        messages = [pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name="s")),
                    pb.UploadListRequest(data=csv("g1")), pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=17))]
        call = pb_grpc.SegmentsStub(c.channel).UploadList.future(iter(messages), timeout=10)
        assert entered.wait(10)
        server.stop()
        call.cancel()
    assert events == ["upload started", "closed"]
