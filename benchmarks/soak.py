"""make bench-soak: mixed load on one `listseg serve` from several processes, bounded in time and count.

Setup: bench.py's data at --scale (profiles, and a list of g and i rows) imported through the client;
two lists A and B of --list-rows rows each; segment "soak" made from A. Then, for --seconds:
- process 0, the writer, every --write-interval seconds, in turn: replace "soak" with B (then A),
  and create "soak-tmp" from A then delete it;
- the other processes, readers, one call at a time in rotation: IsMember, CheckMembers (1,000 ids),
  ListMembers (a whole pass over "soak", 100,000 a page), these three through the membership front as
  a campaign engine would call them, and GetSegment.
Each process stops at the deadline or after --max-calls calls. Reports per RPC the calls, errors (the
run fails unless there are none), p50/p99/max latency, and the server's RSS at the start of the load,
at its end and its peak, in all (with the LMDB file pages it has mapped, which grow with the data) and
anonymous (its own heap: a leak would show there); the front's process counts in both. Writes benchmarks/results/soak.json.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench_core import chunks  # noqa: E402

SEGMENT, TEMP = "soak", "soak-tmp"
CHECK_BATCH = 1_000
PAGE = 100_000


# -- load processes --------------------------------------------------------------------------------
def run_load(role, target, membership, workdir, seconds, max_calls, write_interval, out_path):
    from listseg import Client
    ids = bench.read_ids(workdir)
    stats = {}                          # rpc -> {"latencies": [...], "errors": n, "messages": [...]}
    deadline = time.monotonic() + float(seconds)
    rng = random.Random(role)
    calls = 0

    def timed(rpc, fn, *args, **kwargs):
        nonlocal calls
        calls += 1
        entry = stats.setdefault(rpc, {"latencies": [], "errors": 0, "messages": []})
        t = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:           # noqa: BLE001 - every failure is counted and reported
            entry["errors"] += 1
            if len(entry["messages"]) < 5:
                entry["messages"].append(f"{type(e).__name__}: {e}")
            return None
        entry["latencies"].append(time.perf_counter() - t)
        return result

    def list_all(c):
        return sum(page.count for page in c.list_members(SEGMENT, page_size=PAGE))

    with Client(target, timeout=60) as c, Client(membership, timeout=60) as m:
        if int(role) == 0:
            lists = {}
            for name in "AB":
                with open(os.path.join(workdir, f"list-{name}.csv"), "rb") as f:
                    lists[name] = f.read()
            turn = 0
            while time.monotonic() < deadline and calls < int(max_calls):
                started = time.monotonic()
                if turn % 2 == 0:
                    timed("UploadList (replace)", c.upload, lists["B" if turn % 4 == 0 else "A"], replace=SEGMENT)
                else:
                    timed("UploadList (create)", c.upload, lists["A"], name=TEMP)
                    timed("DeleteSegment", c.delete_segment, TEMP)
                turn += 1
                time.sleep(max(0.0, min(float(write_interval) - (time.monotonic() - started),
                                        deadline - time.monotonic())))
        else:
            reads = [
                ("IsMember", lambda: m.is_member(SEGMENT, guid=ids[rng.randrange(len(ids))])),
                ("CheckMembers", lambda: m.check_members(SEGMENT, rng.sample(ids, min(CHECK_BATCH, len(ids))))),
                ("ListMembers (whole segment)", lambda: list_all(m)),
                ("GetSegment", lambda: c.get_segment(SEGMENT)),
            ]
            k = 0
            while time.monotonic() < deadline and calls < int(max_calls):
                rpc, fn = reads[k % len(reads)]
                timed(rpc, fn)
                k += 1
    with open(out_path, "w") as f:
        json.dump(stats, f)


def merge(paths):
    merged = {}
    for path in paths:
        with open(path) as f:
            for rpc, entry in json.load(f).items():
                m = merged.setdefault(rpc, {"latencies": [], "errors": 0, "messages": []})
                m["latencies"] += entry["latencies"]
                m["errors"] += entry["errors"]
                m["messages"] += entry["messages"]
    out = {}
    for rpc, m in sorted(merged.items()):
        lat = m["latencies"]
        out[rpc] = {"calls": len(lat) + m["errors"], "errors": m["errors"], "p50_ms": round(bench.pct(lat, 50), 3),
                    "p99_ms": round(bench.pct(lat, 99), 3), "max_ms": round(max(lat, default=0) * 1000, 3),
                    "messages": m["messages"][:5]}
    return out


# -- the run ---------------------------------------------------------------------------------------
def setup(workdir, scale, list_rows):
    bench.make_data(workdir, scale)
    path = os.path.join(workdir, "list.csv")
    with open(os.path.join(workdir, "list-A.csv"), "wb") as f:
        for chunk in chunks(path, min(list_rows, scale)):
            f.write(chunk)
    with open(path, "rb") as src, open(os.path.join(workdir, "list-B.csv"), "wb") as f:
        lines = src.readlines()
        f.write(lines[0])
        f.writelines(lines[1 + list_rows:1 + 2 * list_rows] or lines[1:1 + list_rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1_000_000, help="profiles")
    ap.add_argument("--list-rows", type=int, default=100_000, help="rows in each uploaded list")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--procs", type=int, default=4, help="load processes: one writer, the rest readers")
    ap.add_argument("--max-calls", type=int, default=1_000_000, help="calls per process at most")
    ap.add_argument("--write-interval", type=float, default=1.0, help="seconds between the writer's uploads")
    ap.add_argument("--workers", type=int, default=1, help="listseg serve --workers")
    ap.add_argument("--workdir", default=os.path.join(HERE, "data", "soak"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "soak.json"))
    ap.add_argument("--load", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        return run_load(*args.load)

    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    setup(workdir, args.scale, args.list_rows)
    server = bench.ListsegServer(os.path.join(workdir, "lmdb"), os.path.join(workdir, "listseg.log"),
                                 workers=args.workers)
    procs, rss = [], []
    try:
        bench.run_worker("ours_import", server.target, workdir, script=bench.__file__)
        from listseg import Client
        with Client(server.target) as c:
            c.upload(os.path.join(workdir, "list-A.csv"), name=SEGMENT)
        bench.log(f"soak: {args.procs} processes for {args.seconds:.0f} s against {server.target}")
        outs = [os.path.join(workdir, f"load-{k}.json") for k in range(args.procs)]
        t0 = time.monotonic()
        rss.append((0.0, server.rss(), server.rss("RssAnon")))
        procs = [subprocess.Popen([sys.executable, __file__, "--load", str(k), server.target, server.membership,
                                   workdir, str(args.seconds), str(args.max_calls), str(args.write_interval), outs[k]])
                 for k in range(args.procs)]
        while any(p.poll() is None for p in procs):
            time.sleep(min(1.0, max(0.1, args.seconds / 20)))
            rss.append((time.monotonic() - t0, server.rss(), server.rss("RssAnon")))
        failed = [p.returncode for p in procs if p.returncode]
        if failed:
            raise RuntimeError(f"load processes failed: {failed}")
        rss.append((time.monotonic() - t0, server.rss(), server.rss("RssAnon")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop()

    rpcs = merge(outs)
    errors = sum(r["errors"] for r in rpcs.values())
    result = {"seconds": args.seconds, "procs": args.procs, "scale": args.scale, "list_rows": args.list_rows,
              "errors": errors, "rpcs": rpcs,
              "rss_bytes": {"start": rss[0][1], "end": rss[-1][1], "max": max(v for _, v, _ in rss)},
              "anon_bytes": {"start": rss[0][2], "end": rss[-1][2], "max": max(a for _, _, a in rss)},
              "rss_samples": [(round(t, 1), v, a) for t, v, a in rss]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    mb = lambda b: b / (1 << 20)  # noqa: E731
    print(f"soak: {args.seconds:.0f} s, {args.procs} processes, {args.scale:,} profiles, lists of "
          f"{args.list_rows:,} rows; errors {errors}\n")
    print("| rpc | calls | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    for rpc, r in rpcs.items():
        print(f"| {rpc} | {r['calls']:,} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |")
    for what, key in (("RSS", "rss_bytes"), ("anonymous RSS (its heap)", "anon_bytes")):
        s = result[key]
        print(f"server {what}: start {mb(s['start']):.0f} MiB, end {mb(s['end']):.0f} MiB, peak {mb(s['max']):.0f} MiB")
    for rpc, r in rpcs.items():
        for message in r["messages"]:
            print(f"error in {rpc}: {message}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
