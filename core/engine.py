"""The engine: every account's profiles, segments and uploads, over one backend (core/backend.py;
the embedded LMDB store by default).

    engine = Engine("./data")
    acct = engine.account()                      # the default account
    acct.profiles.upsert([("guid-1", "jane@example.com", ["email"])])
    up = acct.upload("create", name="vip")
    up.feed(b"Type,Identity\\ng,guid-1\\n")
    report = up.finish()
"""
import threading
import time
from typing import Any

from listseg.core import ingest, keyindex
from listseg.core.backend import Backend, Retention, open_backend
from listseg.core.errors import InvalidArgument, NotFound
from listseg.core.ids import Profiles
from listseg.core.layout import DEFAULT_ACCOUNT
from listseg.core.members import BitmapCache
from listseg.core.segments import Segments

DEFAULT_MAX_UPLOAD_BYTES = 5 << 30
DEFAULT_RETENTION_S = Retention.seconds
DEFAULT_KEEP_VERSIONS = Retention.versions


class Engine:
    def __init__(self, path: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 retention_s: float = DEFAULT_RETENTION_S, profile_index: bool = True, backend: Backend | None = None,
                 keep_versions: int = DEFAULT_KEEP_VERSIONS, profile_index_max: int = keyindex.MAX_PROFILES,
                 **store_options: Any) -> None:
        """The engine over `backend`, or over the store at `path` (core/backend.py open_backend, with
        store_options: for LMDB, map_size and store_cls). keep_versions: the last versions of each
        segment kept for rollback, however old (core/backend.py Retention)."""
        if keep_versions < 1:
            raise InvalidArgument("keep_versions is at least 1: the head is always kept", field="keep_versions")
        self.backend: Backend = backend or open_backend(path, **store_options)
        self.profile_index = profile_index      # keep each account's guids and identities in memory
        self.profile_index_max = profile_index_max  # ... up to this many profiles an account
        self.max_upload_bytes = max_upload_bytes
        self.retention = Retention(retention_s, keep_versions)
        self.cache = BitmapCache()
        self._accounts: dict[str, Account] = {}
        self._lock = threading.Lock()
        for name in self.account_names():
            ingest.recover(self.account(name))

    def close(self) -> None:
        with self._lock:
            accounts = list(self._accounts.values())
        for acct in accounts:
            acct.profiles.index.close()
        self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def account_names(self) -> list[str]:
        with self.backend.snapshot() as snap:
            return snap.account_names()

    def stats(self) -> dict[str, dict[str, Any]]:
        """{account name: {"segments": n, "versions": n made, "index": this process's profile index
        sizes}} (server/metrics.py samples it)."""
        out: dict[str, dict[str, Any]] = {}
        with self.backend.snapshot() as snap:
            for name in snap.account_names():
                number = snap.account_number(name)
                if number is None:           # made after account_names was read
                    continue
                segments = snap.segments(number)
                versions = sum(len(snap.history(number, rec["id"])) for rec in segments)
                out[name] = {"segments": len(segments), "versions": versions,
                             "index": {"guids": 0, "identities": 0, "builds": 0}}
        with self._lock:
            loaded = list(self._accounts.values())
        for acct in loaded:
            if acct.name in out:
                out[acct.name]["index"] = acct.profiles.index.sizes()
        return out

    def account(self, name: str = DEFAULT_ACCOUNT, create: bool = True) -> "Account":
        """The account called name; created on first use when create is true."""
        with self._lock:
            acct = self._accounts.get(name)
            if acct is None:
                acct = self._accounts[name] = Account(self, name, self._account_number(name, create))
            return acct

    def _account_number(self, name: str, create: bool) -> int:
        if not name or len(name.encode()) > 200:
            raise InvalidArgument("an account name is 1 to 200 bytes", field="account")
        with self.backend.snapshot() as snap:
            number = snap.account_number(name)
        if number is not None:
            return number
        if not create:
            raise NotFound(f"no account {name!r}", account=name)

        def run(unit: Any) -> int:
            number = unit.account_number(name)
            if number is not None:
                return number
            return unit.create_account(name, {"name": name, "created": time.time(), "next_uid": 0,
                                              "next_segment": 1, "next_upload": 1})
        return self.backend.write(run)


class Account:
    """One tenant: every backend call names its number, so it cannot read another account's data."""

    def __init__(self, engine: Engine, name: str, number: int) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.name = name
        self.number = number
        self.profiles = Profiles(self.backend, self)
        self.segments = Segments(self.backend, self, self.profiles, engine.cache, engine.retention)

    def state(self) -> dict[str, Any] | None:
        """The account's record (core/backend.py Snapshot.account_state)."""
        with self.backend.snapshot() as snap:
            return snap.account_state(self.number)

    def upload(self, mode: str, name: str | None = None, segment: str | int | None = None,
               **options: Any) -> ingest.Upload:
        """Start an upload; see core.ingest.Upload."""
        return ingest.Upload(self, mode, name=name, segment=segment, **options)

    def get_upload(self, upload_id: int) -> dict[str, Any]:
        return ingest.get_upload(self, upload_id)

    def upload_errors(self, upload_id: int, start: int = 0,
                      limit: int = 1000) -> tuple[list[tuple[int, str]], int | None]:
        return ingest.upload_errors(self, upload_id, start, limit)
