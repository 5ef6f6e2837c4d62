"""make bench-cluster [SCALE=N]: listseg on a Redis Cluster side by side with plain Redis sets on the
same cluster, in one run (issue 12).

bench.py's data (benchmarks/bench.py make_data: N profiles, an N-row list of g and i rows, 10% unknown,
5% duplicates), its workers and its structure, on a local cluster instead of LMDB and one redis-server:
- tests/cluster.py starts a 3 primaries + 3 replicas cluster in a temp folder (the settings the tests
  use: AOF fsync every second, min-replicas-to-write 1); it is stopped by its pids at the end, on an
  error too, and its folder removed.
- Two `listseg serve --store redis-cluster://... --membership-listen ...` processes share it. Ingest,
  check_batch, export and reach go through the first server; the IsMember case spreads its 16
  concurrent callers over both servers' membership fronts (one connection each, calls taken in turn),
  which answer from the cluster in native code. The same case through the two servers themselves (no
  front) is reported too, as is_member.servers_qps, and so is what the fronts asked of the cluster a
  check (is_member.listseg_redis_commands_per_check: commands the primaries ran, from INFO
  commandstats, over the checks answered).
- The peer, on the same cluster: plain Redis sets through redis-py's RedisCluster with hiredis, and
  bench.py's best settings (variadic SADD of 10,000 members per command through a non-transactional
  pipeline, 10 in flight; SMISMEMBER of 10,000 ids; SSCAN COUNT 10000; SINTERCARD; redis.asyncio's
  RedisCluster for the concurrent SISMEMBER case). Its keys share one hash tag, `{bench}`, as a Redis
  user would tag them so SINTERCARD may take a segment's set and a channel's set together: every peer
  key is in one slot, on one primary. Its writes do not WAIT for a replica; listseg's do.
- Memory is Redis's own accounting: MEMORY USAGE key SAMPLES 0 (every element counted, not sampled)
  of each key, summed. Per member: listseg's version containers (`{a:N:K}:v:TOKEN`, one per uid block)
  and the segment's manifest hash (`{a:N}:m:S`, which then holds the one version), over the segment's
  size; the peer's set of the members' guids over its SCARD (also given, in --raw, as the used_memory
  delta of its primary). Per profile: listseg's identity buckets (`{a:N:g:B}`, `{a:N:i:B}`) and
  profile records (`{a:N:K}:p`) over the N profiles; the peer's profile representation is what it
  stores about profiles here, a set of guids per channel (bench.py's, for reachability: its list
  ingest SADDs identities unresolved, so it keeps no identity map). listseg's channel containers are
  in --raw, not in that figure.
Ingest, check_batch and export run --repeat times, ours and the peer alternating, best kept; IsMember
runs --seconds per side (ours after an untimed run of up to 5 s, in which each server builds its
profile index); reach is the median of 11 calls. Writes benchmarks/results/cluster.json (the
keys of bench.py's latest.json for these cases) and prints a markdown table with the issue's bars.

Figures are rates or times on a shared, noisy 2-core machine that also runs the six nodes: compare
the ratios, not the absolutes.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (puts tests/ on the path too)
from bench import ListsegServer, log, make_data, markdown, run_worker, versions  # noqa: E402
from bench_core import cpu_model  # noqa: E402

import cluster as local_cluster  # noqa: E402  (tests/cluster.py)

SEGMENT = "bench"
# The peer's keys, all with one hash tag (one slot): the list as ingested, the segment's members, and
# the channel sets (a format string: the tag's braces doubled).
PEER_LIST_KEY, PEER_MEMBERS_KEY, PEER_CHANNEL_KEY = "{bench}:list:bench", "{bench}:seg:bench", "{{bench}}:ch:{}"
SERVERS = 2
BARS = {"ingest": 2.0, "check_batch": 1.5, "is_member_qps": 0.5, "memory": 20.0}
MEMORY_ACCOUNTING = "MEMORY USAGE key SAMPLES 0, summed over the keys"


# -- workers: each runs in its own process -------------------------------------------------------------
def memory_usage(r, keys, chunk=1000):
    """MEMORY USAGE key SAMPLES 0 of each key (0 for a key that is not there), pipelined to the primary
    of each key's slot."""
    by_node = {}
    for i, key in enumerate(keys):
        node = r.get_node_from_key(key)
        by_node.setdefault(node.name, (node, []))[1].append(i)
    out = [0] * len(keys)
    for node, idx in by_node.values():
        conn = r.get_redis_connection(node)
        for at in range(0, len(idx), chunk):
            part = idx[at:at + chunk]
            pipe = conn.pipeline(transaction=False)
            for i in part:
                pipe.execute_command("MEMORY", "USAGE", keys[i], "SAMPLES", 0)
            for i, used in zip(part, pipe.execute()):
                out[i] = used or 0
    return out


