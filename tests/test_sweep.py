"""Every RPC against hostile field values: none answers INTERNAL or UNKNOWN, every error carries an
ErrorInfo whose reason is in core/errors.py REASONS, and the server (and the membership front)
answer a plain call afterwards.

The methods come from the descriptors of proto/listseg/v1/listseg.proto, so a new RPC is swept
without a line here. Each request is the method's base request (sensible values: the segment that
exists, a real upload id, a known guid) with one field, at any depth, set to a hostile value on the
wire: raw bytes appended to the serialized base, so values protobuf would refuse to build (invalid
UTF-8, an out-of-range int32 or enum) reach the server as a client could send them. A real server
on loopback, in this process so its log is read too.
"""
import itertools
import logging
import os
import time

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from harness import InProcess, open_engine
from listseg.core.errors import REASONS
from listseg.server import front
from listseg.v1 import listseg_pb2 as pb

PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,user%d@x.com,email;sms\n" % (k, k) for k in range(50))
MEMBERS = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(20))

STRINGS = [b"x" * 10_240, b"\xc3\xa9" * 5000, b"x" * 600, b"\xc3\xa9" * 300, b"", b" ", b"a\x00b", b"\x00", b"a\nb", b"\n",
           b"a\rb", b"\r\n", b"\xff\xfe", b"a\xc3", b"\xed\xa0\x80", b"99999999999999999999999",
           b"18446744073709551616", b"segments/18446744073709551615", b"segments/-1", b"-1", b"0",
           b"segments/", b"\xef\xbb\xbfvip", b"%s", b"'; DROP TABLE segments; --"]
BYTES = [b"x" * 10_240, b"", b"\x00" * 16, b"\n", b"\r\n", b"\r", b"\xff\xfe\n", b"a\x00b\n",
         b"," * 1000 + b"\n", b"\n" * 1000, b"Type,Identity\ng,g1", b"guid\n", b"\"" * 7]
# varints as they go on the wire: 64-bit two's complement, so -1 is 2**64-1
INTEGERS = [2**63 - 1, 2**63, 2**64 - 1, 2**32, 2**32 - 1, 2**31, 2**31 - 1, 2**64 - 2**31, 2**64 - 2**32,
            1 << 40, 99, 0]
VARINTS = {F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_ENUM, F.TYPE_BOOL,
           F.TYPE_SINT32, F.TYPE_SINT64}


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number, wire_type, payload):
    tag = varint(number << 3 | wire_type)
    if wire_type == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


def hostile(message_type, depth=0):
    """(path, raw field bytes) for every field of message_type, nested messages included."""
    for f in message_type.fields:
        if f.type == F.TYPE_MESSAGE:
            if f.message_type.full_name.startswith("google.protobuf."):
                continue
            yield f.name, field_bytes(f.number, 2, b"")                     # present and empty
            if depth < 2:
                for path, raw in hostile(f.message_type, depth + 1):
                    yield f"{f.name}.{path}", field_bytes(f.number, 2, raw)
        elif f.type == F.TYPE_STRING:
            for value in STRINGS:
                yield f.name, field_bytes(f.number, 2, value)
        elif f.type == F.TYPE_BYTES:
            for value in BYTES:
                yield f.name, field_bytes(f.number, 2, value)
        elif f.type in VARINTS:
            for value in INTEGERS:
                yield f.name, field_bytes(f.number, 0, varint(value))
        else:
            raise AssertionError(f"no hostile values for {message_type.name}.{f.name} (type {f.type})")


class World:
    """A server on loopback with profiles, a segment `vip` (20 members) and one succeeded upload."""

    def __init__(self, tmp_path):
        self.data = str(tmp_path / "data")
        self.engine = open_engine(self.data)
        account = self.engine.account()
        account.profiles.import_csv([PROFILES])
        up = account.upload("create", name="vip")
        up.feed(MEMBERS)
        self.upload_id = up.finish()["id"]
        self.served = InProcess(engine=self.engine)
        self.server, self.target = self.served.server, self.served.target
        self.channel = grpc.insecure_channel(self.target)

    def close(self):
        self.channel.close()
        self.served.stop()

    def base(self, method):
        """The method's requests (a list: one for a unary request) with sensible values."""
        name = method.name
        if name == "UploadList":
            return [pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_APPEND, segment="vip")),
                    pb.UploadListRequest(data=b"Type,Identity\ng,g1\n"),
                    pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=19))]
        if name == "UpsertProfiles":
            return [pb.UpsertProfilesRequest(data=b"guid,identity,channels\ng1,user1@x.com,email;sms\n")]
        message = getattr(pb, method.input_type.name)()
        for f in method.input_type.fields:      # by name: the segment, a real upload, a known profile
            if f.is_repeated or f.type == F.TYPE_MESSAGE:
                continue
            if f.name == "segment":
                setattr(message, f.name, "vip")
            elif f.name == "identity":
                setattr(message, f.name, "g1")
            elif f.name == "id" and f.type == F.TYPE_UINT64:
                setattr(message, f.name, self.upload_id)
            elif f.name == "id":
                setattr(message, f.name, "c1")
            elif f.type == F.TYPE_ENUM:
                setattr(message, f.name, 1)
        return [message]

    def requests(self, method):
        """(label, [raw request messages]) for each hostile variant of the method's requests."""
        base = self.base(method)
        yield "an empty message", [b""]
        for i, msg in enumerate(base):
            for path, raw in hostile(method.input_type):
                stream = [m.SerializeToString() for m in base]
                stream[i] += raw
                yield f"message {i} {path}={raw[-40:]!r}", stream
        if method.client_streaming:
            yield "no messages", []
            yield "base twice", [m.SerializeToString() for m in base * 2]


