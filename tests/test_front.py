"""The native membership front (server/native/membership_front.cc) against the server it fronts.

It must answer exactly as the server does, from the same version, see every write at once, relay
what it does not answer (errors keep their status and reason), and take only passcodes the server
has accepted. Real processes on loopback ports; the server runs in this process so tests can write
to its engine directly. The tests of a `pair` run on LMDB and on the session's Redis Cluster.
"""
import json
import os
import signal
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest
from conftest import wait_until
from harness import InProcess, free_port, front_pids, start_server, stop_server, wait_healthy
from listseg import CallError, Client
from listseg.core.accounts import Credentials
from listseg.core.engine import Engine
from listseg.server import front
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(not os.access(front.BINARY, os.X_OK), reason="the front is not built (make install)")

PROFILES = b"guid,identity,channels\n" + b"".join(
    b"g%d,%s,email\n" % (k, b"user%d@x.com" % k if k % 2 == 0 else b"") for k in range(200))
GUID, IDENT = pb.IDENTITY_TYPE_GUID, pb.IDENTITY_TYPE_IDENTITY
BACKENDS = ["lmdb", "redis-cluster"]          # what a `pair` stores in (conftest `backend`)


class Pair:
    """The server and its front, with a raw Membership stub on each."""

    def __init__(self, tmp_path, backend="lmdb"):
        self.data = str(tmp_path / "data")
        self.served = InProcess(self.data, backend=backend)
        self.engine, self.server, self.target = self.served.engine, self.served.server, self.served.target
        self.store = backend if "://" in backend else self.data         # what the front reads
        self.front = front.Front("127.0.0.1:0", self.target, self.store)
        self.front_target = f"127.0.0.1:{self.front.port}"
        self.channels = [grpc.insecure_channel(t) for t in (self.target, self.front_target)]
        self.direct, self.fronted = (pb_grpc.MembershipStub(ch) for ch in self.channels)

    def close(self):
        for ch in self.channels:
            ch.close()
        self.front.stop()
        self.served.stop()

    def both(self, method, request, metadata=()):
        """(server's answer, front's answer), each an answer message or (status code, reason)."""
        answers = []
        for stub in (self.direct, self.fronted):
            try:
                answers.append(getattr(stub, method)(request, metadata=metadata, timeout=10))
            except grpc.RpcError as e:
                answers.append((e.code(), CallError.from_rpc(e).reason))
        return answers


@pytest.fixture
def pair(tmp_path, backend):
    p = Pair(tmp_path, backend)
    yield p
    p.close()


def csv(rows):
    return b"Type,Identity\n" + b"".join(b"%s,%s\n" % (t.encode(), k.encode()) for t, k in rows)


def is_member(segment, identity, kind=GUID):
    return pb.IsMemberRequest(segment=segment, type=kind, identity=identity)


def test_front_answers_every_look_up_as_the_server(pair):
    with Client(pair.target) as c:
        c.import_profiles(PROFILES)
        rows = [("g", f"g{k}") for k in range(0, 200, 3)] + [("i", f"user{k}@x.com") for k in range(0, 200, 5)]
        up = c.upload(csv(rows + [("g", "nobody")]), name="vip")
    assert up.report.qualified > 50
    keys = [(GUID, f"g{k}") for k in range(200)] + [(IDENT, f"user{k}@x.com") for k in range(200)]
    keys += [(GUID, " g3\t"), (GUID, "nobody"), (IDENT, "user1@x.com"), (GUID, "G3"), (IDENT, "g0")]
    inside = {k for k in range(200) if k % 3 == 0 or k % 10 == 0}      # identities exist for even k only
    expected = [k in inside for k in range(200)] + [k in inside and k % 2 == 0 for k in range(200)]
    expected += [True, False, False, False, False]
    for ref in ("vip", up.segment, f"segments/{up.segment}"):
        for (kind, key), want in zip(keys, expected):
            direct, fronted = pair.both("IsMember", is_member(ref, key, kind))
            assert isinstance(fronted, pb.IsMemberResponse), (ref, key, fronted)
            assert (fronted.member, fronted.version) == (direct.member, direct.version) == (want, up.report.version), \
                (ref, key)


