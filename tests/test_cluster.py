"""listseg on a real local Redis Cluster (tests/cluster.py): `listseg serve --store redis-cluster://...`
processes share one cluster's data, and what only a Redis store does. The engine's own suite runs on
the cluster too (conftest `backend`)."""
import contextlib
import json
import signal
import subprocess
import sys

import cluster
import pytest

from conftest import flush
from harness import free_port, open_engine, start_server, stop_server, wait_healthy
from listseg import Client

CSV = b"Type,Identity\n"


def profiles_csv(n):
    return "".join(f"g{k},id{k},email\n" for k in range(n)).encode()


@pytest.fixture
def store(redis_cluster):
    flush(redis_cluster)
    return redis_cluster.url


@pytest.fixture
def two_servers(store, tmp_path):
    made = [start_server(tmp_path / f"unused{k}", "--store", store) for k in range(2)]
    yield [target for _, target in made]
    for proc, _ in made:
        stop_server(proc)


def test_two_servers_on_one_cluster_answer_alike(two_servers):
    a, b = two_servers
    with Client(a) as ca, Client(b) as cb:
        ca.import_profiles(profiles_csv(50))
        report = ca.upload(CSV + b"g,g1\ng,g2\ni,id3\ng,nobody\n", name="vip").report
        assert (report.qualified, report.unknown) == (3, 1)
        # at once on the other server: no cache of a head it has not read
        assert [cb.is_member("vip", guid=g) for g in ("g1", "g3", "g4")] == [True, True, False]
        assert cb.check_members("vip", ["g1", "g2", "g4"])[1] == [True, True, False]
        assert sorted(cb.export("vip").decode().split()[1:]) == ["g,g1", "g,g2", "g,g3"]
        cb.upload(CSV + b"g,g4\n", replace="vip")
        assert [ca.is_member("vip", guid=g) for g in ("g1", "g4")] == [False, True]
        assert ca.get_segment("vip").size == cb.get_segment("vip").size == 1


def test_an_account_made_through_one_server_signs_in_on_the_other(store, tmp_path):
    out = subprocess.run([sys.executable, "-m", "listseg.clients.cli", "accounts", "create", "Acme",
                          "--store", store, "--json"], capture_output=True, text=True, check=True)
    made = json.loads(out.stdout)
    proc, target = start_server(tmp_path / "unused", "--store", store)
    try:
        with Client(target, account=made["account"], passcode=made["passcode"]) as c:
            assert c.list_segments() == []
    finally:
        stop_server(proc)


def test_each_servers_membership_front_answers_from_the_cluster(store, tmp_path):
    """`serve --store URL --membership-listen`: a segment uploaded through one server is answered at
    once by the other server's front, from the cluster, with no call to its server."""
    fronts = [free_port() for _ in range(2)]
    made = [start_server(tmp_path / f"unused{k}", "--store", store, "--membership-listen", f"127.0.0.1:{port}")
            for k, port in enumerate(fronts)]
    try:
        for port in fronts:
            wait_healthy(f"127.0.0.1:{port}")
        with Client(made[0][1]) as a, Client(f"127.0.0.1:{fronts[1]}") as b_front:
            a.import_profiles(profiles_csv(50))
            a.upload(CSV + b"g,g1\ng,g2\n", name="vip")
            assert [b_front.is_member("vip", guid=g) for g in ("g1", "g2", "g3")] == [True, True, False]
            a.upload(CSV + b"g,g3\n", replace="vip")
            assert [b_front.is_member("vip", guid=g) for g in ("g1", "g3")] == [False, True]
            made[1][0].send_signal(signal.SIGSTOP)         # its server frozen: the front answers alone
            try:
                assert b_front.is_member("vip", guid="g3") and not b_front.is_member("vip", guid="g2")
            finally:
                made[1][0].send_signal(signal.SIGCONT)
    finally:
        for proc, _ in made:
            stop_server(proc)


@contextlib.contextmanager
def serve_fronted(store, tmp_path):
    """A server on `store` with its membership front: (server target, front target)."""
    front = f"127.0.0.1:{free_port()}"
    proc, target = start_server(tmp_path / "unused", "--store", store, "--membership-listen", front)
    try:
        wait_healthy(front)
        yield target, front
    finally:
        stop_server(proc)


@pytest.fixture
def fronted(store, tmp_path):
    with serve_fronted(store, tmp_path) as targets:
        yield targets


def locates(cluster_):
    """REDIS_LOCATE scripts run so far, over the cluster's primaries."""
    return cluster_.commands_run(lambda name: name in ("evalsha", "eval"))


