"""make bench-changes [SCALE=N]: ListMemberChanges against ListMembers of the whole segment (issue 14).

One `listseg serve` (LMDB in the work folder, no front) and SCALE * 1.05 profiles (guids "%032x" of their
number, imported in that order, so profile k is uid k). A segment of SCALE members, uids [0, SCALE), gets
a version 2 of uids [d, SCALE + d) and a version 3 of uids [11d, SCALE + 11d), d = SCALE / 200: version 2
differs from 1 by 1% of SCALE (d left, d joined), version 3 from 2 by 10% (10d each way).

Through listseg.Client over gRPC, each timed --repeat times, best kept: every page of ListMemberChanges
1 -> 2, every page of ListMembers of version 2 (the whole segment), and every page of ListMemberChanges
2 -> 3. For each: the client's best wall time and the server's CPU seconds a run (user + system of its
process, /proc/PID/stat, read before and after the runs). The bars: changes at 1% come back at least as fast as the whole
listing, and the server's work grows with the difference, not the segment: its CPU for 10x the changes
is at least 5x that for 1x (were it fixed costs, the ratio would be near 1). Writes
benchmarks/results/changes.json and prints a table.
"""
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench_core import cpu_model  # noqa: E402

BARS = {"changes_vs_list": 1.0, "cpu_growth": 5.0}
PAGE = 100_000


def guid(k):
    return "%032x" % k


def write_list(path, lo, hi):
    """A Type,Identity CSV of the g rows of profiles [lo, hi)."""
    with open(path, "w") as f:
        f.write("Type,Identity\n")
        step = 1_000_000
        for start in range(lo, hi, step):
            f.write("".join(f"g,{guid(k)}\n" for k in range(start, min(hi, start + step))))


def server_cpu_s(pid):
    """User + system CPU seconds of process pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(server, repeat, fn):
    """(best wall seconds, the server's CPU seconds a run on average, fn's result) over repeat runs (the
    CPU clock counts in ticks of 10 ms: the average over runs is the finer figure)."""
    walls, cpu = [], server_cpu_s(server.proc.pid)
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t)
    return min(walls), (server_cpu_s(server.proc.pid) - cpu) / repeat, result


def run(args):
    n, workdir = args.scale, os.path.abspath(args.workdir)
    d = max(n // 200, 1)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    profiles = os.path.join(workdir, "profiles.csv")
    with open(profiles, "w") as f:
        f.write("guid,identity,channels\n")
        f.writelines(f"{guid(k)},,email\n" for k in range(n + 11 * d))
    for name, lo in (("v1.csv", 0), ("v2.csv", d), ("v3.csv", 11 * d)):
        write_list(os.path.join(workdir, name), lo, lo + n)
    server = bench.ListsegServer(os.path.join(workdir, "data"), os.path.join(workdir, "listseg.log"), front=False)
    from listseg import Client
    try:
        with Client(server.target, timeout=600) as c:
            c.import_profiles(profiles)
            c.upload(os.path.join(workdir, "v1.csv"), name="s")
            for name in ("v2.csv", "v3.csv"):
                c.upload(os.path.join(workdir, name), replace="s")

            def changes(old, new):
                pages = list(c.member_changes("s", old, new, page_size=PAGE))
                return sum(p.count for p in pages), pages[-1].added_total, pages[-1].removed_total
            small = timed(server, args.repeat, lambda: changes(1, 2))
            whole = timed(server, args.repeat, lambda: sum(p.count for p in c.list_members("s", page_size=PAGE)))
            large = timed(server, args.repeat, lambda: changes(2, 3))
    finally:
        server.stop()
    assert small[2] == (2 * d, d, d) and large[2] == (20 * d, 10 * d, 10 * d), (small[2], large[2])
    assert whole[2] == n, whole[2]
    return {
        "scale": n,
        "changes_1pct": {"members": small[2][0], "seconds": round(small[0], 4), "server_cpu_s": round(small[1], 4)},
        "list_members": {"members": whole[2], "seconds": round(whole[0], 4), "server_cpu_s": round(whole[1], 4)},
        "changes_10pct": {"members": large[2][0], "seconds": round(large[0], 4), "server_cpu_s": round(large[1], 4)},
        "cpu": cpu_model(), "cores": os.cpu_count(),
    }


def table(r):
    small, whole, large = r["changes_1pct"], r["list_members"], r["changes_10pct"]
    speed = whole["seconds"] / max(small["seconds"], 1e-9)
    growth = large["server_cpu_s"] / max(small["server_cpu_s"], 1e-9)
    rows = [
        ("ListMemberChanges 1% vs ListMembers of the whole segment (s)", f"{small['seconds']:.3f}",
         f"{whole['seconds']:.3f}", speed, "≥ 1x", speed >= BARS["changes_vs_list"]),
        ("server CPU: changes at 10% vs at 1% (s)", f"{large['server_cpu_s']:.3f}", f"{small['server_cpu_s']:.3f}",
         growth, "≥ 5x (10x the changes)", growth >= BARS["cpu_growth"]),
        ("server CPU: ListMembers of the whole segment (s)", f"{whole['server_cpu_s']:.3f}", "", None, "", None),
    ]
    head = (f"SCALE={r['scale']:,} members, {small['members']:,} and {large['members']:,} changes, {r['cpu']}, "
            f"{r['cores']} cores")
    return "\n".join([head, ""] + bench.markdown(rows))


def main():
    ap = bench.arguments(__doc__, 10_000_000, "changes", "bench-changes")
    args = ap.parse_args()
    bench.report(run(args), args, table)


if __name__ == "__main__":
    main()
