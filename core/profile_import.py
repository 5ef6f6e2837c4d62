"""Profile import: a `guid,identity,channels` CSV, parsed in batches, each batch upserted in one unit
of the backend on a writer thread while the next one parses. An account's first import, on a backend
with a bulk load (LMDB), is instead held whole and loaded in one unit, each table in key order; rows
past the backend's bound go on in batches after it.
"""
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from listseg.core import parser
from listseg.core.errors import InvalidProfile
from listseg.core.profile import channel_bits

# Rows upserted a unit at a time. Batches are big because new guids and identities land all over
# their B-trees and each commit rewrites every leaf page it touched: on LMDB a batch costs about as
# much as the tables are large.
BATCH_ROWS = 500_000


LINE_BREAK = "line break in guid or identity"


def _drop_line_breaks(batch):
    """(batch, rows dropped): a parsed profiles batch without the rows whose guid or identity holds a
    CR or LF (a quoted field may). Such a key would break the newline framing of ListMembers, the
    export and the profile index. Rare, so a plain loop."""
    if b"\n" not in batch.fields and b"\r" not in batch.fields:
        return batch, 0
    fields, ends, dropped = bytearray(), array("Q"), 0
    for row in batch.values():
        if any(b"\n" in v or b"\r" in v for v in row[:2]):
            dropped += 1
            continue
        for v in row:
            fields += v
            ends.append(len(fields))
    return replace(batch, fields=bytes(fields), ends=memoryview(ends)), dropped


def import_csv(profiles, chunks, batch_rows=BATCH_ROWS):
    """Import a `guid,identity,channels` CSV into `profiles` (core/ids.py Profiles) from an iterable of
    byte chunks: one backend unit per batch of rows, or for an account's first import one unit for
    the rows up to the backend's bulk_load_rows. Returns {"rows", "upserted", "invalid", "errors":
    [(line, reason)] (first 100), "timings": {"read", "load", "wait"} (seconds)};
    a row with an unknown channel, or a line break inside its guid or identity, is invalid with
    line 0."""
    p = parser.Parser(parser.PROFILES)
    report = {"rows": 0, "upserted": 0, "invalid": 0, "errors": []}
    # seconds: reading the chunks, parsing and holding them; loading held rows; waiting for batches
    timings = report["timings"] = {"read": 0.0, "load": 0.0, "wait": 0.0}
    started = time.perf_counter()
    memo = {}

    def bits_of(value):                 # bits, or the reason the value is bad
        bits = memo.get(value)
        if bits is None:
            try:
                bits = channel_bits(value.decode().split(";"))
            except InvalidProfile as e:
                bits = str(e)
            if len(memo) < 4096:
                memo[value] = bits
        if isinstance(bits, str):
            raise InvalidProfile(bits)
        return bits

    def write(batch):
        return profiles._write_batch(batch.fields, batch.ends, bits_of)

    def collect(result):
        upserted, skipped = result
        report["upserted"] += upserted
        report["invalid"] += len(skipped)
        for _, reason in skipped[: 100 - len(report["errors"])]:
            report["errors"].append((0, reason))

    def take():
        batch = p.take()
        for line, reason in p.errors(batch, 100 - len(report["errors"])):
            report["errors"].append((line, reason))
        report["invalid"] += batch.invalid
        report["rows"] += batch.valid + batch.invalid
        batch, dropped = _drop_line_breaks(batch)
        report["invalid"] += dropped
        report["errors"] += [(0, LINE_BREAK)] * min(dropped, 100 - len(report["errors"]))
        return batch

    # A batch is written on a thread (the backend's C loops release the GIL) while the next one parses;
    # each batch's result is collected before the next is counted, so errors stay in file order.
    writer, pending, held = None, None, profiles._first_import_rows()

    def put(batch):
        nonlocal writer, pending, held
        if held is not None and len(held) + batch.valid <= profiles.backend.bulk_load_rows:
            if batch.valid:
                collect((0, held.add(batch.fields, batch.ends, bits_of)))
            return
        if held is not None:
            load(held)
            held.close()
            held = None
        if batch.valid:
            writer = writer or ThreadPoolExecutor(1, thread_name_prefix="profile-import")
            pending = writer.submit(write, batch)

    def wait():                         # before the next batch's parse errors are counted
        nonlocal pending
        if pending is not None:
            t = time.perf_counter()
            collect(pending.result())
            timings["wait"] += time.perf_counter() - t
            pending = None

    def load(rows):
        if not len(rows):
            return
        t = time.perf_counter()
        loaded = profiles._load(rows)
        if loaded is not None:
            report["upserted"] += loaded
        else:
            for args in rows.batches(batch_rows):     # a profile was written meanwhile: upsert in order
                collect(profiles._write_batch(*args))
        timings["load"] += time.perf_counter() - t

    try:
        for chunk in chunks:
            p.feed(chunk)
            if p.pending_rows >= batch_rows:
                wait()
                put(take())
        p.finish()
        wait()
        put(take())
        if held is not None:
            load(held)
        wait()
    finally:
        timings["read"] = time.perf_counter() - started - timings["load"] - timings["wait"]
        if held is not None:
            held.close()
        if writer is not None:
            writer.shutdown(wait=True)      # an in-flight batch commits or fails whole
    return report
