"""The engine: one LMDB environment holding every account's profiles, segments and uploads.

    engine = Engine("./data")
    acct = engine.account()                      # the default account
    acct.profiles.upsert([("guid-1", "jane@example.com", ["email"])])
    up = acct.upload("create", name="vip")
    up.feed(b"Type,Identity\\ng,guid-1\\n")
    report = up.finish()
"""
import threading
import time

from listseg.core import ingest
from listseg.core.errors import InvalidArgument, NotFound
from listseg.core.ids import Profiles
from listseg.core.segments import BitmapCache, Segments
from listseg.core.layout import (ACCOUNT, ACCOUNT_KEY, ACCOUNT_NAME_KEY, COUNTER_KEY, DEFAULT_ACCOUNT,
                                 account_prefix, dumps, loads)
from listseg.core.store import DEFAULT_MAP_SIZE, Database
DEFAULT_MAX_UPLOAD_BYTES = 5 << 30
DEFAULT_RETENTION_S = 3600


class Engine:
    def __init__(self, path, map_size=DEFAULT_MAP_SIZE, max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES,
                 retention_s=DEFAULT_RETENTION_S, store_cls=None, profile_index=True):
        self.database = Database(path, map_size, store_cls)
        self.profile_index = profile_index      # keep each account's guids and identities in memory
        self.max_upload_bytes = max_upload_bytes
        self.retention_s = retention_s
        self.cache = BitmapCache()
        self._accounts = {}
        self._lock = threading.Lock()
        for name in self.account_names():
            ingest.recover(self.account(name))

    def close(self):
        with self._lock:
            accounts = list(self._accounts.values())
        for acct in accounts:
            acct.profiles.index.close()
        self.database.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def account_names(self):
        with self.database.read() as txn:
            return [ACCOUNT_NAME_KEY.parse(key)[0].decode()
                    for key, _ in Database.scan(txn, self.database.db.accounts, ACCOUNT_NAME_KEY.prefix())]

    def account(self, name=DEFAULT_ACCOUNT, create=True):
        """The account called name; created on first use when create is true."""
        with self._lock:
            acct = self._accounts.get(name)
            if acct is None:
                acct = self._accounts[name] = Account(self, name, self._account_number(name, create))
            return acct

    def _account_number(self, name, create):
        if not name or len(name.encode()) > 200:
            raise InvalidArgument("an account name is 1 to 200 bytes", field="account")
        key = ACCOUNT_NAME_KEY.pack(name.encode())
        with self.database.read() as txn:
            raw = txn.get(self.database.db.accounts, key)
        if raw is not None:
            return ACCOUNT.unpack(raw)
        if not create:
            raise NotFound(f"no account {name!r}", account=name)

        def run(txn):
            raw = txn.get(self.database.db.accounts, key)
            if raw is not None:
                return ACCOUNT.unpack(raw)
            counter = loads(txn.get(self.database.db.accounts, COUNTER_KEY.pack())) or {"next": 0}
            number = counter["next"]
            counter["next"] += 1
            txn.put(self.database.db.accounts, COUNTER_KEY.pack(), dumps(counter))
            txn.put(self.database.db.accounts, key, ACCOUNT.pack(number))
            txn.put(self.database.db.accounts, ACCOUNT_KEY.pack(account_prefix(number)),
                    dumps({"name": name, "created": time.time(), "next_uid": 0,
                           "next_segment": 1, "next_upload": 1}))
            return number
        return self.database.write(run)


class Account:
    """One tenant. Its keys all start with `prefix`, so it cannot read another account's data."""

    def __init__(self, engine, name, number):
        self.engine = engine
        self.database = engine.database
        self.name = name
        self.number = number
        self.prefix = account_prefix(number)
        self.profiles = Profiles(self.database, self)
        self.segments = Segments(self.database, self, self.profiles, engine.cache, engine.retention_s)

    def load_state(self, txn):
        return loads(txn.get(self.database.db.accounts, ACCOUNT_KEY.pack(self.prefix)))

    def save_state(self, txn, state):
        txn.put(self.database.db.accounts, ACCOUNT_KEY.pack(self.prefix), dumps(state))

    def allocate(self, txn, counter):
        """The next id from one of the account's counters (inside the caller's write txn)."""
        state = self.load_state(txn)
        value = state[counter]
        state[counter] = value + 1
        self.save_state(txn, state)
        return value

    def upload(self, mode, name=None, segment=None, **options):
        """Start an upload; see core.ingest.Upload."""
        return ingest.Upload(self, mode, name=name, segment=segment, **options)

    def get_upload(self, upload_id):
        return ingest.get_upload(self, upload_id)

    def upload_errors(self, upload_id, start=0, limit=1000):
        return ingest.upload_errors(self, upload_id, start, limit)
