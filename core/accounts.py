"""Account credentials: an id and a passcode, stored as a salted scrypt hash.

With no credentialed account the server runs in dev mode (one default account, loopback only); once
one exists, every call must name an account and its passcode.
"""
import hashlib
import hmac
import secrets
import threading
import time
import weakref

from listseg.core.errors import InvalidArgument, Unauthenticated
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}
RECHECK_S = 1.0
_REQUIRED = weakref.WeakKeyDictionary()     # engine -> [credentials required, when read]: per engine


def _hash(passcode, salt):
    return hashlib.scrypt(passcode.encode(), salt=salt, **_SCRYPT)


class Credentials:
    """Creates accounts with passcodes and checks them. Verified passcodes are remembered (as a
    digest) so that a hot RPC path pays for scrypt once, not per call."""

    def __init__(self, engine):
        self.engine = engine
        self.backend = engine.backend
        self._verified = {}
        self._lock = threading.Lock()

    def required(self):
        """Whether calls must authenticate. Asked on every call, so kept: once true it stays true (no
        call removes the last passcode); false is read again at most every RECHECK_S, the time another
        server sharing the store may keep answering in dev mode after an account gets a passcode."""
        known = _REQUIRED.setdefault(self.engine, [False, -RECHECK_S])     # [required, when read]
        if known[0] or time.monotonic() < known[1] + RECHECK_S:
            return known[0]
        with self.backend.snapshot() as snap:
            known[0] = snap.credentials_required()
        known[1] = time.monotonic()
        return known[0]

    def create(self, display_name):
        """A new account: returns (account id, passcode). The passcode is shown once, stored hashed."""
        if not display_name or not display_name.strip():
            raise InvalidArgument("an account needs a name", field="name")
        account_id = "acct-" + secrets.token_hex(6)
        passcode = secrets.token_urlsafe(24)
        acct = self.engine.account(account_id)
        salt = secrets.token_bytes(16)

        digest = _hash(passcode, salt).hex()

        def run(unit):
            state = unit.account_state(acct.number)
            state.update(display_name=display_name.strip(), salt=salt.hex(), passcode=digest)
            unit.put_account_state(acct.number, state)
            unit.require_credentials()
        self.backend.write(run)
        _REQUIRED[self.engine] = [True, time.monotonic()]
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
        state = acct.state() or {}
        stored = bytes.fromhex(state.get("passcode", ""))
        if not stored or not hmac.compare_digest(stored, _hash(passcode, bytes.fromhex(state["salt"]))):
            raise Unauthenticated()
        with self._lock:
            self._verified[account_id] = digest
        return acct

