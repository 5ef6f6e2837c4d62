"""Uploads started from the dashboard. UploadList returns only when processing has ended, so each runs
on its own thread and the pages show it as processing until then (the page polls; nobody reloads)."""
import itertools
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("listseg.dashboard")

KEEP_S = 600                 # finished jobs are remembered this long (for their notices)


@dataclass
class Job:
    id: int
    account: str             # "" in dev mode
    mode: str                # "name" (create) or "replace"
    target: str              # the new segment's name, or the replaced segment's id
    file_name: str
    started: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    upload: object = None    # the Upload message when the call returned
    error: Exception = None  # a refusal (CallError) or a broken call
    shown: bool = False      # its outcome was shown to the user already
    finished: float = 0.0

    @property
    def running(self):
        return not self.done.is_set()


class Jobs:
    def __init__(self, keep_s=KEEP_S):
        self.keep_s = keep_s
        self._items = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, client, account, path, tmpdir, mode, target, file_name, notify=()):
        """Stream the file at `path` on a thread with `client` (closed after); `tmpdir` is removed when
        the call ends."""
        job = Job(next(self._ids), account, mode, str(target), file_name)
        with self._lock:
            self._prune_locked()
            self._items[job.id] = job

        def run():
            try:
                job.upload = client.upload(path, notify_emails=list(notify), **{mode: target})
            except Exception as exc:            # noqa: BLE001 - shown to the user, not raised
                job.error = exc
                if not hasattr(exc, "code"):
                    log.exception("dashboard upload failed", extra={"fields": {"job": job.id}})
            finally:
                client.close()
                shutil.rmtree(tmpdir, ignore_errors=True)
                job.finished = time.time()
                job.done.set()
        threading.Thread(target=run, name=f"dashboard-upload-{job.id}", daemon=True).start()
        return job

    def active(self, account):
        with self._lock:
            return [j for j in self._items.values() if j.account == account and j.running]

    def finished(self, account):
        """Jobs that ended in the last keep_s seconds, newest first."""
        now = time.time()
        with self._lock:
            return sorted((j for j in self._items.values() if j.account == account and not j.running
                           and now - j.finished <= self.keep_s), key=lambda j: -j.id)

    def unshown_errors(self, account):
        """Finished jobs whose refusal nobody has seen yet; marks them seen."""
        with self._lock:
            out = [j for j in self._items.values()
                   if j.account == account and not j.running and j.error is not None and not j.shown]
            for j in out:
                j.shown = True
            return out

    def _prune_locked(self):
        now = time.time()
        for key in [k for k, j in self._items.items() if not j.running and now - j.finished > self.keep_s]:
            del self._items[key]
