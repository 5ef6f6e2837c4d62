"""The embedded backend: one LMDB environment (core/store.py), with the keys of core/layout.py.

A snapshot is one read transaction, a unit one write transaction under the environment's write lock:
every guarantee of core/backend.py is LMDB's own (one view of every key, all-or-nothing commits,
durable on return). The membership front reads the same files (`lmdb_path`). Profile writes live in
core/lmdb_profiles.py.
"""
import fcntl
import os
import shutil
import threading
from array import array
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from pyroaring import FrozenBitMap

from listseg.core import lmdb_migrate, lmdb_profiles
from listseg.core.backend import Backend, Snapshot, Unit
from listseg.core.errors import HeadMoved
from listseg.core.layout import (ACCOUNT, ACCOUNT_KEY, ACCOUNT_NAME_KEY, CHANNEL_KEY, COUNTER_KEY,
                                 CREDENTIALS_KEY, DELETED, FLAG, GENERATION, GENERATION_KEY, HEAD_KEY, HISTORY_KEY,
                                 REJECT_KEY, REJECT_ROW, SEGMENT_ID, SEGMENT_KEY, SEGMENT_NAME_KEY, UNKNOWN,
                                 UPLOAD_KEY, VERSION, VERSION_KEY, account_prefix, decode_reject, dumps,
                                 encode_reject, loads)
from listseg.core.keyorder import key_ranges
from listseg.core.store import DEFAULT_MAP_SIZE, Database


#: Rows from which Snapshot.resolve(parts=N) splits a batch: a thread and a sample cost ~1 ms, a
#: million rows ~0.3 s to resolve here.
SPLIT_RESOLVE_ROWS = 1 << 20


class LmdbSnapshot(Snapshot):
    def __init__(self, txn, db, database=None):
        self.txn = txn
        self.db = db            # the named databases (store.Database.db)
        self.database = database    # where resolve's other parts read (None: a unit's, one part)

    def _json(self, dbi, key):
        return loads(self.txn.get(dbi, key))

    def _scan(self, dbi, prefix):
        return Database.scan(self.txn, dbi, prefix)

    # -- the account directory ------------------------------------------------------------------
    def account_names(self):
        return [ACCOUNT_NAME_KEY.parse(key)[0].decode()
                for key, _ in self._scan(self.db.accounts, ACCOUNT_NAME_KEY.prefix())]

    def account_number(self, name):
        raw = self.txn.get(self.db.accounts, ACCOUNT_NAME_KEY.pack(name.encode()))
        return ACCOUNT.unpack(raw) if raw is not None else None

    def account_state(self, acct):
        return self._json(self.db.accounts, ACCOUNT_KEY.pack(account_prefix(acct)))

    def credentials_required(self):
        return self.txn.get(self.db.accounts, CREDENTIALS_KEY.pack()) is not None

    # -- profiles --------------------------------------------------------------------------------
    def generation(self, acct):
        raw = self.txn.get(self.db.accounts, GENERATION_KEY.pack(account_prefix(acct)))
        return GENERATION.unpack(raw) if raw else 0

    def resolve(self, acct, kinds, fields, ends, nvals=1, col=0, parts=1):
        args = (self.db.guid, self.db.ident, account_prefix(acct), kinds, fields, ends, nvals, col)
        if parts < 2 or self.database is None or len(kinds) < SPLIT_RESOLVE_ROWS:
            return self.txn.resolve(*args)
        # Each key range on a thread of its own, in a read transaction of its own (LMDB's are one
        # thread's), and this one here; the C loop releases the GIL. The threads start from this one,
        # so they inherit its priority (ingest.yield_cpu).
        out = array("I", [UNKNOWN]) * len(kinds)
        ranges = key_ranges(kinds, fields, ends, nvals, col, parts)

        def part(lo, hi):
            with self.database.read() as txn:
                txn.resolve(*args, lo, hi, out)
        with ThreadPoolExecutor(len(ranges) - 1 or 1, thread_name_prefix="resolve-part") as pool:
            others = [pool.submit(part, lo, hi) for lo, hi in ranges[1:]]
            self.txn.resolve(*args, *ranges[0], out)
            for f in others:
                f.result()          # a part's error is the call's
        return out.tobytes()

    def member_keys(self, acct, uids, identities=False):
        return self.txn.member_guids(self.db.profile, account_prefix(acct), uids, identities)

    def profiles(self, acct, uids):
        return lmdb_profiles.records(self.txn, self.db, account_prefix(acct), uids)

    def all_keys(self, acct):
        every = array("I", range(self.account_state(acct)["next_uid"]))     # uids are dense
        return tuple(self.member_keys(acct, every, identities) for identities in (False, True))

    def channel(self, acct, name):
        raw = self.txn.get(self.db.channels, CHANNEL_KEY.pack(account_prefix(acct), name.encode()))
        return FrozenBitMap.deserialize(raw) if raw else FrozenBitMap()

    def deleted(self, acct):
        return self.channel(acct, DELETED)      # stored as one more channel, under a name none can take

    # -- segments, versions, uploads ----------------------------------------------------------------
    def segment_id(self, acct, name):
        raw = self.txn.get(self.db.segnames, SEGMENT_NAME_KEY.pack(account_prefix(acct), name.encode()))
        return SEGMENT_ID.unpack(raw) if raw is not None else None

    def segment(self, acct, seg_id):
        return self._json(self.db.segments, SEGMENT_KEY.pack(account_prefix(acct), seg_id))

    def segments(self, acct):
        return [loads(raw) for _, raw in self._scan(self.db.segments, SEGMENT_KEY.prefix(account_prefix(acct)))]

    def head(self, acct, seg_id):
        raw = self.txn.get(self.db.heads, HEAD_KEY.pack(account_prefix(acct), seg_id))
        return VERSION.unpack(raw) if raw else 0

    def version(self, acct, seg_id, version):
        raw = self.txn.get(self.db.versions, VERSION_KEY.pack(account_prefix(acct), seg_id, version))
        return FrozenBitMap.deserialize(raw) if raw is not None else None

    def history(self, acct, seg_id):
        return [(HISTORY_KEY.parse(key)[-1], loads(raw))
                for key, raw in self._scan(self.db.history, HISTORY_KEY.prefix(account_prefix(acct), seg_id))]

    def kept_versions(self, acct, seg_id):
        p = account_prefix(acct)
        return {VERSION_KEY.parse(key)[-1] for key, _ in self._scan(self.db.versions, VERSION_KEY.prefix(p, seg_id))}

    def upload(self, acct, upload_id):
        return self._json(self.db.uploads, UPLOAD_KEY.pack(account_prefix(acct), upload_id))

    def uploads(self, acct):
        return [loads(raw) for _, raw in self._scan(self.db.uploads, UPLOAD_KEY.prefix(account_prefix(acct)))]

    def rejects(self, acct, upload_id, start, limit):
        p, last = account_prefix(acct), (1 << 8 * REJECT_ROW.width) - 1
        items = self.txn.scan(self.db.rejects, REJECT_KEY.pack(p, upload_id, start),
                              REJECT_KEY.pack(p, upload_id, last), limit)
        return [decode_reject(v) for _, v in items]


