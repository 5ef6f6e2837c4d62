"""A Redis Cluster primary killed (kill -9) mid-replace, right after a replace's head flip, and every
node killed and restarted from its AOF: the segment is always exactly one committed version, readers
get answers that match the version they report, a replace the failure interrupted fails with a
retryable status, and the next one succeeds. Each test has a cluster of its own (tests/cluster.py):
it kills nodes."""
import itertools
import os
import signal
import threading
import time

import grpc
import pytest
from redis.cluster import RedisCluster

import cluster as local_cluster
from conftest import wait_until
from harness import InProcess, open_engine
from listseg import CallError, Client
from listseg.core.redis_backend import RedisBackend, RedisUnit
from listseg.server import front
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

CSV = b"Type,Identity\n"
N = 2000
LIST_A = list(range(0, N, 2))            # version 1: the even uids
LIST_B = list(range(1, N, 3))            # a replace: every third from 1
PROBES = [f"g{k}" for k in range(0, 60)]
FAILOVER_S = 6                           # the servers' patience through a failover (?failover_s=)


@pytest.fixture
def cluster(tmp_path):
    if not local_cluster.shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: `make test` installs it")
    c = local_cluster.start(str(tmp_path / "cluster"))
    yield c
    c.stop()


def csv_of(uids):
    return CSV + b"".join(b"g,g%d\n" % k for k in uids)


def primary_of(c, key):
    """The port of the primary that serves key now."""
    client = RedisCluster(host=local_cluster.LOOPBACK, port=c.ports[0])
    try:
        return client.get_node_from_key(key).port
    finally:
        client.close()


class Readers:
    """Threads asking through a server, as campaign engines would: CheckMembers of PROBES on the
    server, and IsMember of each probe in turn on its membership front (which answers from the
    cluster itself, relaying to the server what it cannot). Each answer is noted (time, version,
    probes, flags), each failure (time, status)."""

    def __init__(self, service, n=2):
        self.answers, self.failures, self.stop = [], [], threading.Event()
        self.threads = [threading.Thread(target=self._check, args=(service.target,), daemon=True) for _ in range(n)]
        self.threads.append(threading.Thread(target=self._ask_front, args=(service.front_target,), daemon=True))
        for t in self.threads:
            t.start()

    def _note(self, call):
        try:
            self.answers.append((time.monotonic(), *call()))
        except CallError as e:
            self.failures.append((time.monotonic(), e.code))
        time.sleep(0.01)

    def _check(self, target):
        def check():
            version, flags = c.check_members("s", PROBES)
            return version, PROBES, flags
        with Client(target, timeout=30) as c:
            while not self.stop.is_set():
                self._note(check)

    def _ask_front(self, target):
        def ask():
            try:
                r = stub.IsMember(pb.IsMemberRequest(segment="s", type=pb.IDENTITY_TYPE_GUID, identity=probe[0]),
                                  timeout=30)
            except grpc.RpcError as e:
                raise CallError.from_rpc(e) from None
            return r.version, probe, [r.member]
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.MembershipStub(channel)
            for k in itertools.cycle(range(len(PROBES))):
                if self.stop.is_set():
                    return
                probe = PROBES[k:k + 1]
                self._note(ask)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def check(self, members_of):
        """Every answer is its version's members; returns the longest gap between answers (s)."""
        for _, version, probes, flags in self.answers:
            members = members_of[version]
            assert flags == [int(p[1:]) in members for p in probes], f"an answer not of version {version}"
        assert {code for _, code in self.failures} <= {grpc.StatusCode.UNAVAILABLE}, self.failures
        times = sorted(t for t, *_ in self.answers)
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


@pytest.fixture
def service(cluster, tmp_path):
    """A server on the cluster, with segment "s" at version 1 = LIST_A, and its membership front."""
    store = f"{cluster.url}?failover_s={FAILOVER_S}"
    engine = open_engine(tmp_path, backend=store)
    server = InProcess(engine=engine)
    acct = engine.account()
    acct.profiles.import_csv(["".join(f"g{k},id{k},email\n" for k in range(N)).encode()])
    with Client(server.target, timeout=120) as c:
        assert c.upload(csv_of(LIST_A), name="s").report.version == 1
    server.front = front.Front("127.0.0.1:0", server.target, store)
    server.front_target = f"127.0.0.1:{server.front.port}"
    yield server
    assert server.front.stop() == 0
    server.stop()


def recover_node(c, port):
    """Restart a killed node from its AOF; it joins again (as a replica of whoever took over)."""
    c.start_node(port)
    c.wait_ok()
    c.wait_replicated()


def members_now(target):
    with Client(target, timeout=60) as c:
        version = c.get_segment("s").version
        return version, sorted(int(line[3:]) for line in c.export("s").decode().split()[1:])