def used_memory(r, key):
    """used_memory of the primary of key's slot."""
    return r.get_redis_connection(r.get_node_from_key(key)).info("memory")["used_memory"]


def work_cluster_members(url, workdir, key):
    """The segment's member guids as a set on the cluster (bench.work_redis_members, there): its
    MEMORY USAGE, and the used_memory delta of its primary for comparison."""
    r = bench.redis_client(url)
    r.delete(key)
    before = used_memory(r, key)
    with open(os.path.join(workdir, "members.txt"), "rb") as f:
        members = f.read().split()
    pipe = r.pipeline(transaction=False)
    bench.sadd_batches(pipe, key, members)
    pipe.execute()
    time.sleep(1.0)                      # let an incremental rehash finish: its spare table is not the set's cost
    return {"bytes": memory_usage(r, [key])[0], "used_memory_delta": used_memory(r, key) - before,
            "size": r.scard(key)}


def work_cluster_memory(url, segment, members_key, channel_key, profiles):
    """Both sides' memory by MEMORY USAGE (see the module docstring): listseg's current version of
    `segment` and its profile data, the peer's members set and channel sets."""
    from listseg.core.layout import (CHANNELS, DEFAULT_ACCOUNT, DELETED, redis_account_key, redis_block_key,
                                     redis_bucket_keys)
    from listseg.core.redis_backend import RedisBackend, _containers
    profiles = int(profiles)
    backend = RedisBackend(url)
    try:
        with backend.snapshot() as snap:
            acct = snap.account_number(DEFAULT_ACCOUNT)
            seg = snap.segment_id(acct, segment)
            head = snap.head(acct, seg)
            manifest = snap._manifest(acct, seg, head)
            manifest_key = redis_account_key(acct, b"m:%d" % seg)
            versions_kept = len(backend.r.hkeys(manifest_key))
            blocks = list(snap._blocks(acct))
        r = backend.raw
        containers = _containers(acct, manifest)
        buckets = backend.buckets(acct)
        bucket_keys = redis_bucket_keys(acct, b"g", buckets) + redis_bucket_keys(acct, b"i", buckets)
        record_keys = [redis_block_key(acct, k, b"p") for k in blocks]
        channel_keys = [redis_block_key(acct, k, b"c:" + name.encode())
                        for k in blocks for name in (*CHANNELS, DELETED)]
        groups = {"containers": containers, "manifest": [manifest_key], "buckets": bucket_keys,
                  "records": record_keys, "channels": channel_keys}
        sizes, at = {}, iter(memory_usage(r, [key for keys in groups.values() for key in keys]))
        for name, keys in groups.items():
            sizes[name] = [next(at) for _ in keys]
        peer_channels = [channel_key.format(name) for name in CHANNELS]
        peer_set, *peer_channel_bytes = memory_usage(r, [members_key, *peer_channels])
        return {
            "listseg": {"size": manifest["size"], "containers": len(containers),
                        "container_bytes": sum(sizes["containers"]), "manifest_bytes": sum(sizes["manifest"]),
                        "versions_in_manifest": versions_kept, "bucket_bytes": sum(sizes["buckets"]),
                        "record_bytes": sum(sizes["records"]), "channel_container_bytes": sum(sizes["channels"]),
                        "blocks": len(blocks), "bucket_encoding": _encoding(r, bucket_keys, sizes["buckets"]),
                        "records_encoding": _encoding(r, record_keys, sizes["records"])},
            "redis": {"size": r.scard(members_key), "set_bytes": peer_set, "channel_set_bytes": sum(peer_channel_bytes),
                      "set_encoding": r.object("encoding", members_key).decode()},
            "profiles": profiles,
        }
    finally:
        backend.close()