class LmdbUnit(LmdbSnapshot, Unit):
    def create_account(self, name, state):
        counter = self._json(self.db.accounts, COUNTER_KEY.pack()) or {"next": 0}
        number = counter["next"]
        counter["next"] += 1
        self.txn.put(self.db.accounts, COUNTER_KEY.pack(), dumps(counter))
        self.txn.put(self.db.accounts, ACCOUNT_NAME_KEY.pack(name.encode()), ACCOUNT.pack(number))
        self.put_account_state(number, state)
        return number

    def put_account_state(self, acct, state):
        self.txn.put(self.db.accounts, ACCOUNT_KEY.pack(account_prefix(acct)), dumps(state))

    def allocate(self, acct, counter):
        state = self.account_state(acct)
        value = state[counter]
        state[counter] = value + 1
        self.put_account_state(acct, state)
        return value

    def require_credentials(self):
        self.txn.put(self.db.accounts, CREDENTIALS_KEY.pack(), FLAG)

    def upsert_profiles(self, acct, fields, ends, bits_of):
        return lmdb_profiles.upsert(self, acct, fields, ends, bits_of)

    def delete_profiles(self, acct, guids):
        return lmdb_profiles.delete(self, acct, guids)

    def load_profiles(self, acct, rows):
        return lmdb_profiles.load(self, acct, rows)

    def put_segment(self, acct, rec):
        self.txn.put(self.db.segments, SEGMENT_KEY.pack(account_prefix(acct), rec["id"]), dumps(rec))

    def claim_name(self, acct, name, seg_id):
        self.txn.put(self.db.segnames, SEGMENT_NAME_KEY.pack(account_prefix(acct), name.encode()),
                     SEGMENT_ID.pack(seg_id))

    def drop_segment(self, acct, seg_id, name):
        p = account_prefix(acct)
        for dbi, shape in ((self.db.versions, VERSION_KEY), (self.db.history, HISTORY_KEY)):
            for key, _ in list(self._scan(dbi, shape.prefix(p, seg_id))):
                self.txn.delete(dbi, key)
        self.txn.delete(self.db.heads, HEAD_KEY.pack(p, seg_id))
        self.txn.delete(self.db.segments, SEGMENT_KEY.pack(p, seg_id))
        self.txn.delete(self.db.segnames, SEGMENT_NAME_KEY.pack(p, name.encode()))

    def put_upload(self, acct, rec):
        self.txn.put(self.db.uploads, UPLOAD_KEY.pack(account_prefix(acct), rec["id"]), dumps(rec))

    def put_rejects(self, acct, upload_id, rows):
        p = account_prefix(acct)
        for i, (line, reason) in enumerate(rows):
            self.txn.put(self.db.rejects, REJECT_KEY.pack(p, upload_id, i), encode_reject(line, reason))

    def publish(self, acct, seg_id, expected_head, staged, now, retention, origin):
        head = self.head(acct, seg_id)
        if head != expected_head:
            raise HeadMoved(f"segment {seg_id} is at version {head}, not {expected_head}",
                            segment=seg_id, version=head)
        p, version = account_prefix(acct), head + 1
        data, size = staged
        self.txn.put(self.db.versions, VERSION_KEY.pack(p, seg_id, version), data)
        self.txn.put(self.db.history, HISTORY_KEY.pack(p, seg_id, version),
                     dumps({"time": now, "size": size, **origin}))
        self.txn.put(self.db.heads, HEAD_KEY.pack(p, seg_id), VERSION.pack(version))
        self._expire(p, seg_id, version, now, retention)
        return version

    def _expire(self, p, seg_id, current, now, retention):
        """Drop the versions retention drops (history rows stay: they are the trend)."""
        superseded_at = {version - 1: rec["time"] for version, rec in self.history(ACCOUNT.unpack(p), seg_id)}
        for key, _ in list(self._scan(self.db.versions, VERSION_KEY.prefix(p, seg_id))):
            version = VERSION_KEY.parse(key)[-1]
            if version != current and retention.drops(version, current, superseded_at.get(version, now), now):
                self.txn.delete(self.db.versions, key)


