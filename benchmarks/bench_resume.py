"""make bench-resume [BYTES=N]: a resumed upload against an unbroken one of the same file (issue 14).

One `listseg serve` (LMDB in the work folder, no front), SCALE profiles (guids "%032x" of their number)
and a CSV of --bytes (1 GB by default) of g rows: blocks of SCALE rows, each block the profiles in a
shuffled order, so every profile qualifies and the rest are duplicates. Both uploads go through the
suite's TCP proxy (tests/proxy.py), so they pay the same extra hop: the unbroken one, then the same
file as a new segment with the proxy resetting the connection when the client has read 1/3 and 2/3 of
it; `listseg.Client.upload` resumes by itself each time. Reported: each upload's wall time (first
byte to report), the bytes the client read from the file and the bytes that crossed the proxy to the
server, each against the file's size (what was sent twice), and that both reports and segments are
the same. --repeat runs of the pair, alternating; the best of each kept. Writes
benchmarks/results/resume.json and prints a table.
"""
import hashlib
import os
import random
import shutil
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (puts tests/ on the path too)
from bench_core import cpu_model  # noqa: E402
from proxy import Proxy  # noqa: E402

CUTS = (1 / 3, 2 / 3)


def guid(k):
    return "%032x" % k


def write_file(path, profiles, size, seed=14):
    """Blocks of every profile's g row, each block shuffled, to at least `size` bytes."""
    rng = random.Random(seed)
    order = list(range(profiles))
    written = 0
    with open(path, "w") as f:
        written += f.write("Type,Identity\n")
        while written < size:
            rng.shuffle(order)
            written += f.write("".join(f"g,{guid(k)}\n" for k in order))
    return written


class Counted:
    """The file, counting the bytes read (a resumed stream reads again from the offset), and resetting
    the proxy's connections once reads pass each cut (by the thread of the stream being read)."""

    def __init__(self, path, proxy, cuts):
        self.f, self.proxy = open(path, "rb"), proxy
        self.cuts = sorted(cuts)
        self.read_bytes = 0
        self.streaming = threading.Event()      # the client has the upload's id: a cut can be resumed
        self.cut_off = set()                    # threads (one a call) that read for a stream now cut

    def on_stream(self, upload_id, offset):
        self.streaming.set()

    def seekable(self):
        return True

    def tell(self):
        return self.f.tell()

    def seek(self, pos):
        return self.f.seek(pos)

    def read(self, n):
        out = self.f.read(n)
        self.read_bytes += len(out)
        # gRPC may ask a cut stream's reader for more once: that read must not cut the next stream
        if self.cuts and self.f.tell() >= self.cuts[0] and threading.current_thread() not in self.cut_off:
            self.cuts.pop(0)
            self.streaming.wait(60)
            self.proxy.cut()
            self.cut_off.add(threading.current_thread())
        return out

    def close(self):
        self.f.close()


def upload(client, path, proxy, name, cuts=()):
    """(seconds, file bytes read, bytes through the proxy, the Upload) of one upload of path."""
    f = Counted(path, proxy, cuts)
    up_before, started = proxy.sent_up, time.perf_counter()
    try:
        up = client.upload(f, name=name, on_stream=f.on_stream)
    finally:
        f.close()
    return time.perf_counter() - started, f.read_bytes, proxy.sent_up - up_before, up


def report_of(up):
    r = up.report
    return (up.state, r.rows, r.qualified, r.unknown, r.invalid, r.duplicates, r.size, r.bytes)


def run(args):
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    profiles = os.path.join(workdir, "profiles.csv")
    with open(profiles, "w") as f:
        f.write("guid,identity,channels\n")
        f.writelines(f"{guid(k)},,email\n" for k in range(args.scale))
    path = os.path.join(workdir, "list.csv")
    size = write_file(path, args.scale, args.bytes)
    server = bench.ListsegServer(os.path.join(workdir, "data"), os.path.join(workdir, "listseg.log"), front=False)
    proxy = Proxy(server.target)
    from listseg import Client
    runs = {"unbroken": [], "resumed": []}
    try:
        with Client(server.target, timeout=600) as direct, Client(proxy.target, timeout=600) as c:
            direct.import_profiles(profiles)
            for k in range(args.repeat):
                for kind, cuts in (("unbroken", ()), ("resumed", [int(size * x) for x in CUTS])):
                    cuts_before = proxy.cuts
                    seconds, read, wire, up = upload(c, path, proxy, f"{kind}{k}", cuts)
                    members = hashlib.sha256(direct.export(f"{kind}{k}")).hexdigest()
                    runs[kind].append({"seconds": round(seconds, 3), "file_bytes_read": read, "proxy_bytes": wire,
                                       "cuts": proxy.cuts - cuts_before, "report": report_of(up),
                                       "members_sha256": members})
                    direct.delete_segment(f"{kind}{k}")
    finally:
        proxy.close()
        server.stop()
    same = {(tuple(r["report"]), r["members_sha256"]) for rs in runs.values() for r in rs}
    assert len(same) == 1, same
    assert all(r["cuts"] == len(CUTS) for r in runs["resumed"]), runs["resumed"]
    best = {kind: min(rs, key=lambda r: r["seconds"]) for kind, rs in runs.items()}
    return {"scale": args.scale, "file_bytes": size, "report": runs["unbroken"][0]["report"], "best": best,
            "runs": runs, "cpu": cpu_model(), "cores": os.cpu_count()}


def table(r):
    size, u, b = r["file_bytes"], r["best"]["unbroken"], r["best"]["resumed"]
    mb = lambda n: f"{n / 1e6:,.1f}"  # noqa: E731
    rows = [("wall time, first byte to report (s)", f"{b['seconds']:.2f}", f"{u['seconds']:.2f}"),
            ("bytes read from the file (MB)", mb(b["file_bytes_read"]), mb(u["file_bytes_read"])),
            ("bytes sent twice: read beyond the file's size (MB)", mb(b["file_bytes_read"] - size),
             mb(u["file_bytes_read"] - size)),
            ("bytes through the proxy to the server (MB)", mb(b["proxy_bytes"]), mb(u["proxy_bytes"]))]
    head = (f"{size / 1e9:.2f} GB, {r['report'][1]:,} rows, {r['scale']:,} profiles; resumed after {len(CUTS)} "
            f"connection resets vs unbroken, best of {len(r['runs']['unbroken'])} each; resumed/unbroken time "
            f"{b['seconds'] / u['seconds']:.2f}x; reports and segments identical; {r['cpu']}, {r['cores']} cores")
    return "\n".join([head, "", "| case | resumed | unbroken |", "|---|---|---|"] +
                     [f"| {case} | {ours} | {peer} |" for case, ours, peer in rows])


def main():
    ap = bench.arguments(__doc__, 1_000_000, "resume", "bench-resume")
    ap.add_argument("--bytes", type=int, default=1_000_000_000, help="the file's size (at least)")
    args = ap.parse_args()
    bench.report(run(args), args, table)


if __name__ == "__main__":
    main()