def _encoding(r, keys, sizes):
    """OBJECT ENCODING of the biggest of keys (sizes: their MEMORY USAGE), or None if none is there."""
    if not keys or not max(sizes):
        return None
    return r.object("encoding", keys[sizes.index(max(sizes))]).decode()


WORKERS = {**bench.WORKERS, "cluster_members": work_cluster_members, "cluster_memory": work_cluster_memory}


def worker_main(argv):
    kind, *rest = argv
    print(json.dumps(WORKERS[kind](*rest)), flush=True)


def work(kind, *args):
    return run_worker(kind, *args, script=__file__)


# -- the run -------------------------------------------------------------------------------------------
def run(args):
    n = args.scale
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    t = time.perf_counter()
    qualified = make_data(workdir, n)
    log(f"generated {n:,} profiles and a {n:,}-row list ({qualified:,} members) in {time.perf_counter() - t:.1f} s")

    raw = {k: [] for k in ("ingest_listseg", "ingest_redis", "check_listseg", "check_redis", "export_listseg",
                           "export_redis")}
    folder = tempfile.mkdtemp(prefix="listseg-bench-cluster-")
    nodes, servers = None, []
    try:
        nodes = local_cluster.start(folder)
        url = nodes.url
        redis_version = local_cluster.cli(nodes.ports[0], "INFO", "server").split("redis_version:", 1)[1].split()[0]
        log(f"cluster up in {folder}: ports {nodes.ports} (pids {sorted(nodes.pids.values())}), "
            f"redis-server {redis_version}")
        for k in range(SERVERS):
            servers.append(ListsegServer(None, os.path.join(workdir, f"listseg-{k}.log"), store=url))
        ours = servers[0]
        log(f"listseg serve --store on {[s.target for s in servers]} (pids {[s.pids for s in servers]})")

        imp = work("ours_import", ours.target, workdir)
        rp = work("redis_profiles", url, workdir, PEER_CHANNEL_KEY)
        log(f"profiles loaded: listseg {imp['seconds']:.1f} s, redis {rp['seconds']:.1f} s")

        # Repeats alternate ours and the peer; the first upload makes the segment the later cases read,
        # the others are deleted once timed.
        for k in range(args.repeat):
            suffix = f"-{k + 1}" if k else ""
            raw["ingest_listseg"].append(work("ours_ingest", ours.target, workdir, SEGMENT + suffix, int(k > 0)))
            raw["ingest_redis"].append(work("redis_ingest", url, workdir, PEER_LIST_KEY + suffix, int(k > 0)))
        log(f"ingest: {raw['ingest_listseg']}, {raw['ingest_redis']}")
        raw["redis_members"] = work("cluster_members", url, workdir, PEER_MEMBERS_KEY)
        log(f"the peer's members set: {raw['redis_members']}")
        assert raw["ingest_listseg"][0]["size"] == raw["redis_members"]["size"] == qualified, raw
        from listseg import Client
        for server in servers[1:]:           # the other server answers for the same segment at once
            with Client(server.target) as c:
                assert c.get_segment(SEGMENT).size == qualified

        for _ in range(args.repeat):
            raw["check_listseg"].append(work("check_batch", "listseg", ours.target, workdir, SEGMENT))
            raw["check_redis"].append(work("check_batch", "redis", url, workdir, PEER_MEMBERS_KEY))
        assert len({r["hits"] for r in raw["check_listseg"] + raw["check_redis"]}) == 1, raw
        log(f"check_batch: {raw['check_listseg']}, {raw['check_redis']}")

        # an untimed run first: a server builds its profile index at its first look-up (the second
        # server has had none yet), and answers through Redis until it is built; a front loads the
        # version at its first
        targets = ",".join(s.target for s in servers)
        fronts = ",".join(s.membership for s in servers)
        work("is_member", "listseg", targets, workdir, SEGMENT, min(args.seconds, 5), 1)
        work("is_member", "listseg", fronts, workdir, SEGMENT, min(args.seconds, 2), 1)
        before = data_commands(nodes)
        raw["is_member_listseg"] = work("is_member", "listseg", fronts, workdir, SEGMENT, args.seconds, 1)
        raw["is_member_listseg"]["redis_commands"] = data_commands(nodes) - before
        raw["is_member_redis"] = work("is_member", "redis", url, workdir, PEER_MEMBERS_KEY, args.seconds)
        raw["is_member_servers"] = work("is_member", "listseg", targets, workdir, SEGMENT, args.seconds, 1)
        log(f"is_member: {raw['is_member_listseg']}, {raw['is_member_redis']}")

        for _ in range(args.repeat):
            raw["export_listseg"].append(work("export", "listseg", ours.target, SEGMENT))
            raw["export_redis"].append(work("export", "redis", url, PEER_MEMBERS_KEY))
        assert {r["members"] for r in raw["export_listseg"] + raw["export_redis"]} == {qualified}, raw
        log(f"export: {raw['export_listseg']}, {raw['export_redis']}")

        raw["reach_listseg"] = work("reach", "listseg", ours.target, SEGMENT)
        raw["reach_redis"] = work("reach", "redis", url, PEER_MEMBERS_KEY, 11, PEER_CHANNEL_KEY)
        assert raw["reach_listseg"]["count"] == raw["reach_redis"]["count"], raw
        log(f"reach: {raw['reach_listseg']}, {raw['reach_redis']}")

        raw["memory"] = work("cluster_memory", url, SEGMENT, PEER_MEMBERS_KEY, PEER_CHANNEL_KEY, n)
        mem = raw["memory"]
        assert mem["listseg"]["size"] == mem["redis"]["size"] == qualified, mem
        log(f"memory: {mem}")
    finally:
        for server in servers:
            server.stop()
        if nodes is not None:
            nodes.stop()
            log(f"cluster stopped (pids {sorted(nodes.pids.values())})")
        shutil.rmtree(folder, ignore_errors=True)

    ml, mr = mem["listseg"], mem["redis"]
    primaries = local_cluster.PRIMARIES
    result = {
        **bench.side_by_side(raw, n),
        "memory": {
            "listseg_bytes_per_member": round((ml["container_bytes"] + ml["manifest_bytes"]) / ml["size"], 4),
            "redis_bytes_per_member": round(mr["set_bytes"] / mr["size"], 2),
            "listseg_bytes_per_profile": round((ml["bucket_bytes"] + ml["record_bytes"]) / mem["profiles"], 2),
            "redis_bytes_per_profile": round(mr["channel_set_bytes"] / mem["profiles"], 2),
        },
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": dict(versions(redis_version), listseg_servers=SERVERS, listseg_membership="front",
                         cluster=f"{primaries} primaries + {primaries * local_cluster.REPLICAS} replicas "
                                 "(tests/cluster.py: appendfsync everysec, min-replicas-to-write 1)",
                         hiredis_in_use=_hiredis_in_use(), memory=MEMORY_ACCOUNTING,
                         listseg_worktree=worktree_digest()),
    }
    # what the fronts asked of the cluster a check (their kept heads and buckets: server/native/bucket_cache.h)
    fronted = raw["is_member_listseg"]
    result["is_member"]["listseg_redis_commands_per_check"] = round(fronted["redis_commands"] / fronted["calls"], 4)
    result["is_member"]["servers_qps"] = round(raw["is_member_servers"]["qps"])
    result["is_member"]["servers_p99_ms"] = round(raw["is_member_servers"]["p99_ms"], 3)
    for side in ("is_member_listseg", "is_member_redis", "is_member_servers"):
        if raw[side]["errors"]:
            log(f"warning: {raw[side]['errors']} failed calls in {side}; its qps counts only the answered ones")
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump(raw, f, indent=2)
    return result


