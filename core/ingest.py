"""One upload: bytes -> parser -> resolver -> bitmap -> one commit, with its report.

`feed(chunk)` any number of times, then `finish()` returns the upload's record with its report;
`abort(reason)` or a crash changes nothing but the upload's own record (and takes away the segment a
failed create had made). A stream that breaks can `pause` the upload, and a later one `resume` it
from the byte where it stopped. The segment's live version is only ever replaced by the one unit that
publishes a successful upload's version (core/backend.py Unit.publish).
"""
import contextlib
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pyroaring import BitMap

from listseg.core import parser
from listseg.core.backend import COMMIT_TRIES
from listseg.core.errors import (HeadMoved, InvalidArgument, ListsegError, NotFound, NotResumable, StorageUnavailable,
                                 TooLarge, UploadElsewhere, WrongOffset)
from listseg.core.layout import UNKNOWN
from listseg.core.members import without_deleted

MODES = ("create", "replace", "append", "remove")
PHASES = ("parse", "resolve", "wait", "fold", "commit")
ACTIVE_STATES = ("receiving", "processing")
ERRORS_IN_REPORT = 100          # invalid rows listed in the report itself
REJECTS_KEPT = 100_000          # invalid rows kept with the upload (ListUploadErrors)
# Rows resolved at a time: batches grow with the upload, each as large as all the rows before it (so
# resolving one overlaps parsing the next), from FIRST_BATCH_ROWS up to the backend's
# max_resolve_rows; one more batch parses while one is resolved. The first is small so that resolving
# starts while the rest still parses: a 1M-row upload took 0.29 s in one batch and 0.21 s with a
# first batch of 256k rows.
FIRST_BATCH_ROWS = 1 << 18
# A batch is looked up in this many key ranges side by side (a core each, up to 4: each holds one of
# LMDB's 126 reader slots while it runs, and one parser feeds them): the last batch, up to
# max_resolve_rows, is resolved after the stream ends, with nothing else to do.
RESOLVE_PARTS = min(4, os.cpu_count() or 1)
# The parser and the resolver (and the threads of its parts) run this much nicer than the server: on
# a busy machine, membership checks (the front, IsMember) take a core from them at once. 19, the most
# Linux gives: 150M-row uploads, IsMember p99 4.46 and 4.44 ms against 4.70-5.21 ms at 10, the upload
# as fast (docs/performance.md).
BULK_NICE = 19
FOLD_SLICE = 1 << 14            # uids counted into the members bitmap per GIL-holding call (~0.5 ms)
MAX_FILE_NAME = 255             # bytes, as a file name on Linux; kept in every upload record and email
# How long a failed upload whose record the store could not take (a failover) keeps trying to write
# it; a server that stops meanwhile leaves it to ingest.recover at the next start.
FAIL_LATER_S = 3600
log = logging.getLogger("listseg.ingest")


