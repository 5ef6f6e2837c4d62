"""make bench-scale [PROFILES=N] [ROWS=M] [MIXED=1] [PROBE_RATE=N]: the seed's headline at full size
(issue 16).

Generates the data with a C helper (benchmarks/gen/gen_scale.c, built here with gcc): N profiles
(random-order 32-hex guids, identities "c<k>", five channel mixes) and an M-row Type,Identity list,
90% known distinct profiles, 5% unknown, 5% duplicates (with MIXED=1 half the known rows by
identity). Starts `listseg serve` with the membership front (LMDB in the work folder), imports the
profiles through the server (`Client.import_profiles`), then runs `listseg upload FILE --name big
--json` as a process, timed from its start to its report, while this process asks IsMember of a small
segment through the front (PROBE_RATE calls a second; --probe-rate) and samples the server's
anonymous RSS. Reports each phase (the server logs the upload's parse, resolve, wait, fold and commit
seconds), rows/s and MB/s, the peak anonymous RSS, the data directory's size after the import and
after the upload, IsMember's p50/p99 during the upload, and checks the counts are exact. Writes
benchmarks/results/scale.json and prints a table. The defaults fit in a few minutes; the issue's size
is PROFILES=150000000 ROWS=150000000.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench_core import cpu_model  # noqa: E402

GENERATOR = os.path.join(HERE, "gen", "gen_scale.c")
# IsMember calls a second while the upload runs: ~15,000 latencies for the p99 of a 75 s upload, at
# ~0.06 of a core (a call costs the Python client ~180 us and the front ~100 us of CPU here).
PROBE_RATE = 200


def expected_counts(rows):
    """The report gen_scale's upload of `rows` rows must get (its comment has the rules)."""
    unknown, duplicates = (rows + 19) // 20, (rows + 18) // 20
    known = rows - unknown - duplicates
    return {"rows": rows, "qualified": known, "unknown": unknown, "invalid": 0, "duplicates": duplicates,
            "size": known}


def build_generator(workdir):
    exe = os.path.join(workdir, "gen_scale")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, GENERATOR], check=True)
    return exe


def timed_run(*cmd):
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, out.stdout


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def anon_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """The server's anonymous RSS every 0.2 s until finish(), which returns its peak."""

    def __init__(self, server_pid):
        self.pid, self.peak = server_pid, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, anon_rss(self.pid))
            time.sleep(0.2)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self.peak


class DuringUpload:
    """While the upload runs: IsMember of the probe segment through the front, and the server's peak
    anonymous RSS (PeakAnon). At `rate` calls a second (open loop: a slow answer does not delay the
    next call, so a stall of the front shows in every call sent during it), or with rate 0 one call
    after another (closed loop: the prober then takes a core's share of this machine away from the
    upload). A call's latency runs from its send; how late the prober sent it (this process wakes on
    the same two cores as the upload) is kept apart, as `late`."""

    def __init__(self, membership, server_pid, probe_guids, rate):
        self.membership, self.guids, self.rate = membership, probe_guids, rate
        self.latencies, self.late, self.errors = [], [], 0
        self.stop = threading.Event()
        self.anon = PeakAnon(server_pid)
        self.thread = threading.Thread(target=self._ask, daemon=True)
        self.thread.start()

    def _ask(self):
        from listseg import CallError, Client
        period = 1 / self.rate if self.rate else 0.0
        with Client(self.membership, timeout=10) as c:
            k, due = 0, time.perf_counter()
            while not self.stop.is_set():
                if period and self.stop.wait(max(0.0, due - time.perf_counter())):
                    break
                started = time.perf_counter()
                try:
                    c.is_member("probe", guid=self.guids[k % len(self.guids)])
                    self.latencies.append(time.perf_counter() - started)
                    self.late.append(max(0.0, started - due) if period else 0.0)
                except CallError:
                    self.errors += 1
                k, due = k + 1, due + period

    def finish(self):
        self.stop.set()
        self.thread.join()
        peak_anon = self.anon.finish()
        lat, late = sorted(self.latencies), sorted(self.late)
        ms = lambda xs, p: round(bench.pct(xs, p), 3) if xs else None  # noqa: E731
        return {"is_member_rate": self.rate, "is_member_calls": len(lat), "is_member_errors": self.errors,
                "is_member_p50_ms": ms(lat, 50), "is_member_p99_ms": ms(lat, 99),
                "is_member_late_p99_ms": ms(late, 99), "server_peak_anon_bytes": peak_anon}


def logged(logpath, msg, **match):
    """The server's first log line `msg` whose fields include `match`."""
    with open(logpath, "rb") as f:
        for line in f:
            rec = json.loads(line) if line.startswith(b"{") else {}
            if rec.get("msg") == msg and all(rec.get(k) == v for k, v in match.items()):
                return rec
    return {}