class LmdbBackend(Backend):
    """options: map_size (the map's virtual size), store_cls (the binding: core/store.py's choice
    unless given)."""

    # A batch's look-ups walk the guid and identity tables once in key order, so a batch costs about
    # the pages it touches: against 150M profiles, 4M-row batches each touched most of the guid table
    # (6.6 s a batch, 37 of them). A batch of 32-byte guids holds ~57 bytes a row while resolved.
    max_resolve_rows = 1 << 25
    # A first import sorted and appended builds each table's pages full, once (random-order batches
    # rewrote most of the tables at every commit and left the pages half full: issue 16). Held at ~66
    # bytes a row plus ~33 while loaded: ~15 GB at this bound with 32-byte guids; one import at a time.
    bulk_load_rows = 160_000_000

    def __init__(self, path, map_size=DEFAULT_MAP_SIZE, store_cls=None):
        self.database = Database(path, map_size, store_cls)
        try:
            lmdb_migrate.upgrade(self.database)
        except BaseException:
            self.database.close()
            raise
        self._holding = threading.Lock()         # one first import held in memory at a time
        self.lmdb_path = path
        self.map_size = map_size                 # never resized while open

    def backup(self, dest):
        self.database.store.copy(dest)

    def usage(self):
        """The data file's size (the pages ever used: LMDB reuses freed pages, never shrinks the file),
        the map's, and the file's free bytes: pages in no database's tree (the free list's own few among
        them), which LMDB will use again before it grows the file; 0 if a commit in between skews it."""
        last, page, in_trees = self.database.store.page_counts()
        return {"file": os.path.getsize(os.path.join(self.lmdb_path, DATA_FILE)), "map": self.map_size,
                "free": max(last + 1 - LMDB_META_PAGES - in_trees, 0) * page}

    @property
    def store_cls(self):
        return type(self.database.store)

    @contextmanager
    def snapshot(self):
        with self.database.read() as txn:
            yield LmdbSnapshot(txn, self.database.db, self.database)

    def write(self, fn):
        return self.database.write(lambda txn: fn(LmdbUnit(txn, self.database.db)))

    def profile_rows(self):
        if not self._holding.acquire(blocking=False):
            return None
        return lmdb_profiles.ProfileRows(self.database, self._holding.release)

    def stage(self, acct, bm):
        bm.run_optimize()
        return bm.serialize(), len(bm)

    def close(self):
        self.database.close()


DATA_FILE, LOCK_FILE = "data.mdb", "lock.mdb"      # LMDB's files in an environment's directory
LMDB_META_PAGES = 2                                 # the two meta pages at the head of LMDB's data file


def restore(src, data_dir, overwrite=False):
    """core/backend.py restore_backup: the backup's data file copied in under a temporary name,
    flushed, then renamed over the old one, while holding the lock LMDB takes first, so that no
    server can open the store half-restored."""
    source = os.path.join(src, DATA_FILE)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{src} holds no backup ({DATA_FILE} is missing)")
    os.makedirs(data_dir, exist_ok=True)
    target = os.path.join(data_dir, DATA_FILE)
    with _unused(data_dir):
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{data_dir} holds a store already; restore over it with --force")
        partial = target + ".restoring"
        shutil.copyfile(source, partial)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
        directory = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextmanager
def _unused(data_dir):
    """Hold the write lock on the first byte of the lock file, as an LMDB process that opens the
    environment first does (mdb_env_excl_lock); every process with it open holds a read lock there,
    so this fails while any does, and a server starting meanwhile waits for it."""
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            raise BlockingIOError(f"{data_dir} is in use: a server (or another process) has its store open; "
                                  "stop it first") from None
        yield
    finally:
        os.close(fd)
