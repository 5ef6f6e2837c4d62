"""The storage seam: everything the engine asks of storage, and what each backend must guarantee.

The engine (`engine`, `accounts`, `ids`, `keyindex`, `segments`, `ingest`) holds a `Backend` and
nothing else of storage: no transaction, database handle or key. Reads go through a `Snapshot`
(`with backend.snapshot() as snap`), writes through a `Unit` (`backend.write(fn)` runs `fn(unit)`).
Every call names the account by its number (`acct`) first. Batches are packed, never a call per row:
keys as the parser packs them (`kinds`, `fields`, `ends`), uids as uint32 little-endian bytes or
`array("I")`, UNKNOWN (core/layout.py) where a key has no profile. Records are the dicts of
core/layout.py's JSON records.

What every backend guarantees (tests/conftest.py's `backend` fixture runs the engine suite on each):
- a unit is all or nothing: `fn` raising writes nothing;
- `fn` may run more than once (a backend may retry it when a key it read moved), so it acts only
  through its unit and returns a result;
- a version (`publish`) is immutable: `version(acct, seg, v)` returns the same members until it is
  expired, and None after;
- `publish` flips the head as one step against an expected head (`HeadMoved` otherwise): a reader sees
  the old version or the new one, never a mix;
- an id from `allocate` or a uid is never handed out twice, even across a crash (gaps allowed);
- a returned `write` is durable (LMDB: on disk; Redis: on its replicas, issue 12).
A snapshot of the LMDB backend is one consistent view of every key; a backend that cannot give one
(Redis Cluster) must still answer each call from one version of the segment it names (`head` and
`version` of that head) and use the profiles generation as a guard for the profile index.
"""
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass

from listseg.core.errors import HeadMoved, InvalidArgument, StoreError  # noqa: F401 (HeadMoved: part of the interface)
from listseg.core.layout import CHANNELS


class Snapshot(ABC):
    """Reads. On LMDB one read transaction; see the module docstring for the weaker backends."""

    # -- the account directory ------------------------------------------------------------------
    @abstractmethod
    def account_names(self) -> list[str]: """Every account's name, in name order."""

    @abstractmethod
    def account_number(self, name: str) -> int | None: """The account called name, or None."""

    @abstractmethod
    def account_state(self, acct: int) -> dict | None:
        """The account record: name, created, next_uid, next_segment, next_upload, credentials."""

    @abstractmethod
    def credentials_required(self) -> bool: """True once any account has a passcode."""

    # -- profiles --------------------------------------------------------------------------------
    @abstractmethod
    def generation(self, acct: int) -> int:
        """The profiles generation: it moves with every write of the account's profiles."""

    @abstractmethod
    def resolve(self, acct: int, kinds, fields, ends, nvals: int = 1, col: int = 0, parts: int = 1) -> bytes:
        """uids (uint32 LE, UNKNOWN for none) of column `col` of rows of `nvals` packed values, each
        looked up as a guid or identity by its kind (b"g" or b"i", one byte a row), in row order.
        With parts > 1 a backend may look up that many key ranges side by side, each in a snapshot
        taken when it starts: for an upload, whose batches see different snapshots anyway; never
        where the answer must be one snapshot's (a membership check)."""

    @abstractmethod
    def member_keys(self, acct: int, uids, identities: bool = False) -> tuple[bytes, bytes]:
        """(keys, found) of ascending uids: each guid (or identity, skipping profiles with none)
        followed by a newline, and the uids that have one (uint32 LE)."""

    @abstractmethod
    def profiles(self, acct: int, uids) -> list:
        """[(bits, guid, identity) or None] for each uid; guid and identity as bytes (b"" for none)."""

    @abstractmethod
    def all_keys(self, acct: int) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        """((guids, their uids), (identities, their uids)) of every profile: the profile index's source."""

    @abstractmethod
    def deleted(self, acct: int):
        """FrozenBitMap of every deleted profile's uid (uids are never reused)."""

    @abstractmethod
    def channel(self, acct: int, name: str):
        """FrozenBitMap of the uids of profiles reachable on channel `name` (core/layout.py CHANNELS)."""

    def reach(self, acct: int, bm) -> dict:
        """{channel: how many uids of bm have a profile reachable on it} (a backend may count
        without shipping whole bitmaps)."""
        return {name: bm.intersection_cardinality(self.channel(acct, name)) for name in CHANNELS}

    # -- segments, versions, uploads ----------------------------------------------------------------
    @abstractmethod
    def segment_id(self, acct: int, name: str) -> int | None: """The segment called name, or None."""

    @abstractmethod
    def segment(self, acct: int, seg_id: int) -> dict | None: """The segment's record, or None."""

    @abstractmethod
    def segments(self, acct: int) -> list[dict]: """Every segment record of the account, in id order."""

    @abstractmethod
    def head(self, acct: int, seg_id: int) -> int: """The segment's current version; 0 before the first."""

    @abstractmethod
    def version(self, acct: int, seg_id: int, version: int):
        """The FrozenBitMap of a published version, or None once it has expired."""

    def version_tag(self, acct: int, seg_id: int, version: int):
        """What tells apart two versions that had one number: None where a number is never issued
        twice (LMDB). On Redis a commit whose answer was lost can be lost in a failover and its number
        issued again with other members, so caches key versions by number and tag."""
        return None

    @abstractmethod
    def history(self, acct: int, seg_id: int) -> list[tuple[int, dict]]:
        """[(version, {time, size} and publish's origin)] of every version ever published, expired
        ones too: the trend and the versions list."""

    @abstractmethod
    def kept_versions(self, acct: int, seg_id: int) -> set[int]:
        """The versions whose members are still kept (not expired), without reading them."""

    @abstractmethod
    def upload(self, acct: int, upload_id: int) -> dict | None: """The upload's record, or None."""

    @abstractmethod
    def uploads(self, acct: int) -> list[dict]: """Every upload record of the account, in id order."""

    @abstractmethod
    def rejects(self, acct: int, upload_id: int, start: int, limit: int) -> list[tuple[int, str]]:
        """[(line, reason)] of the upload's rejected rows from position start, at most limit."""