def test_a_front_reads_a_head_again_only_when_it_may_have_changed(redis_cluster, fronted):
    """The front keeps what REDIS_LOCATE read while the node's invalidation messages (CLIENT
    TRACKING) say nothing changed: one look-up a call, not two; a replace is still seen at once,
    and so is one made while its watch is cut."""
    target, front = fronted
    with Client(target) as c, Client(front) as f:
        c.import_profiles(profiles_csv(50))
        c.upload(CSV + b"g,g1\n", name="vip")
        assert f.is_member("vip", guid="g1")
        before = locates(redis_cluster)
        assert all(f.is_member("vip", guid="g1") for _ in range(40))
        assert locates(redis_cluster) - before < 5
        c.upload(CSV + b"g,g2\n", replace="vip")
        assert [f.is_member("vip", guid=g) for g in ("g1", "g2")] == [False, True]
        for port in redis_cluster.primaries():          # the watches' connections, gone
            cluster.cli(port, "CLIENT", "KILL", "TYPE", "pubsub")
        c.upload(CSV + b"g,g3\n", replace="vip")       # told to no one
        assert [f.is_member("vip", guid=g) for g in ("g2", "g3")] == [False, True]
        before = locates(redis_cluster)                 # a new watch, kept again
        assert all(f.is_member("vip", guid="g3") for _ in range(40))
        assert locates(redis_cluster) - before < 5


def bucket_reads(cluster_):
    """HGET and HGETALL calls so far over the cluster's primaries (LOCATE's own HGETs among them)."""
    return cluster_.commands_run(lambda name: name in ("hget", "hgetall"))


def test_a_front_answers_from_the_buckets_it_keeps_until_a_profile_write(redis_cluster, store, tmp_path):
    """A bucket asked often is kept whole (server/native/bucket_cache.h): then a check makes no
    Redis call. Any profile write or delete, even one made while the front's watch is cut, is seen
    by the very next check. 8 buckets, so a new profile lands in one the front keeps."""
    guids = [f"g{k}" for k in range(50)]
    with serve_fronted(f"{store}?buckets=8", tmp_path) as (target, front), Client(target) as c, Client(front) as f:
        c.import_profiles(profiles_csv(50))
        c.upload(CSV + "".join(f"g,g{k}\n" for k in range(0, 50, 2)).encode(), name="vip")
        for _ in range(3):                              # each bucket asked again: kept
            assert [f.is_member("vip", guid=g) for g in guids] == [k % 2 == 0 for k in range(50)]
        before = bucket_reads(redis_cluster)
        for _ in range(3):
            assert [f.is_member("vip", guid=g) for g in guids] == [k % 2 == 0 for k in range(50)]
        assert bucket_reads(redis_cluster) - before < 30      # 150 checks; one HGET each without it
        c.delete_profiles(["g0"])
        assert not f.is_member("vip", guid="g0") and f.is_member("vip", guid="g2")
        c.import_profiles(b"g77,id77,email\n")             # a profile that no bucket held
        c.upload(CSV + b"g,g77\n", append="vip")
        assert f.is_member("vip", guid="g77") and not f.is_member("vip", guid="g0")
        for _ in range(3):
            assert [f.is_member("vip", guid=g) for g in guids[1:]] == [k % 2 == 0 for k in range(1, 50)]
        for port in redis_cluster.primaries():          # the watches' connections, gone
            cluster.cli(port, "CLIENT", "KILL", "TYPE", "pubsub")
        c.delete_profiles(["g2"])                       # told to no one
        assert not f.is_member("vip", guid="g2") and f.is_member("vip", guid="g4")


@pytest.fixture
def one_node_with_a_password(tmp_path):
    """A plain redis-server (no cluster) that requires a password: the development store."""
    port = cluster.free_ports(1)[0]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", cluster.LOOPBACK, "--requirepass", "pw",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    cluster.wait_for(lambda: cluster.cli(port, "-a", "pw", "--no-auth-warning", "ping") == "PONG", 30,
                     "redis-server did not start")
    yield f"redis://:pw@127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def test_the_front_signs_in_to_a_single_node_store(one_node_with_a_password, tmp_path):
    port = free_port()
    proc, target = start_server(tmp_path / "unused", "--store", one_node_with_a_password,
                                "--membership-listen", f"127.0.0.1:{port}")
    try:
        wait_healthy(f"127.0.0.1:{port}")
        with Client(target) as c, Client(f"127.0.0.1:{port}") as fronted:
            c.import_profiles(profiles_csv(10))
            c.upload(CSV + b"g,g1\ni,id2\n", name="vip")
            proc.send_signal(signal.SIGSTOP)               # the front alone: it reads the node itself
            try:
                assert [fronted.is_member("vip", guid=g) for g in ("g1", "g2", "g3")] == [True, True, False]
                assert fronted.is_member("vip", identity="id2")
            finally:
                proc.send_signal(signal.SIGCONT)
    finally:
        stop_server(proc)


