"""Account credentials: an id and a passcode, stored as a salted scrypt hash.

With no credentialed account the server runs in dev mode (one default account, loopback only); once
one exists, every call must name an account and its passcode.
"""
import hashlib
import hmac
import secrets
import threading

from listseg.core.errors import InvalidArgument, Unauthenticated
from listseg.core.layout import CREDENTIALS_KEY, FLAG
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}


def _hash(passcode, salt):
    return hashlib.scrypt(passcode.encode(), salt=salt, **_SCRYPT)


class Credentials:
    """Creates accounts with passcodes and checks them. Verified passcodes are remembered (as a
    digest) so that a hot RPC path pays for scrypt once, not per call."""

    def __init__(self, engine):
        self.engine = engine
        self.db = engine.database
        self._verified = {}
        self._lock = threading.Lock()

    def required(self):
        with self.db.read() as txn:
            return txn.get(self.db.db.accounts, CREDENTIALS_KEY.pack()) is not None

    def create(self, display_name):
        """A new account: returns (account id, passcode). The passcode is shown once, stored hashed."""
        if not display_name or not display_name.strip():
            raise InvalidArgument("an account needs a name", field="name")
        account_id = "acct-" + secrets.token_hex(6)
        passcode = secrets.token_urlsafe(24)
        acct = self.engine.account(account_id)
        salt = secrets.token_bytes(16)

        def run(txn):
            state = acct.load_state(txn)
            state.update(display_name=display_name.strip(), salt=salt.hex(), passcode=_hash(passcode, salt).hex())
            acct.save_state(txn, state)
            txn.put(self.db.db.accounts, CREDENTIALS_KEY.pack(), FLAG)
        self.db.write(run)
        return account_id, passcode

    def authenticate(self, account_id, passcode):
        """The Account if (account_id, passcode) is right; Unauthenticated otherwise."""
        if not account_id or not passcode:
            raise Unauthenticated()
        digest = hashlib.sha256(f"{account_id}\0{passcode}".encode()).digest()
        with self._lock:
            known = self._verified.get(account_id)
        if known is not None and hmac.compare_digest(known, digest):
            return self.engine.account(account_id, create=False)
        try:
            acct = self.engine.account(account_id, create=False)
        except Exception:
            _hash(passcode, b"0" * 16)           # same work either way: no hint which part was wrong
            raise Unauthenticated() from None
        with self.db.read() as txn:
            state = acct.load_state(txn) or {}
        stored = bytes.fromhex(state.get("passcode", ""))
        if not stored or not hmac.compare_digest(stored, _hash(passcode, bytes.fromhex(state["salt"]))):
            raise Unauthenticated()
        with self._lock:
            self._verified[account_id] = digest
        return acct