class Upload:
    def __init__(self, account, mode, name=None, segment=None, dry_run=False, strict=False,
                 file_name="", max_bytes=None, now=time.time):
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}", field="mode")
        if (mode == "create") != (name is not None) or (mode != "create") != (segment is not None):
            raise InvalidArgument("create takes a name; replace, append and remove take a segment")
        if len(file_name.encode()) > MAX_FILE_NAME:
            raise InvalidArgument(f"a file name is at most {MAX_FILE_NAME} bytes", field="file_name")
        self.account = account
        self.number = account.number
        self.backend = account.backend
        self.segments = account.segments
        self.mode, self.dry_run, self.strict = mode, dry_run, strict
        self.max_bytes = max_bytes if max_bytes is not None else account.engine.max_upload_bytes
        self.now = now
        self.parser = parser.Parser(parser.UPLOAD)
        self.members = BitMap()
        self.counts = {"rows": 0, "qualified": 0, "unknown": 0, "invalid": 0, "duplicates": 0}
        self.bytes = 0
        self.rejects = []            # (line, reason), capped at REJECTS_KEPT
        self.state = "receiving"
        self._lock = threading.RLock()  # feed, finish and abort may come from different threads
        self._resolver = None           # a thread, started with the first full batch
        self._parsing = None            # a thread, started with the first chunk (_parse)
        self._in_flight = None          # (batch, future of its uids)
        self._rows_taken = 0            # rows of the batches submitted so far
        self.id = None                  # _start's, once it has one
        self.stream = 0                 # the number of the stream feeding it; each resume takes the next
        # seconds in each phase (the server logs them when the upload ends): parse (the parser, on its
        # thread, while the receiving thread waits), resolve (look-ups, on the resolver thread, beside
        # parsing), wait (the receiving thread waiting for the resolver), fold (counting uids into the
        # bitmap), commit
        self.timings = dict.fromkeys(PHASES, 0.0)
        self.resume_by = None           # while paused: until when (epoch s) it waits for a resume
        try:
            self.record = self.backend.write(lambda unit: self._start(unit, name, segment, file_name))
        except StorageUnavailable:
            if self.id is not None:     # the store may hold the record though the write's answer was lost
                self.state = "failed"
                _write_later(self.backend, self._abandon, self.id)
            raise
        self.id = self.record["id"]

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self, unit, name, segment, file_name):
        """Check the target and write the upload's record (and a create's new segment)."""
        now = self.now()
        if self.mode == "create":
            if self.dry_run:
                rec = {"id": None, "name": self.segments.check_new_name(unit, name)}
            else:
                rec = self.segments.create(unit, name, now=now)
        else:
            rec = self.segments.record(unit, self.segments.find_id(unit, segment))
            if not self.dry_run:
                self.segments.check_free(rec)
        upload = {"id": unit.allocate(self.number, "next_upload"), "segment": rec["id"],
                  "segment_name": rec["name"], "mode": self.mode, "dry_run": self.dry_run,
                  "strict": self.strict, "file_name": file_name, "state": "receiving", "reason": "",
                  "created": now, "finished": None, "owner": process_token(os.getpid()), "report": None}
        unit.put_upload(self.number, upload)
        self.id = upload["id"]
        return upload

    def _abandon(self, unit):
        """Fail this upload's record if a _start whose answer was lost left one (in a unit)."""
        upload = self._current(unit)
        if upload is not None and upload["state"] in ACTIVE_STATES and upload["owner"] == process_token(os.getpid()):
            upload.update(state="failed", reason="the store was unavailable when the upload started",
                          finished=self.now(), report=self._report(0))
            unit.put_upload(self.number, upload)
            note_failure(self.segments, unit, upload)

    def feed(self, chunk, stream=None):
        """Parse chunk; `stream` (if given) must be the stream that feeds the upload now."""
        with self._lock:
            self._check_stream(stream)
            self._feed(chunk)

    def _check_stream(self, stream):
        if stream is not None and (stream != self.stream or self.resume_by is not None):
            raise Superseded(f"upload {self.id} no longer takes this stream's messages", upload=self.id,
                             state=self.state)

    def _feed(self, chunk):
        if self.state != "receiving":
            raise InvalidArgument(f"upload {self.id} is {self.state}")
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            self.abort(f"file too large: over {self.max_bytes} bytes")
            raise TooLarge(f"upload is over the {self.max_bytes}-byte limit", limit=self.max_bytes)
        try:
            self._parse(self.parser.feed, chunk)
        except parser.BadHeader:
            return                      # reported by finish(); the rest of the stream is ignored
        if self.parser.pending_rows >= self._batch_rows():
            self._submit(self._parse(self.parser.take))

    def _batch_rows(self):
        return min(max(FIRST_BATCH_ROWS, self._rows_taken), self.backend.max_resolve_rows)

    def progress(self):
        """Bytes received and rows parsed so far (safe to read from another thread)."""
        in_flight = self._in_flight[0] if self._in_flight else None
        rows = in_flight.valid + in_flight.invalid if in_flight else 0
        return {"bytes": self.bytes, "rows": self.counts["rows"] + rows + self.parser.pending_rows}

    # A batch is resolved on the resolver thread (the C lookup releases the GIL) while the next one is
    # parsed here; at most one batch is in flight, so memory stays bounded.
    def _submit(self, batch):
        self._collect()
        self._rows_taken += batch.valid + batch.invalid
        if self._resolver is None:
            self._resolver = ThreadPoolExecutor(1, thread_name_prefix=f"resolve-{self.id}", initializer=yield_cpu)
        self._in_flight = (batch, self._resolver.submit(self._lookup, batch))

    def _lookup(self, batch):
        with self._timed("resolve"), self.backend.snapshot() as snap:
            return self.account.profiles.resolve(snap, batch, parts=RESOLVE_PARTS)

    @contextlib.contextmanager
    def _timed(self, phase):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - started

    def _collect(self):
        """Wait for the batch in flight, if any, and count it in."""
        if self._in_flight is None:
            return
        batch, future = self._in_flight
        self._in_flight = None
        with self._timed("wait"):
            uids = future.result()
        with self._timed("fold"):
            self._fold(batch, uids)

    def _parse(self, fn, *args):
        """fn(*args) of the parser on the upload's parsing thread, waited for: parsing is bulk work, as
        nice as the resolver (yield_cpu), where the receiving thread is the server's, shared with the
        calls that must answer at once."""
        if self._parsing is None:
            self._parsing = ThreadPoolExecutor(1, thread_name_prefix=f"parse-{self.id}", initializer=yield_cpu)
        with self._timed("parse"):
            return self._parsing.submit(fn, *args).result()

    def _stop_threads(self):
        for pool in (self._parsing, self._resolver):
            if pool is not None:
                pool.shutdown(wait=True)
        self._parsing = self._resolver = None

    def _fold(self, batch, uids):
        before, unknown = len(self.members), 0
        # In slices, each one C call holding the GIL, with the GIL handed over between them: a
        # 4M-row batch takes ~120 ms, and the server's other calls (IsMember) waited out runs of it
        # (up to 140 ms at 10M rows) when they had to wait for the 5 ms switch interval each time.
        for i in range(0, len(uids), FOLD_SLICE):
            part = uids[i:i + FOLD_SLICE]
            unknown += part.count(UNKNOWN)
            self.members.update(part)
            time.sleep(0)
        self.members.discard(UNKNOWN)
        qualified = len(self.members) - before
        c = self.counts
        c["rows"] += batch.valid + batch.invalid
        c["unknown"] += unknown
        c["qualified"] += qualified
        c["duplicates"] += batch.valid - unknown - qualified
        c["invalid"] += batch.invalid
        room = REJECTS_KEPT - len(self.rejects)
        if room > 0 and batch.invalid:
            self.rejects.extend(self.parser.errors(batch, room))

    def finish(self, stream=None):
        """Process what is left, then commit (or fail). Returns the upload record."""
        with self._lock:
            self._check_stream(stream)
            return self._finish()

    def _finish(self):
        if self.state != "receiving":
            raise InvalidArgument(f"upload {self.id} is {self.state}")
        self.state = "processing"
        try:
            self._parse(self.parser.finish)
            self._submit(self._parse(self.parser.take))
            self._collect()
        except parser.BadHeader:
            return self._fail("bad header: the first row must name the columns Type,Identity")
        finally:
            self._stop_threads()
        if self.strict and self.counts["invalid"]:
            line, reason = self.rejects[0]
            return self._fail(f"strict: {self.counts['invalid']} invalid rows, the first at line {line}: {reason}")
        if self.counts["qualified"] == 0:
            return self._fail("no row names a known profile")
        try:
            with self._timed("commit"):
                upload = self._commit()
        except StorageUnavailable as e:
            # the commit may have landed all the same (its answer was lost): the caller learns it
            # does not know, and the record, failed or (if the commit landed) succeeded, stays true
            self._fail(str(e))
            raise
        except ListsegError as e:      # e.g. a consumer attached while we were receiving
            return self._fail(str(e))
        self.state = "succeeded"
        return upload

    def _commit(self):
        """Publish the new version against the head it was built from; read again if another
        commit moved the head meanwhile (append and remove build on the head)."""
        try:
            return self.segments.commit(self._next_version, self._finish_upload, stage=not self.dry_run)
        except HeadMoved as e:
            raise HeadMoved(f"other commits changed the segment during each of {COMMIT_TRIES} tries "
                            f"to commit this upload; upload it again", **e.metadata) from e

    def _next_version(self, snap):
        """(segment id, head, the members of the version after it) as snap sees the segment."""
        seg_id = self.record["segment"]             # an upload's segment never changes
        head = self.segments.head(snap, seg_id) if seg_id is not None else 0
        if self.mode in ("create", "replace"):
            new = self.members
        else:
            _, live = self.segments.bitmap(snap, seg_id, head)
            new = live | self.members if self.mode == "append" else live - self.members
        # profiles deleted since they were resolved, or (append, remove) still in the old version
        return seg_id, head, without_deleted(new, self.account.profiles.deleted(snap))

    def _finish_upload(self, unit, _seg_id, head, staged, members):
        size = len(members)
        now = self.now()
        upload = self._current(unit)
        seg = self.segments.record(unit, upload["segment"]) if upload["segment"] is not None else None
        if self.mode != "create" and not self.dry_run:
            self.segments.check_free(seg)           # again: a consumer may have attached meanwhile
        report = self._report(size)
        if not self.dry_run:
            seg["last_upload"] = self.id
            report["version"] = self.segments.publish(unit, seg, head, staged, now, {"upload": self.id})
        upload.update(state="succeeded", finished=now, report=report)
        unit.put_upload(self.number, upload)
        unit.put_rejects(self.number, self.id, self.rejects)
        return upload

    def _current(self, snap):
        return snap.upload(self.number, self.id)

    def _report(self, size):
        return dict(self.counts, size=size, bytes=self.bytes,
                    errors=[{"line": line, "reason": reason} for line, reason in self.rejects[:ERRORS_IN_REPORT]])

    # -- resuming ----------------------------------------------------------------------------
    # A broken stream leaves the upload receiving with everything it consumed (the parser keeps a row
    # cut mid-way), for a later stream to continue from byte `self.bytes`. Each resume takes the
    # upload over under the next stream number, so a late message of an old stream never feeds it.
    def pause(self, stream, until):
        """Stream `stream` broke: wait for a resume until `until` (epoch s). False if the upload has
        moved on (ended, paused already, or taken over by another stream)."""
        with self._lock:
            if self.state != "receiving" or stream != self.stream or self.resume_by is not None:
                return False
            self.resume_by = until
            self._note_position()
            return True

    def resume(self, offset):
        """Take the upload over for a new stream that sends the file from byte `offset` on; returns
        the new stream's number. Any stream still feeding it is cut off."""
        with self._lock:
            if self.state != "receiving":
                raise NotResumable(f"upload {self.id} is {self.state}", upload=self.id, state=self.state)
            if offset != self.bytes:
                raise WrongOffset(f"upload {self.id} holds the file's first {self.bytes} bytes: resume at offset "
                                  f"{self.bytes}, not {offset}", upload=self.id, committed_bytes=self.bytes)
            self.stream += 1
            self.resume_by = None
            self._note_position()
            return self.stream

    def expire(self, stream, reason):
        """Fail the upload if it still waits for a resume after stream `stream`; its record, else None."""
        with self._lock:
            if self.state != "receiving" or stream != self.stream or self.resume_by is None:
                return None
            return self._fail(reason)

    def _note_position(self):
        """Put committed_bytes and resume_by in the record, for GetUpload in any server process."""
        def run(unit):
            upload = self._current(unit)
            if upload["state"] == "receiving":
                upload.update(committed_bytes=self.bytes, resume_by=self.resume_by)
                unit.put_upload(self.number, upload)
        try:
            self.backend.write(run)
        except StorageUnavailable:      # only the record lags: the process holding the upload knows
            log.warning("could not note an upload's position", extra={"fields": {"upload": self.id}})

    def abort(self, reason="cancelled"):
        """Fail the upload: the segment keeps its live version. Safe from any thread: it waits for
        a feed or finish under way, and does nothing to an upload that has already ended."""
        with self._lock:
            if self.state in ("succeeded", "failed"):
                return get_upload(self.account, self.id)
            return self._fail(reason)

    def _fail(self, reason):
        self._in_flight = None
        self._stop_threads()
        def run(unit):
            upload = self._current(unit)
            if upload["state"] == "succeeded":
                return upload   # its commit landed though its answer was lost (a failover): keep it true
            _, live = (self.segments.bitmap(unit, upload["segment"])
                       if upload["segment"] is not None else (0, BitMap()))
            upload.update(state="failed", reason=reason, finished=self.now(), report=self._report(len(live)))
            unit.put_upload(self.number, upload)
            unit.put_rejects(self.number, self.id, self.rejects)
            note_failure(self.segments, unit, upload)
            return upload
        self.state = "failed"
        try:
            return self.backend.write(run)
        except StorageUnavailable:
            # the store is away (a failover): the record must still say failed once it is back
            _write_later(self.backend, run, self.id)
            raise