def test_front_sees_each_replace_and_delete_at_once(pair):
    with Client(pair.target) as c:
        c.import_profiles(PROFILES)
        c.upload(csv([("g", "g1")]), name="s")
        for round_ in range(4):                     # each replace: a new version with other members
            wanted = {f"g{k}" for k in range(round_, 200, 4)}
            version = c.upload(csv([("g", g) for g in sorted(wanted)]), replace="s").report.version
            for k in range(0, 200, 7):
                answer = pair.fronted.IsMember(is_member("s", f"g{k}"))
                assert (answer.member, answer.version) == (f"g{k}" in wanted, version)
        rolled = c.rollback("s", 2).version                 # round 0's members, as a new head
        for k in range(0, 200, 7):
            answer = pair.fronted.IsMember(is_member("s", f"g{k}"))
            assert (answer.member, answer.version) == (k % 4 == 0, rolled)
        c.rollback("s", version)                            # and back to the last round's
        assert pair.fronted.IsMember(is_member("s", "g3")).member
        c.delete_profiles(["g3"])
        assert not pair.fronted.IsMember(is_member("s", "g3")).member      # no longer a profile
        c.delete_segment("s")
    direct, fronted = pair.both("IsMember", is_member("s", "g7"))
    assert direct == fronted == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_front_relays_errors_and_the_other_calls(pair):
    with Client(pair.target) as c:
        c.import_profiles(PROFILES)
        c.upload(csv([("g", f"g{k}") for k in range(0, 200, 2)]), name="even")
    for request, error in ((is_member("nope", "g1"), grpc.StatusCode.NOT_FOUND),
                           (is_member("", "g1"), grpc.StatusCode.INVALID_ARGUMENT),
                           (is_member("even", "g1", kind=0), grpc.StatusCode.INVALID_ARGUMENT),
                           (is_member("segments/99999999999", "g1"), grpc.StatusCode.NOT_FOUND),
                           (is_member("even", ""), None), (is_member("even", "x" * 600), None)):
        direct, fronted = pair.both("IsMember", request)          # the last two: relayed, answered there
        assert fronted == direct, (request, direct, fronted)
        assert (direct[0] if isinstance(direct, tuple) else None) == error
    ids = [f"g{k}" for k in range(50)] + ["nobody"]
    for request in (pb.CheckMembersRequest(segment="even", type=GUID, identities=ids),
                    pb.CheckMembersRequest(segment="even", type=GUID, identity_lines="".join(i + "\n" for i in ids).encode()),
                    pb.CheckMembersRequest(segment="even", type=GUID, identity_lines=b"g1"),
                    pb.ListMembersRequest(segment="even", page_size=30),
                    pb.ListMembersRequest(segment="nope"),
                    pb.ListMemberChangesRequest(segment="even", page_size=30),
                    pb.ListMemberChangesRequest(segment="even", from_version=7)):
        method = type(request).__name__.removesuffix("Request")
        direct, fronted = pair.both(method, request)
        assert fronted == direct, request
    assert sum(pair.fronted.CheckMembers(pb.CheckMembersRequest(segment="even", type=GUID, identities=ids)).members) == 25
    for method in ("IsMember", "CheckMembers", "ListMembers", "ListMemberChanges"):   # bytes that are no message
        answers = []
        for channel in pair.channels:
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(f"/listseg.v1.Membership/{method}")(b"\xff\xff\xff", timeout=10)
            answers.append((e.value.code(), CallError.from_rpc(e.value).reason))
        assert answers[0] == answers[1] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), method


def test_front_takes_only_passcodes_the_server_accepts(pair):
    creds = Credentials(pair.engine)
    a_id, a_pass = creds.create("Shop A")
    b_id, b_pass = creds.create("Shop B")
    with Client(pair.target, a_id, a_pass) as a:
        a.import_profiles(PROFILES)
        a.upload(csv([("g", "g1")]), name="vip")

    def ask(account, passcode, segment="vip"):
        md = tuple((k, v) for k, v in (("x-account-id", account), ("x-passcode", passcode)) if v)
        direct, fronted = pair.both("IsMember", is_member(segment, "g1"), metadata=md)
        assert direct == fronted or (fronted.member, fronted.version) == (direct.member, direct.version)
        return fronted

    for _ in range(2):                              # the second round: after the server has accepted a_pass
        assert ask(None, None) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert ask(a_id, "wrong") == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert ask(b_id, a_pass) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert ask(a_id, a_pass).member
        assert ask(b_id, b_pass) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")   # A's segment is not B's


