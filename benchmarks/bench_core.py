"""make bench-core [SCALE=N]: the engine's ingest against its pure-Python twin and the obvious script.

Generates N profiles and an N-row upload of g rows (10% unknown, 5% duplicates), imports the profiles
with the compiled engine, then ingests the upload three ways, each in its own process on the same LMDB
files: the compiled core, the pure-Python twin (LISTSEG_NO_EXTENSIONS=1; on at most --twin-rows rows,
it is a Python loop over bytes), and the obvious script (csv module + py-lmdb txn.get per row + a set).
Writes benchmarks/results/core.json. Figures are rows per second; compare ratios, not absolutes.
"""
import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK = 1 << 20


def generate(workdir, n, seed=42):
    """profiles.csv (guid,identity,channels) and upload.csv (Type,Identity): deterministic."""
    rng = random.Random(seed)
    guids = ["%032x" % rng.getrandbits(128) for _ in range(n)]
    chans = ["email", "email;sms", "push", "", "email;push;whatsapp", "webpush"]
    with open(os.path.join(workdir, "profiles.csv"), "w") as f:
        f.write("guid,identity,channels\n")
        f.writelines(f"{g},{'user%d@example.com' % k if k % 2 else ''},{chans[k % 6]}\n"
                     for k, g in enumerate(guids))
    unknown = int(n * 0.10)
    dups = int(n * 0.05)
    known = rng.sample(guids, n - unknown - dups)
    rows = known + ["%032x" % rng.getrandbits(128) for _ in range(unknown)] + rng.sample(known, dups)
    rng.shuffle(rows)
    with open(os.path.join(workdir, "upload.csv"), "w") as f:
        f.write("Type,Identity\n")
        f.writelines(f"g,{g}\n" for g in rows)
    return n - unknown - dups


def chunks(path, limit_rows=None):
    with open(path, "rb") as f:
        if limit_rows is None:
            while chunk := f.read(CHUNK):
                yield chunk
        else:
            lines = [next(f) for _ in range(limit_rows + 1)]       # + the header
            data = b"".join(lines)
            for i in range(0, len(data), CHUNK):
                yield data[i:i + CHUNK]


# -- workers (each runs in its own process) -------------------------------------------------------
def work_import(datadir, workdir):
    from listseg.core.engine import Engine
    with Engine(datadir) as e:
        t = time.perf_counter()
        report = e.account().profiles.import_csv(chunks(os.path.join(workdir, "profiles.csv")))
        return {"seconds": time.perf_counter() - t, "rows": report["upserted"]}


def work_ingest(datadir, workdir, name, limit_rows=None):
    from listseg.core import parser, store
    from listseg.core.engine import Engine
    with Engine(datadir) as e:
        acct = e.account()
        t = time.perf_counter()
        up = acct.upload("create", name=name)
        for chunk in chunks(os.path.join(workdir, "upload.csv"), int(limit_rows) if limit_rows else None):
            up.feed(chunk)
        result = up.finish()
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "rows": result["report"]["rows"], "qualified": result["report"]["qualified"],
                "compiled": parser.COMPILED and store.COMPILED}


def work_python(datadir, workdir, filename="upload.csv"):
    """What a user would write instead: csv + one py-lmdb get per row (in the guid or the identity
    table, by the row's type) + a Python set. bench.py runs it on its list too. Its one listseg
    import: the keys as stored (a guid of 32 hex digits is stored as 16 bytes: core/layout.py)."""
    import csv

    import lmdb

    from listseg.core.layout import GUID_KEY, IDENT_KEY
    env = lmdb.open(datadir, max_dbs=16, readonly=True, lock=True)
    tables = {"g": (env.open_db(b"guid", create=False), GUID_KEY.pack),
              "i": (env.open_db(b"ident", create=False), IDENT_KEY.pack)}
    prefix = (0).to_bytes(4, "big")          # the default account's
    t = time.perf_counter()
    members, rows = set(), 0
    with env.begin() as txn, open(os.path.join(workdir, filename), newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for kind, identity in reader:
            rows += 1
            table, key = tables[kind.strip().lower()]
            uid = txn.get(key(prefix, identity.strip().encode()), db=table)
            if uid is not None:
                members.add(uid)
    seconds = time.perf_counter() - t
    env.close()
    return {"seconds": seconds, "rows": rows, "qualified": len(members)}


WORKERS = {"import": work_import, "ingest": work_ingest, "python": work_python}


def run_worker(kind, *args, twin=False):
    env = dict(os.environ)
    if twin:
        env["LISTSEG_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, __file__, "--worker", kind, *map(str, args)], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10_000_000)
    ap.add_argument("--twin-rows", type=int, default=1_000_000, help="rows the twin ingests (it is slow)")
    ap.add_argument("--workdir", default=os.path.join(HERE, "data"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "core.json"))
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        print(json.dumps(WORKERS[kind](*rest)))
        return

    n = args.scale
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    datadir = os.path.join(args.workdir, "lmdb")
    t = time.perf_counter()
    expected = generate(args.workdir, n)
    print(f"generated {n:,} profiles and a {n:,}-row upload in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    imp = run_worker("import", datadir, args.workdir)
    ours = run_worker("ingest", datadir, args.workdir, "compiled")
    twin_rows = min(n, args.twin_rows)
    twin = run_worker("ingest", datadir, args.workdir, "twin", twin_rows, twin=True)
    py = run_worker("python", datadir, args.workdir)
    assert ours["compiled"], "the compiled engine did not load: run `make install`"
    assert ours["qualified"] == py["qualified"] == expected, (ours, py, expected)

    rate = lambda r: r["rows"] / r["seconds"]  # noqa: E731
    result = {
        "scale": n,
        "ingest_rows_per_s": round(rate(ours)),
        "twin_ingest_rows_per_s": round(rate(twin)),
        "twin_rows": twin["rows"],
        "python_ingest_rows_per_s": round(rate(py)),
        "profiles_per_s": round(rate(imp)),
        "ingest_vs_python": round(rate(ours) / rate(py), 2),
        "ingest_vs_twin": round(rate(ours) / rate(twin), 2),
        "seconds": {"import": imp["seconds"], "ingest": ours["seconds"], "twin": twin["seconds"],
                    "python": py["seconds"]},
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"\n| SCALE={n:,} | rows/s | vs obvious script |\n|---|---|---|\n"
          f"| compiled core | {rate(ours):,.0f} | {rate(ours) / rate(py):.1f}x |\n"
          f"| pure-Python twin ({twin['rows']:,} rows) | {rate(twin):,.0f} | {rate(twin) / rate(py):.2f}x |\n"
          f"| obvious script (csv + py-lmdb get + set) | {rate(py):,.0f} | 1.0x |\n"
          f"| profile import (compiled) | {rate(imp):,.0f} | |")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