class Superseded(NotResumable):
    """A message of a stream the upload no longer takes (it broke, or a resume took the upload over)."""


def resume_refusal(account, upload_id):
    """The error for a resume of an upload this process does not hold (NotFound if there is none)."""
    rec = get_upload(account, upload_id)
    if rec["state"] == "receiving" and owner_alive(rec["owner"]) and rec["owner"] != process_token(os.getpid()):
        return UploadElsewhere(f"upload {upload_id} is held by another server process ({rec['owner']}); "
                               f"a new connection may reach it", upload=upload_id, owner=rec["owner"])
    if rec["state"] == "receiving":
        return NotResumable(f"upload {upload_id} was interrupted: the server process holding it stopped",
                            upload=upload_id, state="interrupted")
    why = f": {rec['reason']}" if rec["reason"] else ""
    return NotResumable(f"upload {upload_id} is {rec['state']}{why}", upload=upload_id, state=rec["state"])


def _write_later(backend, run, upload_id):
    """backend.write(run), on a thread of its own, until it lands (FAIL_LATER_S at most)."""
    threading.Thread(target=_keep_writing, args=(backend, run, upload_id), daemon=True,
                     name=f"fail-upload-{upload_id}").start()


def _keep_writing(backend, run, upload_id, give_up_s=FAIL_LATER_S):
    """backend.write(run) again and again, backing off, until it lands or give_up_s have passed."""
    deadline, delay = time.monotonic() + give_up_s, 1.0
    while time.monotonic() < deadline:
        time.sleep(delay)
        try:
            backend.write(run)
            log.info("failed upload recorded", extra={"fields": {"upload": upload_id}})
            return
        except StorageUnavailable:
            delay = min(delay * 2, 30.0)
    log.error("could not record a failed upload", extra={"fields": {"upload": upload_id}})