def test_a_primary_killed_mid_replace_leaves_the_last_version(cluster, service, monkeypatch):
    target = service.target
    meta = primary_of(cluster, b"{a:0}:acct")             # heads, records: the account's slot
    stage = RedisBackend.stage

    def stage_then_kill(self, acct, bm):                   # the new version's containers are written...
        staged = stage(self, acct, bm)
        cluster.kill_node(meta)                            # ...and the head's primary dies before the flip
        return staged
    readers = Readers(service)
    time.sleep(0.3)
    monkeypatch.setattr(RedisBackend, "stage", stage_then_kill)
    with Client(target, timeout=120) as c:
        with pytest.raises(CallError) as e:
            c.upload(csv_of(LIST_B), replace="s")
    monkeypatch.undo()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.reason == "STORAGE_UNAVAILABLE"
    cluster.wait_ok()                                       # the replica took over
    assert members_now(target) == (1, LIST_A)                # reads work with the primary gone
    recover_node(cluster, meta)                             # writes need a replica again
    with Client(target) as c:
        wait_until(lambda: c.get_upload(2).state == pb.UPLOAD_STATE_FAILED, timeout=60)   # once it could be
        assert c.upload(csv_of(LIST_B), replace="s").report.version == 2
    time.sleep(0.3)
    readers.finish()
    assert members_now(target) == (2, LIST_B)
    gap = readers.check({1: set(LIST_A), 2: set(LIST_B)})
    print(f"longest gap between reader answers: {gap:.2f} s; failures: {len(readers.failures)}")
    assert readers.answers[-1][1] == 2


def test_a_primary_killed_right_after_the_flip_keeps_the_new_version(cluster, service, monkeypatch):
    target = service.target
    meta = primary_of(cluster, b"{a:0}:acct")
    commit = RedisUnit.commit

    def commit_then_kill(self):
        done = commit(self)
        if done and any(b":heads" in key for key in self.hashes):       # the head just flipped
            cluster.kill_node(meta)
        return done
    readers = Readers(service)
    time.sleep(0.3)
    monkeypatch.setattr(RedisUnit, "commit", commit_then_kill)
    with Client(target, timeout=120) as c:
        assert c.upload(csv_of(LIST_B), replace="s").report.version == 2     # acknowledged: it must survive
    monkeypatch.undo()
    cluster.wait_ok()
    assert members_now(target) == (2, LIST_B)                # the promoted replica has the flip (WAIT)
    recover_node(cluster, meta)
    with Client(target) as c:
        assert c.upload(csv_of(LIST_A), replace="s").report.version == 3
    time.sleep(0.3)
    readers.finish()
    gap = readers.check({1: set(LIST_A), 2: set(LIST_B), 3: set(LIST_A)})
    print(f"longest gap between reader answers: {gap:.2f} s; failures: {len(readers.failures)}")


def test_every_node_restarted_from_its_aof_loses_nothing_committed(cluster, service):
    target = service.target
    with Client(target) as c:
        c.upload(csv_of(LIST_B), replace="s")
        before = (c.get_segment("s").version, c.get_segment("s").size)
    time.sleep(1.5)                                         # appendfsync everysec: on disk within a second
    for port in cluster.ports:
        cluster.kill_node(port)
    for port in cluster.ports:
        cluster.start_node(port)
    cluster.wait_ok()
    cluster.wait_replicated()
    with Client(target, timeout=60) as c:
        assert (c.get_segment("s").version, c.get_segment("s").size) == before
    assert members_now(target) == (2, LIST_B)
    with Client(target) as c:
        assert c.upload(csv_of(LIST_A), replace="s").report.version == 3


@pytest.mark.parametrize("when", ["before the upload", "after staging"])
def test_a_write_no_replica_took_is_not_acknowledged(cluster, service, monkeypatch, when):
    """WAIT: with the account slot's replica stopped, a replace is not acknowledged (its primary alone
    has it, and a failover would lose it), whether the upload's start (its record) or its commit
    (after the version is staged) meets the stopped replica. Once the replica is back, the upload's
    record and the segment agree: either both say the replace landed, or neither."""
    target = service.target
    meta = primary_of(cluster, b"{a:0}:acct")
    [replica] = cluster.replicas_of(meta)
    stop = lambda: os.kill(cluster.pids[replica], signal.SIGSTOP)     # noqa: E731
    if when == "before the upload":
        stop()
    else:
        stage = RedisBackend.stage

        def stage_then_stop(self, acct, bm):                # the commit is what meets it
            staged = stage(self, acct, bm)
            stop()
            return staged
        monkeypatch.setattr(RedisBackend, "stage", stage_then_stop)
    try:
        with Client(target, timeout=120) as c:
            with pytest.raises(CallError) as e:
                c.upload(csv_of(LIST_B), replace="s")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.reason == "STORAGE_UNAVAILABLE"
    finally:
        os.kill(cluster.pids[replica], signal.SIGCONT)
        monkeypatch.undo()
    cluster.wait_ok()
    cluster.wait_replicated()
    with Client(target) as c:
        wait_until(lambda: c.get_upload(2).state in (pb.UPLOAD_STATE_SUCCEEDED, pb.UPLOAD_STATE_FAILED), timeout=60)
        landed = c.get_upload(2).state == pb.UPLOAD_STATE_SUCCEEDED
    print(f"the replace unacknowledged for want of a replica {'landed' if landed else 'did not land'}")
    assert members_now(target) == ((2, LIST_B) if landed else (1, LIST_A))
