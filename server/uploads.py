"""The uploads a server process holds: those being received, and those whose stream broke, kept for a
resume.

An account runs at most `max_uploads` uploads at once in a process. A stream that breaks (the client
cancelled, its deadline passed, the connection dropped, or the stream stopped without its finish
message) does not fail its upload: the upload waits `resume_window` seconds for a new UploadList
stream that names it and continues from the byte the server has (core/ingest.py Upload.resume), then
fails with the reason it would have failed with at once. A waiting upload gives its slot up to a new
upload of its account that finds none free (the one waiting longest first): a client that never
resumes is never locked out by the uploads its broken streams left.
"""
import contextlib
import threading
import time
from dataclasses import dataclass, field

from listseg.core.errors import TooManyUploads
from listseg.core.ingest import resume_refusal

RESUME_WINDOW_S = 900.0         # `listseg serve --resume-window`; 0: a broken stream fails its upload at once
STREAM_ENDED = "the stream ended early: cancelled by the client, past its deadline or disconnected"
NO_FINISH = "the stream ended without a finish message: the file may be incomplete"


@dataclass(eq=False)
class Held:
    """An upload and what to do when it ends (its spec's webhook and emails)."""
    up: object                  # core/ingest.py Upload
    mode: str
    webhook_url: str = ""
    recipients: tuple = ()
    broke: str = ""             # why its stream broke, while it waits for a resume
    timer: threading.Timer | None = field(default=None, repr=False)


class Uploads:
    def __init__(self, max_uploads=4, resume_window=RESUME_WINDOW_S, on_end=lambda held, record: None):
        self.max_uploads, self.resume_window = max_uploads, resume_window
        self.on_end = on_end            # on_end(held, record): once, when an upload has ended
        self.held = {}                  # (account number, upload id) -> Held
        self.starting = {}              # account number -> uploads being set up (they count too)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, account):
        """Hold one of the account's slots while an upload starts, or refuse with TooManyUploads."""
        with self.lock:
            running = sum(number == account.number for number, _ in self.held) + self.starting.get(account.number, 0)
            waiting = sorted(self._waiting(account.number), key=lambda h: h.up.resume_by)
            if running >= self.max_uploads and not waiting:
                raise TooManyUploads(f"account {account.name} already has {running} uploads running; "
                                     f"at most {self.max_uploads}", limit=self.max_uploads)
            self.starting[account.number] = self.starting.get(account.number, 0) + 1
        try:
            if running >= self.max_uploads:
                self._give_up(waiting[0], "a new upload took its slot before it was resumed")
            yield
        finally:
            with self.lock:
                self.starting[account.number] -= 1

    def _waiting(self, account_number=None):
        """The uploads waiting for a resume (of one account), with the lock held."""
        return [h for (number, _), h in self.held.items()
                if h.up.resume_by is not None and account_number in (None, number)]

    def add(self, account, up, mode, webhook_url="", recipients=()):
        held = Held(up, mode, webhook_url, tuple(recipients))
        with self.lock:
            self.held[(account.number, up.id)] = held
        return held

    def get(self, account_number, upload_id):
        with self.lock:
            return self.held.get((account_number, upload_id))

    def pause(self, held, stream, reason=STREAM_ENDED):
        """Stream number `stream` of the upload broke: keep the upload for a resume (or fail it, when
        resuming is off). Does nothing if the upload has moved on; safe to call twice."""
        if self.resume_window <= 0:
            self.fail(held, reason)
        elif held.up.pause(stream, time.time() + self.resume_window):
            held.broke = reason
            held.timer = threading.Timer(self.resume_window, self._expire,
                                         (held, stream, f"{reason}; not resumed within {self.resume_window:g} s"))
            held.timer.daemon = True
            held.timer.start()

    def free_name(self, account, name):
        """A new create of `name` takes the name from a create that waits for a resume."""
        with self.lock:
            holders = [h for h in self._waiting(account.number)
                       if h.mode == "create" and h.up.record["segment_name"] == name]
        for held in holders:
            self._give_up(held, f"a new create of {name!r} took the name before it was resumed")

    def resume(self, account, upload_id, offset):
        """(held, the new stream's number) for a stream that continues the upload from byte offset."""
        held = self.get(account.number, upload_id)
        if held is None:
            raise resume_refusal(account, upload_id)
        stream = held.up.resume(offset)
        if held.timer is not None:
            held.timer.cancel()
        return held, stream

    def fail(self, held, reason):
        self.ended(held, held.up.abort(reason))

    def _give_up(self, held, why):
        """Fail a waiting upload now, for `why`."""
        if held.timer is not None:
            held.timer.cancel()
        self._expire(held, held.up.stream, f"{held.broke}; {why}")

    def _expire(self, held, stream, reason):
        record = held.up.expire(stream, reason)
        if record is not None:
            self.ended(held, record)

    def ended(self, held, record):
        """The upload has ended with `record`: let its slot go and tell on_end (once)."""
        with self.lock:
            mine = self.held.pop((held.up.number, held.up.id), None) is held
        if mine:
            self.on_end(held, record)

    def close(self):
        """The server stops: the uploads still waiting for a resume fail now."""
        with self.lock:
            waiting = self._waiting()
        for held in waiting:
            self._give_up(held, "the server stopped before it was resumed")