# What the nodes run for themselves or for this script, not for a client's data.
NOT_DATA_COMMANDS = ("info", "replconf", "role", "ping", "hello", "cluster|")


def data_commands(nodes):
    """Commands the cluster's primaries have run so far, but NOT_DATA_COMMANDS."""
    return nodes.commands_run(lambda name: not name.startswith(NOT_DATA_COMMANDS))


def worktree_digest():
    """A short digest of the checkout's uncommitted state (git diff HEAD and untracked files), so a run on a
    dirty tree (versions' listseg_commit ends in -dirty) names which one."""
    import hashlib
    root = os.path.dirname(HERE)
    git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True).stdout  # noqa: E731
    h = hashlib.sha256(git("diff", "HEAD"))
    for path in sorted(git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
        if path:
            h.update(path)
            with contextlib.suppress(OSError), open(os.path.join(root, path.decode()), "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def _hiredis_in_use():
    from redis.utils import HIREDIS_AVAILABLE
    return bool(HIREDIS_AVAILABLE)


def rows_of(result):
    """(case, ours, peer, advantage, bar, holds) with advantage = how many times better ours is."""
    r = result
    ing, chk, ism, exp, rch, mem = (r[k] for k in ("ingest", "check_batch", "is_member", "export", "reach", "memory"))
    adv = {
        "ingest": ing["listseg"] / ing["redis"], "check_batch": chk["listseg"] / chk["redis"],
        "is_member_qps": ism["listseg_qps"] / max(ism["redis_qps"], 1e-9), "export": exp["listseg"] / exp["redis"],
        "reach": rch["redis_ms"] / max(rch["listseg_ms"], 1e-9),
        "memory": mem["redis_bytes_per_member"] / max(mem["listseg_bytes_per_member"], 1e-9),
        "memory_profile": mem["redis_bytes_per_profile"] / max(mem["listseg_bytes_per_profile"], 1e-9),
    }
    return [
        ("ingest, upload to ready (rows/s)", f"{ing['listseg']:,}", f"{ing['redis']:,}", adv["ingest"],
         "≥ 2x", adv["ingest"] >= BARS["ingest"]),
        ("check_batch (ids/s)", f"{chk['listseg']:,}", f"{chk['redis']:,}", adv["check_batch"],
         "≥ 1.5x", adv["check_batch"] >= BARS["check_batch"]),
        (f"is_member (qps, c=16, {SERVERS} servers' fronts)", f"{ism['listseg_qps']:,}", f"{ism['redis_qps']:,}",
         adv["is_member_qps"], "≥ 0.5x", adv["is_member_qps"] >= BARS["is_member_qps"]),
        ("is_member p99 (ms)", f"{ism['listseg_p99_ms']:.2f}", f"{ism['redis_p99_ms']:.2f}", None, "", None),
        ("is_member: Redis commands a check through the fronts", f"{ism['listseg_redis_commands_per_check']:.4f}",
         "1", None, "", None),
        (f"is_member through the {SERVERS} servers, no front (qps)", f"{ism['servers_qps']:,}", f"{ism['redis_qps']:,}",
         ism["servers_qps"] / max(ism["redis_qps"], 1e-9), "", None),
        ("export (members/s)", f"{exp['listseg']:,}", f"{exp['redis']:,}", adv["export"], "", None),
        ("reach (ms)", f"{rch['listseg_ms']:.2f}", f"{rch['redis_ms']:.2f}", adv["reach"], "", None),
        ("memory (bytes/member)", f"{mem['listseg_bytes_per_member']:.3f}", f"{mem['redis_bytes_per_member']:.1f}",
         adv["memory"], "≤ 1/20", adv["memory"] >= BARS["memory"]),
        ("memory (bytes/profile)", f"{mem['listseg_bytes_per_profile']:.1f}", f"{mem['redis_bytes_per_profile']:.1f}",
         adv["memory_profile"], "", None),
    ]


def table(result):
    v = result["versions"]
    out = [f"SCALE={result['scale']:,}, {result['cpu']}, {result['cores']} cores, Redis Cluster of {v['cluster']}, "
           f"redis-server {v['redis-server']}; listseg: {v['listseg_servers']} `listseg serve --store --membership-listen` processes; "
           f"peer: plain Redis sets through RedisCluster (hiredis {'on' if v['hiredis_in_use'] else 'off'}), "
           "keys under one hash tag",
           f"memory: {v['memory']}; per member: listseg version containers + manifest vs the members' set; "
           "per profile: listseg identity buckets + profile records vs the peer's channel sets (guids per channel)",
           ""] + markdown(rows_of(result))
    return "\n".join(out)


def main():
    args = bench.arguments(__doc__, 1_000_000, "cluster", "bench-cluster").parse_args()
    if args.worker:
        return worker_main(args.worker)
    # a SIGTERM unwinds like an error: the finally of run() stops the servers and the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    bench.report(run(args), args, table)


if __name__ == "__main__":
    main()