def call(channel, method, stream, timeout=10):
    """Send raw request bytes; the raw response(s), or the grpc.RpcError the call ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    fn = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    try:
        answer = fn(iter(stream) if method.client_streaming else stream[0], timeout=timeout)
        if not method.server_streaming:
            return answer
        first = list(itertools.islice(answer, 1))   # a stream may go on (WatchSegment): its first answer says enough
        answer.cancel()
        return first
    except grpc.RpcError as e:
        return e


def problem(answer):
    """What is wrong with an answer, or None."""
    if not isinstance(answer, grpc.RpcError):
        return None
    if answer.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{answer.code().name}: {answer.details()}"
    try:
        status = rpc_status.from_call(answer)
    except ValueError as e:                     # a status the client made, beside the server's details
        return f"{answer.code().name}: {answer.details()} ({e})"
    infos = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    if len(infos) != 1:
        return f"{answer.code().name} with {len(infos)} ErrorInfo: {answer.details()}"
    if infos[0].reason not in REASONS:
        return f"{answer.code().name} with reason {infos[0].reason!r}, not in REASONS"
    return None


class InternalLog(logging.Handler):
    """Every record the server logs at ERROR or above (the traceback of an INTERNAL)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    log = InternalLog()
    logging.getLogger("listseg.server").addHandler(log)
    w.log = log
    yield w
    logging.getLogger("listseg.server").removeHandler(log)
    w.close()


def methods():
    return [m for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]


def still_up(channel):
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    is_member = channel.unary_unary("/listseg.v1.Membership/IsMember", request_serializer=pb.IsMemberRequest.SerializeToString,
                                    response_deserializer=pb.IsMemberResponse.FromString)
    assert is_member(pb.IsMemberRequest(segment="vip", type=pb.IDENTITY_TYPE_GUID, identity="g19"), timeout=5).member


def sweep(channel, method, world):
    found = []
    for label, stream in world.requests(method):
        answer = call(channel, method, stream)
        wrong = problem(answer)
        if wrong:
            found.append(f"{method.name} {label}: {wrong}")
    return found


def test_the_sweep_reaches_every_method():
    names = {m.name for m in methods()}
    assert {"UploadList", "IsMember", "DeleteProfiles", "GetProfile", "RollbackSegment", "ListMemberChanges", "WatchSegment"} <= names and len(names) == 21


@pytest.mark.parametrize("method", methods(), ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_no_hostile_request_is_internal(world, method):
    started = time.monotonic()
    found = sweep(world.channel, method, world)
    assert not found, "\n".join(found[:40]) + f"\n({len(found)} in all)"
    assert not world.log.records, world.log.records[:5]
    still_up(world.channel)
    assert time.monotonic() - started < 20


@pytest.mark.skipif(not os.access(front.BINARY, os.X_OK), reason="the front is not built (make install)")
def test_no_hostile_membership_request_is_internal_through_the_front(world, tmp_path):
    fr = front.Front("127.0.0.1:0", world.target, world.data)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fr.port}") as channel:
            found = []
            for method in pb.DESCRIPTOR.services_by_name["Membership"].methods:
                found += sweep(channel, method, world)
            assert not found, "\n".join(found[:40]) + f"\n({len(found)} in all)"
            still_up(channel)
    finally:
        assert fr.stop() == 0
    assert not world.log.records, world.log.records[:5]


@pytest.mark.skipif(not os.access(front.BINARY, os.X_OK), reason="the front is not built (make install)")
def test_an_unknown_method_of_a_long_name_is_refused_readably_on_both_ports(world):
    """The refusal names the method; cut short, it still reaches the caller (7 KB is as long a path as
    grpc takes in the request's 8 KiB of headers). The front's answer did not: 21 KiB of headers."""
    fr = front.Front("127.0.0.1:0", world.target, world.data)
    try:
        for target, reason in ((world.target, "UNKNOWN_METHOD"), (f"127.0.0.1:{fr.port}", "NOT_ON_FRONT")):
            with grpc.insecure_channel(target) as channel:
                for name in ("Nope", "n" * 7000):
                    answer = call(channel, FakeMethod(name), [b""])
                    assert answer.code() == grpc.StatusCode.UNIMPLEMENTED, (target, len(name), answer.details())
                    assert problem(answer) is None and reason_of(answer) == reason
    finally:
        assert fr.stop() == 0


class FakeMethod:
    """A method no service has, in the shape call() reads."""

    def __init__(self, name):
        self.name = name
        self.containing_service = type("Service", (), {"full_name": "listseg.v1.Nowhere"})
        self.client_streaming = self.server_streaming = False


def reason_of(answer):
    for detail in rpc_status.from_call(answer).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
