"""The read side's contract as third-party clients meet it (grpcurl, grpc-js, grpclib): page tokens are
checked, never trusted. A real server on loopback; "stock" calls go through a channel with grpc's
default options."""
import base64
import json

import grpc
import pytest

from conftest import people, start_server, stop_server, upload
from listseg import Client, ListsegError
from listseg.core.engine import Engine
from listseg.core.ingest import REJECTS_KEPT
from listseg.server import convert
from listseg.server.app import create_server
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

GUID = pb.IDENTITY_TYPE_GUID
PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,user%d@x.com,email\n" % (k, k) for k in range(300))


def csv(guids):
    return b"Type,Identity\n" + b"".join(b"g,%s\n" % g for g in guids)


def serve(path):
    engine = Engine(path, map_size=1 << 30)
    server, port = create_server(engine)
    return engine, server, f"127.0.0.1:{port}"


@pytest.fixture
def served(tmp_path):
    engine, server, target = serve(str(tmp_path / "data"))
    with Client(target, timeout=30) as c, grpc.insecure_channel(target) as stock:
        c.import_profiles(PROFILES)
        yield c, stock
    server.stop(0)
    engine.close()


def refused(call, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The ListsegError (status, ErrorInfo) a raw call ends with."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    err = ListsegError.from_rpc(e.value)
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