def note_failure(segments, unit, upload):
    """Point the segment's last upload at a failed one. A failed create removes the segment it made,
    so the same create can run again; its upload record keeps the name and the reason. Only a
    campaign or journey attached meanwhile keeps the segment, failed (the next create of the name
    takes it over: Segments.create)."""
    if upload["dry_run"] or upload["segment"] is None:
        return
    try:
        seg = segments.record(unit, upload["segment"])
    except ListsegError:
        return                          # deleted meanwhile
    if upload["mode"] == "create" and seg["state"] == "processing":   # as the create left it: nothing committed
        if not seg["consumers"] and segments.head(unit, seg["id"]) == 0:
            segments.remove(unit, seg)
            return
        seg["state"] = "failed"
    seg["last_upload"] = upload["id"]
    segments.save(unit, seg)


def get_upload(account, upload_id):
    with account.backend.snapshot() as snap:
        rec = snap.upload(account.number, upload_id)
    if rec is None:
        raise NotFound(f"no upload {upload_id}", upload=upload_id)
    return rec


def upload_errors(account, upload_id, start=0, limit=1000):
    """[(line, reason)] of an upload's rejected rows from position start, and the next position."""
    get_upload(account, upload_id)
    with account.backend.snapshot() as snap:
        out = snap.rejects(account.number, upload_id, start, limit)
    return out, (start + len(out) if len(out) == limit else None)