#: How often a commit (an upload's, a rollback's) builds its version again when publish finds that
#: another commit moved the head meanwhile (HeadMoved).
COMMIT_TRIES = 3


@dataclass(frozen=True)
class Retention:
    """Which versions a commit drops: a superseded version goes once it is both out of the last
    `versions` (the head among them) and superseded more than `seconds` ago, so the version a page
    token pins lives out its window whatever the count."""
    seconds: float = 3600.0
    versions: int = 10

    def drops(self, version: int, head: int, superseded_at: float, now: float) -> bool:
        return version <= head - self.versions and now - superseded_at > self.seconds


class Unit(Snapshot):
    """Writes, all or nothing; reads in a unit see its own writes."""

    @abstractmethod
    def create_account(self, name: str, state: dict) -> int:
        """A new account called name with record state: its number (the next one)."""

    @abstractmethod
    def put_account_state(self, acct: int, state: dict) -> None: ...

    @abstractmethod
    def allocate(self, acct: int, counter: str) -> int:
        """The next value of the account's counter ("next_segment", "next_upload")."""

    @abstractmethod
    def require_credentials(self) -> None: """From now on every call must authenticate."""

    @abstractmethod
    def upsert_profiles(self, acct: int, fields, ends, bits_of) -> tuple[int, list[tuple[int, str]]]:
        """Write packed (guid, identity, channels) rows as if one at a time, in order: a new guid takes
        the next uid, an identity moves to the last profile naming it, the channel bitmaps take the
        net change, the generation moves. bits_of(channels value) -> bits, or raises InvalidProfile
        and the row is skipped. Returns (rows written, [(row, reason)] of the skipped ones)."""

    @abstractmethod
    def delete_profiles(self, acct: int, guids: list[bytes]) -> int:
        """Delete the profiles of these guids (into the deleted set); how many existed."""

    def load_profiles(self, acct: int, rows) -> int | None:
        """An account's first import (rows: the backend's `profile_rows()`, filled), with the result
        of upsert_profiles of every row in order, if no profile of the account was ever written (its
        generation is 0); else None and nothing is written. Returns the rows written. Only backends
        whose `bulk_load_rows` is not 0 have it."""
        raise NotImplementedError

    @abstractmethod
    def put_segment(self, acct: int, rec: dict) -> None: ...

    @abstractmethod
    def claim_name(self, acct: int, name: str, seg_id: int) -> None: """name -> seg_id."""

    @abstractmethod
    def drop_segment(self, acct: int, seg_id: int, name: str) -> None:
        """The segment's versions, history, head, record and name, all gone."""

    @abstractmethod
    def put_upload(self, acct: int, rec: dict) -> None: ...

    @abstractmethod
    def put_rejects(self, acct: int, upload_id: int, rows: list[tuple[int, str]]) -> None:
        """The upload's rejected rows (line, reason), positions 0, 1, ..."""

    @abstractmethod
    def publish(self, acct: int, seg_id: int, expected_head: int, staged, now: float, retention: Retention,
                origin: dict) -> int:
        """Make a staged version the segment's head if its head is still expected_head (HeadMoved
        otherwise): version expected_head + 1, its history row ({time, size} and origin: {"upload": id}
        or {"rollback_of": version}), and the expiry of the versions `retention` drops, as one step.
        Returns the new version."""


