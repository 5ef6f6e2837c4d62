"""guid -> uid and identity -> uid in memory, for membership checks and uploads.

A batch of 10,000 random guids costs LMDB about 7 ms (one leaf page after another misses the cache);
the in-memory `KeyIndex` answers it in under 1 ms, and resolves an upload's rows in about a third of
the time of LMDB's sorted look-up. The index is a cache of the account's profiles at one *profiles
generation*: a counter that every write of the account's profiles bumps in the same transaction. A
reader uses the index only when its own transaction sees the generation the index was built from, so
answers are exactly LMDB's; otherwise it reads LMDB, and a membership check requests a rebuild in the
background. Guids and identities together cost about 95 bytes a profile. The hot loop is compiled
(`_keyindex`); `_keyindex_py` is its twin.
"""
import logging
import threading
import time

from typing import TYPE_CHECKING

from listseg.core import _keyindex_py
from listseg.core.twins import NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from listseg.core._keyindex_py import KeyIndex, resolve_rows
else:
    try:
        from listseg.core._keyindex import KeyIndex, resolve_rows
    except ImportError:  # pragma: no cover - not built; tests/test_keyindex.py fails the suite then
        from listseg.core._keyindex_py import KeyIndex, resolve_rows  # noqa: F401 (core/ids.py imports it from here)

COMPILED = KeyIndex is not _keyindex_py.KeyIndex

log = logging.getLogger("listseg.keyindex")


#: After a rebuild that took t seconds the next one waits at least REBUILD_GAP * t: however often the
#: profiles change, rebuilding costs at most about a tenth of a core.
REBUILD_GAP = 10
#: The most profiles (uids ever given, deleted ones too) an account's index is built for: ~95 bytes a
#: profile, ~1.9 GB at the bound, and about twice that while a rebuild reads the store. Past it the
#: account's look-ups read the store, as with no index (`listseg serve --profile-index-max`). At 150M
#: profiles a rebuild beside an upload took the server past 24 GB and the kernel killed it.
MAX_PROFILES = 20_000_000


class ProfileIndex:
    """The current pair of KeyIndexes (guids, identities) of one account, rebuilt in the background
    when it goes stale.

    build(snap) -> ((newline-ended guids, their uids), (newline-ended identities, their uids)) reads
    the profiles in a backend snapshot; generation(snap) -> int reads the profiles generation;
    count(snap) -> int the uids given so far (no index past max_profiles)."""

    def __init__(self, backend, build, generation, enabled=True, count=lambda snap: 0, max_profiles=MAX_PROFILES):
        self.backend = backend
        self.enabled = enabled
        self.max_profiles = max_profiles
        self._build = build
        self._generation = generation
        self._count = count
        self._lock = threading.Lock()
        self._current = (None, None)     # ((guids, identities), the generation they hold), swapped as one
        self._failed_at = None           # the generation whose build failed: not retried
        self._thread = None              # the rebuild running, if any
        self._timer = None               # a rebuild waiting for the rate limit, if any
        self._not_before = 0.0           # time.monotonic() before which no rebuild starts
        self._again = False              # asked while a build ran: it may have read the profiles before
        self._closed = False
        self.builds = 0                  # rebuilds finished (metrics)

    def get(self, snap, build=True):
        """(guids, identities) valid for snap, or None when missing or stale; then, with build, a
        rebuild is requested. Uploads pass build=False: a 10M-profile build racing a 10M-row upload
        for 2 cores slowed the upload from 3.7 s to 6.7 s."""
        if not self.enabled:
            return None
        pair, built_at = self._current
        generation = self._generation(snap)
        if pair is not None and built_at == generation:
            return pair
        if build and generation != self._failed_at:
            self.warm()
        return None

    def sizes(self):
        """{"guids": n, "identities": n} the index holds now (0 while there is none), and its builds."""
        pair, _ = self._current
        return {"guids": pair[0].count if pair else 0, "identities": pair[1].count if pair else 0,
                "builds": self.builds}

    def warm(self):
        """Bring the index up to date in the background, as soon as the rate limit allows."""
        with self._lock:
            self._warm()

    def _warm(self):
        """warm(), with the lock held."""
        if self._thread is not None:
            self._again = True           # the build running may hold the profiles from before the change
            return
        if not self.enabled or self._closed or self._timer is not None:
            return
        wait = self._not_before - time.monotonic()
        if wait > 0:
            self._timer = threading.Timer(wait, self._when_allowed)
            self._timer.daemon = True
            self._timer.start()
        else:
            # published once started: wait() and close() join it without the lock (joining a
            # thread not yet started raises); its own finally needs the lock, so it clears
            # _thread only after this
            thread = threading.Thread(target=self._rebuild, name="profile-index", daemon=True)
            thread.start()
            self._thread = thread

    def _when_allowed(self):
        # the timer hands over to the build under one lock: wait() never sees neither running
        with self._lock:
            self._timer = None
            self._warm()

    def _rebuild(self):
        generation = None
        started = time.monotonic()
        try:
            with self.backend.snapshot() as snap:
                generation = self._generation(snap)
                if generation in (self._current[1], self._failed_at):
                    return                   # current already, or known to fail
                count = self._count(snap)
                if count > self.max_profiles:    # too big to keep: the store answers look-ups
                    self._current, self._failed_at = (None, None), generation
                    log.warning("profile index off: too many profiles", extra={"fields": {
                        "profiles": count, "max_profiles": self.max_profiles}})
                    return
                guids, identities = self._build(snap)
            pair = KeyIndex(*guids), KeyIndex(*identities)
            self._current = (pair, generation)
            self.builds += 1
            log.info("profile index built", extra={"fields": {
                "guids": pair[0].count, "identities": pair[1].count, "bytes": pair[0].nbytes + pair[1].nbytes,
                "seconds": round(time.monotonic() - started, 3)}})
        except Exception:            # noqa: BLE001 - readers keep using LMDB until the profiles change
            self._failed_at = generation
            log.exception("profile index build failed")
        finally:
            with self._lock:
                self._thread = None
                self._not_before = time.monotonic() + REBUILD_GAP * (time.monotonic() - started)
                if self._again:           # once more: it reads the generation and stops if current
                    self._again = False
                    self._warm()

    def wait(self, timeout=30.0):
        """Block until no rebuild is running or waiting (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:             # a timer hands over to its build under the lock: never neither
                thread, timer = self._thread, self._timer
            if thread is None and timer is None:
                return
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
            else:
                time.sleep(0.005)

    def close(self):
        """No more rebuilds; wait for the one running, which reads LMDB (call before closing it)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        thread = self._thread
        if thread is not None:
            thread.join()