def run(args):
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    gen = build_generator(workdir)
    profiles, listing = os.path.join(workdir, "profiles.csv"), os.path.join(workdir, "list.csv")
    assert expected_counts(args.rows)["qualified"] <= args.profiles, "ROWS is at most ~1.1 x PROFILES"
    gen_profiles_s, _ = timed_run(gen, "profiles", str(args.profiles), profiles)
    gen_list_s, _ = timed_run(gen, "upload", str(args.profiles), str(args.rows), str(int(args.mixed)), listing)
    datadir = os.path.join(workdir, "data")
    server = bench.ListsegServer(datadir, os.path.join(workdir, "listseg.log"))
    from listseg import Client
    try:
        with Client(server.target, timeout=24 * 3600) as c:
            started, anon = time.perf_counter(), PeakAnon(server.proc.pid)
            imported = c.import_profiles(profiles)
            import_s, import_anon = time.perf_counter() - started, anon.finish()
            assert imported.upserted == args.profiles, imported
            data_after_import = dir_bytes(datadir)
            with open(profiles, "rb") as f:
                f.readline()
                probe = [f.readline().split(b",")[0].decode() for _ in range(100)]
            c.upload(("Type,Identity\n" + "".join(f"g,{g}\n" for g in probe[::2])).encode(), name="probe")
        watch = DuringUpload(server.membership, server.proc.pid, probe, args.probe_rate)
        exe = os.path.join(os.path.dirname(sys.executable), "listseg")
        upload_s, out = timed_run(exe, "--server", server.target, "upload", listing, "--name", "big", "--json")
        during = watch.finish()
        data_after_upload = dir_bytes(datadir)
    finally:
        server.stop()
    report = json.loads(out)
    got = {k: report[k] for k in expected_counts(args.rows)}
    assert report["state"] == "succeeded" and got == expected_counts(args.rows), (report, expected_counts(args.rows))
    imported_log = logged(server.logpath, "profiles imported")
    upload_log = logged(server.logpath, "upload ended", upload=2)
    size = os.path.getsize(listing)
    return {
        "profiles": args.profiles, "rows": args.rows, "mixed": bool(args.mixed), "file_bytes": size,
        "generate_s": {"profiles": round(gen_profiles_s, 2), "list": round(gen_list_s, 2)},
        "import": {"seconds": round(import_s, 2), "profiles_per_s": round(args.profiles / import_s),
                   "phases_s": {k[:-2]: imported_log.get(k) for k in ("read_s", "load_s", "wait_s")},
                   "server_peak_anon_bytes": import_anon},
        "upload": {"seconds": round(upload_s, 2), "rows_per_s": round(args.rows / upload_s),
                   "mb_per_s": round(size / upload_s / 1e6, 1),
                   "phases_s": {k[:-2]: upload_log.get(k) for k in ("parse_s", "resolve_s", "wait_s", "fold_s", "commit_s")},
                   "counts": got},
        "data_dir_bytes": {"after_import": data_after_import, "after_upload": data_after_upload},
        "during_upload": during, "cpu": cpu_model(), "cores": os.cpu_count(),
    }


def probing(rate):
    return f"{rate:g} calls/s" if rate else "one call after another"


def table(r):
    u, ph, d = r["upload"], r["upload"]["phases_s"], r["during_upload"]
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    rows = [("profile import", f"{r['import']['seconds']:.1f} s", f"{r['import']['profiles_per_s']:,} profiles/s"),
            ("server phases: read and parse / load / wait for batches (s)",
             " / ".join(str(r["import"]["phases_s"][k]) for k in ("read", "load", "wait")), ""),
            ("data directory after the import / the upload", gb(r["data_dir_bytes"]["after_import"]),
             gb(r["data_dir_bytes"]["after_upload"])),
            ("upload, `listseg upload` start to report", f"{u['seconds']:.1f} s",
             f"{u['rows_per_s']:,} rows/s, {u['mb_per_s']} MB/s"),
            ("server phases: parse / resolve (beside parsing) / wait / fold / commit (s)",
             " / ".join(str(ph[k]) for k in ("parse", "resolve", "wait", "fold", "commit")), ""),
            ("server peak anonymous RSS during the import / the upload", gb(r["import"]["server_peak_anon_bytes"]),
             gb(d["server_peak_anon_bytes"])),
            (f"IsMember through the front during the upload ({probing(d['is_member_rate'])}), p50 / p99",
             f"{d['is_member_p50_ms']} / {d['is_member_p99_ms']} ms",
             f"{d['is_member_calls']:,} calls, {d['is_member_errors']} errors")]
    head = (f"{r['profiles']:,} profiles, {r['rows']:,} rows ({'g and i' if r['mixed'] else 'g'}), "
            f"{r['file_bytes'] / 1e9:.2f} GB file; counts exact; {r['cpu']}, {r['cores']} cores")
    return "\n".join([head, "", "| case | figure | |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main():
    ap = bench.arguments(__doc__, 0, "scale", "bench-scale")
    ap.add_argument("--profiles", type=int, default=2_000_000)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--mixed", action="store_true", help="half the known rows by identity")
    ap.add_argument("--probe-rate", type=float, default=PROBE_RATE,
                    help=f"IsMember calls a second during the upload (default {PROBE_RATE:g}); 0: one after another")
    args = ap.parse_args()
    bench.report(run(args), args, table)


if __name__ == "__main__":
    main()