class Backend(ABC):
    #: The LMDB directory the membership front reads, or None (the front is LMDB's alone).
    lmdb_path: str | None = None
    #: Whether a profile write (upsert_profiles, delete_profiles) is all or nothing like a unit.
    atomic_bulk_writes = True
    #: The most rows an upload resolves in one Snapshot.resolve (core/ingest.py grows its batches up
    #: to it). Redis looks up a batch in pipelined HMGETs, a few Python objects a row: 4M rows.
    max_resolve_rows = 1 << 22
    #: The most rows an account's first profile import holds in memory for `Unit.load_profiles`,
    #: which writes them in one unit, each table in key order; 0: none, an import upserts in batches.
    bulk_load_rows = 0

    def profile_rows(self):
        """An empty holder of a first import's rows for load_profiles, or None while another import
        holds one (the memory is the bound's): add(fields, ends, bits_of) takes a parsed batch and
        returns the rows it left out [(row, reason)]; len() counts the rows held; batches(n) gives
        them back as upsert_profiles arguments, n rows at a time; close() lets them go."""
        raise NotImplementedError

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[Snapshot]: ...

    @abstractmethod
    def write(self, fn):
        """fn(unit) in one unit, committed when fn returns (its result returned); nothing is written
        if it raises. fn may run more than once."""

    @abstractmethod
    def stage(self, acct: int, bm):
        """Prepare a version's members for publish (outside any unit: the slow part of a commit).
        bm is the caller's and may be changed."""

    def backup(self, dest: str) -> None:
        """A consistent copy of the whole store into the empty directory dest, taken while others go
        on reading and writing. The embedded store only: Redis backs up a Redis store itself."""
        raise StoreError("a Redis store is backed up by Redis (each primary's RDB snapshot or AOF); "
                         "`listseg backup` copies the embedded LMDB store")

    def usage(self) -> dict:
        """{what: bytes} of the store's size, for metrics; {} where the store's own tools say it."""
        return {}

    @abstractmethod
    def close(self) -> None: ...


#: URL schemes of a Redis store: one node, a cluster (seed nodes), each plain or over TLS.
REDIS_SCHEMES = ("redis", "rediss", "redis-cluster", "redis-clusters")


def is_redis(where) -> bool:
    """Whether `where` names a Redis store; InvalidArgument for a URL of any other kind."""
    scheme, sep, _ = str(where).partition("://")
    if not sep:
        return False
    if scheme not in REDIS_SCHEMES:
        raise InvalidArgument(f"not a store URL: {str(where)[:100]!r} (a directory, or "
                              f"{', '.join(s + '://' for s in REDIS_SCHEMES)})", field="store")
    return True


def restore_backup(src, data_dir, overwrite=False) -> None:
    """Put the backup in directory src (made by Backend.backup) in place as the embedded store at
    data_dir. OSError if a process has data_dir's store open (BlockingIOError) or, unless overwrite,
    if data_dir holds a store already (FileExistsError)."""
    from listseg.core.lmdb_backend import restore
    restore(str(src), str(data_dir), overwrite)


def open_backend(where, **options) -> Backend:
    """The backend at `where`: a Redis URL (core/redis_backend.py), or a directory for the embedded
    LMDB store (options: map_size, store_cls)."""
    if is_redis(where):
        from listseg.core.redis_backend import RedisBackend
        return RedisBackend(str(where))
    from listseg.core.lmdb_backend import LmdbBackend
    return LmdbBackend(str(where), **options)
