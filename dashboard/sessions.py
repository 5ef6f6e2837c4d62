"""Server-side sessions for the dashboard: a random token in an HttpOnly, SameSite=Strict cookie; the
account id, passcode and CSRF token stay in this process and never reach the browser."""
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

IDLE_S = 8 * 3600            # a session unused this long is forgotten
CAPACITY = 10_000            # sessions kept at most; the least recently used goes first


@dataclass
class Session:
    token: str
    csrf: str
    account: str | None = None          # None: anonymous (the no-account dev mode, or not signed in)
    client: object = None               # a listseg.Client with this session's credentials
    seen: float = field(default_factory=time.monotonic)

    def check_csrf(self, token):
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, idle_s=IDLE_S, capacity=CAPACITY, clock=time.monotonic):
        self.idle_s, self.capacity, self.clock = idle_s, capacity, clock
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token):
        """The live session for a cookie's token, or None."""
        if not token:
            return None
        with self._lock:
            sess = self._items.get(token)
            if sess is None:
                return None
            if self.clock() - sess.seen > self.idle_s:
                self._drop_locked(token)
                return None
            sess.seen = self.clock()
            self._items.move_to_end(token)
            return sess

    def new(self, account=None, client=None):
        sess = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), account, client, self.clock())
        with self._lock:
            self._items[sess.token] = sess
            while len(self._items) > self.capacity:
                self._drop_locked(next(iter(self._items)))
        return sess

    def drop(self, token):
        with self._lock:
            self._drop_locked(token)

    def _drop_locked(self, token):
        sess = self._items.pop(token, None)
        if sess is not None and sess.client is not None:
            sess.client.close()

    def close(self):
        with self._lock:
            for token in list(self._items):
                self._drop_locked(token)