def recover(account):
    """Mark uploads whose process has died (on this host) as failed (reason: interrupted)."""

    def run(unit):
        fixed = 0
        for upload in unit.uploads(account.number):
            if upload["state"] in ACTIVE_STATES and not owner_alive(upload["owner"]):
                upload.update(state="failed", reason="interrupted", finished=time.time())
                unit.put_upload(account.number, upload)
                note_failure(account.segments, unit, upload)
                fixed += 1
        return fixed
    return account.backend.write(run)


def yield_cpu():
    """Make the calling thread BULK_NICE nicer (Linux nices threads one by one); threads it starts
    inherit it. Where the system refuses, the thread keeps its priority."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BULK_NICE))


def process_token(pid):
    """pid plus the process's start time (so a recycled pid is not mistaken for the old process), at
    this host (servers on several machines share a Redis store)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            start = f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}@{socket.gethostname()}"


def owner_alive(owner):
    """Whether the process that owns an upload lives. Only this host's processes can be judged: an
    owner elsewhere counts as alive (its own host's next start judges it). An owner written before
    hosts were named is this host's."""
    local, _, host = owner.partition("@")
    if host and host != socket.gethostname():
        return True
    pid = int(local.split(":", 1)[0])
    return process_token(pid).partition("@")[0] == local

