"""Serving the dashboard: waitress (a production WSGI server in pure Python) on a thread.

    dash = Dashboard("127.0.0.1:50051", "127.0.0.1:8080").start()    # gRPC target, HTTP address
    print(dash.url); ...; dash.stop()

`listseg serve --http HOST:PORT` runs one beside the gRPC server; `listseg dashboard` runs one alone.
"""
import logging
import threading
import time

import waitress
from waitress import wasyncore

from listseg.clients.client import CallError
from listseg.dashboard import web
from listseg.dashboard.views.auth import dev_mode
from listseg.server.addresses import is_loopback, split_address
from listseg.server.logs import setup_logging
from listseg.server.stopping import StopSignals

log = logging.getLogger("listseg.dashboard")

MAX_BODY = 256 << 20       # waitress refuses bigger request bodies outright; the app's limit is 50 MB


class Dashboard:
    def __init__(self, target, address="127.0.0.1:8080", tls_ca=None, threads=8, **app_options):
        self.target = target
        host, self.requested_port = split_address(address, "the dashboard's address")
        self.host = host.strip("[]")
        if is_loopback(self.host):
            app_options.setdefault("allowed_hosts", web.LOOPBACK_NAMES + (self.host,))
        self.app = web.create_app(target, tls_ca=tls_ca, **app_options)
        self.threads = threads
        self.server = self.thread = None
        self.port = None

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self):
        if not is_loopback(self.host):
            self._require_accounts()
        self.server = waitress.create_server(
            self.app, host=self.host, port=self.requested_port, threads=self.threads, ident="listseg",
            max_request_body_size=MAX_BODY, clear_untrusted_proxy_headers=True, channel_timeout=120)
        self.port = self.server.effective_port
        if not logging.getLogger("waitress").handlers:      # its warnings in our log format
            logging.getLogger("waitress").handlers[:] = logging.getLogger("listseg").handlers
        self._stopping, self._lock, self._closed = threading.Event(), threading.Lock(), False
        self.thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self.thread.start()
        log.info("dashboard", extra={"fields": {"url": self.url, "server": self.target}})
        return self

    def _require_accounts(self):
        """Off loopback only with accounts: in dev mode anyone who reaches the page is the default account."""
        state = self.app.extensions["listseg"]
        deadline = time.monotonic() + 15
        while True:
            try:
                dev = dev_mode(state.anonymous)
                break
            except CallError:                            # the gRPC server is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if dev:
            raise PermissionError(
                f"no account exists, so the dashboard needs no sign-in and listens only on a loopback "
                f"address; create one with `listseg accounts create NAME` to listen on {self.host}")
        log.warning("the dashboard serves plain HTTP: passcodes cross the network in clear; put it behind "
                    "a TLS proxy", extra={"fields": {"host": self.host}})

    def _run(self):
        """waitress's loop, stopped from inside (closing its sockets from another thread races select)."""
        server = self.server
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.5, map=server._map, count=1, use_poll=server.adj.asyncore_use_poll)
        with self._lock:
            self._closed = True
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(server._map)

    def stop(self):
        if self.server is not None:
            with self._lock:                     # wake the loop, unless it has closed its trigger already
                self._stopping.set()
                if not self._closed:
                    self.server.trigger.pull_trigger()
            self.thread.join(10)
            self.server = None
        self.app.extensions["listseg"].close()


def run(target, address, tls_ca=None):
    """`listseg dashboard`: serve until SIGTERM or SIGINT."""
    setup_logging()
    stop = StopSignals()
    dash = Dashboard(target, address, tls_ca=tls_ca).start()
    stop.wait()
    dash.stop()
    return 0