def test_front_answers_is_member_itself(pair):
    creds = Credentials(pair.engine)
    account, passcode = creds.create("Shop")
    md = (("x-account-id", account), ("x-passcode", passcode))
    with Client(pair.target, account, passcode) as c:
        c.import_profiles(PROFILES)
        c.upload(csv([("g", "g1")]), name="s")
    assert pair.fronted.IsMember(is_member("s", "g1"), metadata=md).member      # relayed: a passcode not seen yet
    pair.server.stop(0)
    assert pair.fronted.IsMember(is_member("s", "g1"), metadata=md).member      # with no server behind it
    assert not pair.fronted.IsMember(is_member("s", "g2"), metadata=md).member
    for request, method in ((is_member("s", "g1"), "IsMember"),                # a passcode never accepted
                            (pb.CheckMembersRequest(segment="s", type=GUID, identities=["g1"]), "CheckMembers")):
        with pytest.raises(grpc.RpcError) as e:
            getattr(pair.fronted, method)(request, metadata=(md[0], ("x-passcode", "other")), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_front_serves_and_relays_over_tls(tmp_path):
    from test_limits_security import _certificates
    certs = _certificates(tmp_path)
    tls = (certs["cert"], certs["key"])
    served = InProcess(tmp_path / "data", tls=tls)
    port = served.port
    fronted = front.Front("127.0.0.1:0", served.target, str(tmp_path / "data"), tls, certs["ca"])
    try:
        with Client(f"127.0.0.1:{port}", tls_ca=certs["ca"]) as c:
            c.import_profiles(PROFILES)
            c.upload(csv([("g", "g1")]), name="s")
        with Client(f"127.0.0.1:{fronted.port}", tls_ca=certs["ca"]) as c:
            assert c.is_member("s", guid="g1") and not c.is_member("s", guid="g2")       # answered
            assert c.check_members("s", ["g1", "g2"])[1] == [True, False]              # relayed over TLS
        with Client(f"127.0.0.1:{fronted.port}", timeout=3) as plain:
            with pytest.raises(CallError) as e:
                plain.is_member("s", guid="g1")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        fronted.stop()
        served.stop()


def test_a_caller_that_cancels_cancels_the_relayed_call(tmp_path):
    Engine(str(tmp_path / "d"), map_size=1 << 26).close()        # the files the front opens
    started, ended = threading.Event(), threading.Event()

    class Stalled(pb_grpc.MembershipServicer):                  # a server busy with one long call
        def CheckMembers(self, request, context):
            context.add_callback(ended.set)
            started.set()
            while context.is_active():
                time.sleep(0.01)
            return pb.CheckMembersResponse()
    backend = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_MembershipServicer_to_server(Stalled(), backend)
    port = backend.add_insecure_port("127.0.0.1:0")
    backend.start()
    fronted = front.Front("127.0.0.1:0", f"127.0.0.1:{port}", str(tmp_path / "d"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fronted.port}") as channel:
            call = pb_grpc.MembershipStub(channel).CheckMembers.future(
                pb.CheckMembersRequest(segment="s", type=GUID, identities=["g1"]), timeout=120)
            assert started.wait(10)
            call.cancel()
            assert ended.wait(10)                                # not at the 120 s deadline
    finally:
        fronted.stop()
        backend.stop(0)


def test_front_refuses_a_public_address_without_accounts(tmp_path):
    Engine(str(tmp_path / "d"), map_size=1 << 26).close()
    run = subprocess.run([front.BINARY, "--listen", "0.0.0.0:0", "--backend", "127.0.0.1:1",
                          "--data", str(tmp_path / "d")], capture_output=True, timeout=30, check=False)
    assert run.returncode != 0 and b"loopback" in run.stderr
    with pytest.raises(front.FrontError):
        front.Front("0.0.0.0:0", "127.0.0.1:1", str(tmp_path / "d"))


def _front_pids(port):
    return front_pids(f"127.0.0.1:{port}")


def _serve_with_front(tmp_path, workers):
    """`listseg serve --membership-listen` with segment "s" = {g5}; (process, server target, front port)."""
    port = free_port()
    proc, target = start_server(str(tmp_path / "data"), "--membership-listen", f"127.0.0.1:{port}",
                                "--workers", str(workers))
    try:
        wait_healthy(f"127.0.0.1:{port}")
        with Client(target) as c:
            c.import_profiles(PROFILES)
            c.upload(csv([("g", "g5")]), name="s")
    except BaseException:
        stop_server(proc)
        raise
    return proc, target, port


@pytest.mark.parametrize("stop,workers", [("sigterm", 1), ("sigkill", 1), ("sigterm", 2)])
def test_serve_runs_the_front_and_it_never_outlives_the_server(tmp_path, stop, workers):
    proc, target, port = _serve_with_front(tmp_path, workers)
    try:
        with Client(f"127.0.0.1:{port}") as via_front:
            assert via_front.is_member("s", guid="g5") and not via_front.is_member("s", guid="g6")
            with pytest.raises(CallError) as e:                     # the front serves Membership only
                via_front.get_segment("s")
            assert e.value.code == grpc.StatusCode.UNIMPLEMENTED and target in str(e.value)
        assert len(_front_pids(port)) == 1
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        assert {s.name for s in answer.list_services_response.service} >= {"listseg.v1.Membership",
                                                                          "grpc.health.v1.Health"}
    finally:
        if stop == "sigterm":
            stop_server(proc)
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    wait_until(lambda: not _front_pids(port), timeout=10)


def _health(target, service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5).status
        except grpc.RpcError as e:
            return e.code()


def _log_records(proc, msg):
    with open(f"/proc/self/fd/{proc.stderr.fileno()}", "rb") as log:
        records = [json.loads(line) for line in log if line.startswith(b"{")]
    return [r for r in records if r["msg"] == msg]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_restarts_a_front_that_dies_and_its_health_says_so(tmp_path, workers):
    from grpc_health.v1 import health_pb2
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    proc, target, port = _serve_with_front(tmp_path, workers)
    try:
        wait_until(lambda: _health(target, front.HEALTH_NAME) == SERVING, timeout=10)
        pids = []
        for kill in range(3):                       # each restart waits twice as long as the one before
            [pid] = _front_pids(port)
            pids.append(pid)
            os.kill(pid, signal.SIGKILL)
            if kill == 2:                           # down for >= 0.4 s: the server's health shows it
                wait_until(lambda: _health(target, front.HEALTH_NAME) == NOT_SERVING, timeout=10)
            wait_until(lambda: _front_pids(port) not in ([], [pid]), timeout=20)
            wait_until(lambda: _health(target, front.HEALTH_NAME) == SERVING, timeout=20)
            with Client(f"127.0.0.1:{port}") as via_front:        # the same port, answering again
                assert via_front.is_member("s", guid="g5") and not via_front.is_member("s", guid="g6")
        assert len(set(pids)) == 3
        assert _health(target, "listseg.v1.Membership") == SERVING
        exits = _log_records(proc, "membership front exited")
        assert [(e["pid"], e["signal"]) for e in exits] == [(p, "SIGKILL") for p in pids]
        assert [r["in_s"] for r in _log_records(proc, "restarting the membership front")] == [0.1, 0.2, 0.4]
        assert [r["restarts"] for r in _log_records(proc, "membership front restarted")] == [1, 2, 3]
    finally:
        stop_server(proc)
    wait_until(lambda: not _front_pids(port), timeout=10)


@pytest.mark.front_crash_expected
def test_a_front_that_crashes_is_logged_as_crashed(tmp_path, caplog):
    """What the suite's front_never_crashes check looks for (tests/conftest.py)."""
    Engine(str(tmp_path / "d"), map_size=1 << 26).close()
    fronted = front.Front("127.0.0.1:0", "127.0.0.1:1", str(tmp_path / "d"))
    os.kill(fronted.proc.pid, signal.SIGSEGV)
    fronted.proc.wait(10)
    assert fronted.stop() == -signal.SIGSEGV
    assert [(r.getMessage(), r.fields["signal"]) for r in caplog.records] == [("membership front crashed", "SIGSEGV")]


def test_both_ports_serve_health_by_name_and_reflection_v1_and_v1alpha(pair):
    from grpc_health.v1 import health_pb2
    from listseg.v1 import reflection_v1_pb2 as refl
    assert _health(pair.front_target, "listseg.v1.Membership") == health_pb2.HealthCheckResponse.SERVING
    assert _health(pair.front_target, "") == health_pb2.HealthCheckResponse.SERVING
    symbols = ["listseg.v1.Membership", "grpc.health.v1.Health", "google.rpc.ErrorInfo",
               "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    for target in (pair.target, pair.front_target):
        for version in ("v1", "v1alpha"):
            with grpc.insecure_channel(target) as channel:
                call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                             request_serializer=refl.ServerReflectionRequest.SerializeToString,
                                             response_deserializer=refl.ServerReflectionResponse.FromString)
                answers = list(call(iter([refl.ServerReflectionRequest(list_services="")] +
                                         [refl.ServerReflectionRequest(file_containing_symbol=s) for s in symbols] +
                                         [refl.ServerReflectionRequest(file_containing_symbol="no.Such")]), timeout=10))
            listed = {s.name for s in answers[0].list_services_response.service}
            assert listed >= {"listseg.v1.Membership", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                              "grpc.reflection.v1alpha.ServerReflection"}, (target, version)
            for symbol, answer in zip(symbols, answers[1:]):       # each resolves to a file that defines it
                from google.protobuf import descriptor_pb2
                files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                         for raw in answer.file_descriptor_response.file_descriptor_proto]
                package, _, name = symbol.rpartition(".")
                assert any(f.package == package and (name in {s.name for s in f.service} or
                                                      name in {m.name for m in f.message_type}) for f in files), \
                    (target, version, symbol)
            assert answers[-1].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_every_error_either_port_makes_carries_an_error_info(pair):
    for channel, reason in zip(pair.channels, ("UNKNOWN_METHOD", "NOT_ON_FRONT")):
        for method in ("/no.Such/Method", "/listseg.v1.Segments/GetSegment"):
            if reason == "UNKNOWN_METHOD" and method.startswith("/listseg"):
                continue                                    # the server serves that one
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(method)(b"", timeout=10)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert CallError.from_rpc(e.value).reason == reason, method
    big = pb.CheckMembersRequest(segment="s", type=GUID, identity_lines=b"g1\n" * 1_500_000)   # 4.5 MB
    for stub in (pair.direct, pair.fronted):
        with pytest.raises(grpc.RpcError) as e:
            stub.CheckMembers(big, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert CallError.from_rpc(e.value).reason == "REQUEST_TOO_LARGE"
    dead = front.Front("127.0.0.1:0", "127.0.0.1:1", pair.store)        # a front whose server is gone
    try:
        with grpc.insecure_channel(f"127.0.0.1:{dead.port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.MembershipStub(channel).ListMembers(pb.ListMembersRequest(segment="s"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert CallError.from_rpc(e.value).reason == "SERVER_UNAVAILABLE"
    finally:
        dead.stop()


def test_front_server_and_dashboard_share_one_loopback_rule(tmp_path):
    """A name that resolves only to loopback addresses (the machine's own name here) is loopback for
    all three; the front used to refuse what the server accepted."""
    import socket
    from listseg.dashboard.server import Dashboard
    from listseg.server.addresses import is_loopback
    name = socket.gethostname()
    if not is_loopback(name):
        pytest.skip(f"{name} does not resolve to loopback only here")
    assert not is_loopback("0.0.0.0") and is_loopback("[::1]") and is_loopback("127.0.0.9")
    Engine(str(tmp_path / "d"), map_size=1 << 26).close()
    served = InProcess(tmp_path / "d", map_size=1 << 26, address=f"{name}:0")
    fronted = front.Front(f"{name}:0", f"127.0.0.1:{served.port}", str(tmp_path / "d"))
    dash = Dashboard(f"127.0.0.1:{served.port}", f"{name}:0").start()
    try:
        assert fronted.port and dash.port
    finally:
        dash.stop()
        fronted.stop()
        served.stop()


def test_every_exit_status_is_described():
    """The supervisor logs every exit; a signal with no name (real-time ones) must not stop it."""
    assert front.describe_exit(0) == {"exit_code": 0} and front.describe_exit(2) == {"exit_code": 2}
    assert front.describe_exit(-signal.SIGKILL) == {"signal": "SIGKILL"}
    assert front.describe_exit(-40) == {"signal": "signal 40"}
    assert front.crashed(-signal.SIGSEGV) and front.crashed(-signal.SIGABRT)
    assert not front.crashed(-signal.SIGKILL) and not front.crashed(-signal.SIGTERM) and not front.crashed(1)