@pytest.mark.parametrize("url, flags, says", [
    ("redis-cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001?failover_s=5",
     ["--redis-cluster", "127.0.0.1:7000,127.0.0.1:7001", "--redis-auth-stdin"], b"\ns3cret\n"),
    ("redis://user:p%40ss@localhost:6380/0", ["--redis", "localhost:6380", "--redis-auth-stdin"], b"user\np@ss\n"),
    ("redis://localhost:6380", ["--redis", "localhost:6380"], b""),
    ("rediss://127.0.0.1:6380", None, "over TLS"),
    ("redis-clusters://127.0.0.1:7000", None, "over TLS"),
    ("redis://127.0.0.1:6380/3", None, "database 0 only")])
def test_the_front_is_told_the_store_with_its_password_out_of_sight(url, flags, says):
    from listseg.server.front import FrontError, store_arguments
    if isinstance(says, str):
        with pytest.raises(FrontError, match=says):
            store_arguments(url)
        return
    assert store_arguments(url) == (flags, says)          # the password on stdin, never a flag


@pytest.mark.parametrize("url, says", [("mysql://x", "not a store URL"), ("./data", "takes a Redis URL")])
def test_a_store_that_is_no_redis_url_is_a_usage_error(url, says, tmp_path):
    out = subprocess.run([sys.executable, "-m", "listseg.clients.cli", "serve", "--store", url],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []                 # and no directory was made of it


def test_a_version_stays_whole_in_the_cluster_across_many_blocks(store, tmp_path):
    """A version spread over blocks of 2^16 uids (many slots, every primary) reads back whole."""
    with open_engine(tmp_path, backend=store) as engine:
        acct = engine.account()
        n = 200_000                                       # 4 blocks
        acct.profiles.import_csv([profiles_csv(n)])
        body = CSV + b"".join(b"g,g%d\n" % k for k in range(0, n, 7))
        up = acct.upload("create", name="wide")
        up.feed(body)
        assert up.finish()["state"] == "succeeded"
        version, uids, _ = acct.segments.members("wide", count=n)
        assert list(uids) == list(range(0, n, 7))
        with engine.backend.snapshot() as snap:
            manifest = snap._manifest(acct.number, acct.segments.id_of("wide"), version)
        assert manifest["blocks"] == [0, 1, 2, 3]


def test_a_version_number_issued_again_is_not_answered_from_the_cache(store, tmp_path):
    """A commit whose answer was lost can be lost in a failover, and its number issued again with
    other members: a server that cached the lost version must not answer from it."""
    from listseg.core.layout import redis_account_key
    with open_engine(tmp_path, backend=store) as engine:
        acct = engine.account()
        acct.profiles.upsert([(f"g{k}", None, []) for k in range(5)])
        for mode, guid, kw in (("create", b"g1", {"name": "s"}), ("replace", b"g2", {"segment": "s"})):
            up = acct.upload(mode, **kw)
            up.feed(CSV + b"g," + guid + b"\n")
            up.finish()
        assert acct.segments.check_members("s", ["g2"], "g") == (2, [True])      # version 2 cached
        seg, r = acct.segments.id_of("s"), engine.backend.raw
        with engine.backend.snapshot() as snap:
            token1 = snap._manifest(acct.number, seg, 1)["token"]
        # what a failover that lost version 2 leaves: the head back at 1, no manifest or row for 2
        r.hset(redis_account_key(acct.number, b"heads"), str(seg), f"1:{token1}")
        r.hdel(redis_account_key(acct.number, b"m:%d" % seg), "2")
        r.hdel(redis_account_key(acct.number, b"hist:%d" % seg), "2")
        up = acct.upload("replace", segment="s")
        up.feed(CSV + b"g,g3\n")
        assert up.finish()["report"]["version"] == 2                          # the number again
        assert acct.segments.check_members("s", ["g2", "g3"], "g") == (2, [False, True])


def test_an_account_keeps_the_bucket_count_it_was_made_with(store, tmp_path):
    """?buckets=N sizes the identity maps of accounts made from then on; every server reads an
    account's own count, whatever its URL says."""
    from listseg.core.layout import redis_account_key
    with open_engine(tmp_path, backend=f"{store}?buckets=8") as engine:
        acct = engine.account("small")
        acct.profiles.upsert([(f"g{k}", f"id{k}", []) for k in range(100)])
    with open_engine(tmp_path, backend=store) as engine:         # the default count in its URL
        acct = engine.account("small")
        assert int(engine.backend.raw.hget(redis_account_key(acct.number), "buckets")) == 8
        assert acct.profiles.find(identity="id42").guid == "g42"
        up = acct.upload("create", name="s")
        up.feed(CSV + b"".join(b"g,g%d\n" % k for k in range(0, 100, 3)) + b"i,id1\n")
        assert up.finish()["report"]["qualified"] == 35
    with pytest.raises(Exception, match="buckets=0"):
        open_engine(tmp_path, backend=f"{store}?buckets=0")
