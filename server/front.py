"""The native membership front (server/native/membership_front.cc) as a child of `listseg serve`.

It serves the Membership service on its own address: IsMember in native code, from the server's
store read directly (its LMDB files, or its Redis Cluster), everything else relayed to this server.
Campaign engines that make one look-up per call point at it; the server itself is unchanged. `Supervisor` keeps it running: campaign engines call it on
every event, so an exit is logged, reported through the server's health and followed by a restart.
"""
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from urllib.parse import unquote, urlsplit

from listseg.core.backend import is_redis
from listseg.core.redis_client import seeds
from listseg.server.addresses import is_loopback, split_address

BINARY = os.environ.get("LISTSEG_FRONT") or os.path.join(os.path.dirname(__file__), "native", "listseg-front")
READY_TIMEOUT = 30.0
STOP_TIMEOUT_S = 15.0             # SIGTERM to exit: it drains for 2 s; the rest is for a loaded machine
HEALTH_NAME = "listseg.front"     # the server's health service reports the front under this name
FIRST_BACKOFF_S = 0.1             # restart delays double from this...
MAX_BACKOFF_S = 10.0              # ...up to this,
STEADY_S = 30.0                   # and start again from the first once a front has run this long
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP}

log = logging.getLogger("listseg.server")


class FrontError(OSError):
    """The front's binary is missing or did not start. Deliberately not a core ListsegError: it is
    never a call's answer, so it has no reason or status. It is a failure of `listseg serve`'s
    environment, as a port in use is, and goes where those go: the CLI prints it and exits 2 (it
    catches OSError), and the supervisor logs a failed restart and tries again."""


def describe_exit(returncode):
    """Log fields for a process's exit status: {"exit_code": N} or {"signal": "SIGSEGV"}."""
    if returncode >= 0:
        return {"exit_code": returncode}
    try:
        return {"signal": signal.Signals(-returncode).name}
    except ValueError:                                   # a real-time signal has no name
        return {"signal": f"signal {-returncode}"}


def crashed(returncode):
    """Whether an exit status is a crash (a signal a process raises on itself when it fails)."""
    return returncode < 0 and -returncode in CRASH_SIGNALS


def store_arguments(store):
    """(the front's flags, what it reads on stdin) for the server's store: a directory, or a Redis
    URL (its user and password go on stdin, out of sight of `ps` and /proc). FrontError for a store
    the front cannot read."""
    if not is_redis(store):
        return ["--data", os.path.abspath(store)], b""
    parts = urlsplit(store)
    if parts.scheme in ("rediss", "redis-clusters"):
        raise FrontError("the membership front cannot reach a Redis store over TLS (Debian's hiredis 0.14 has "
                         "no TLS): serve without --membership-listen, and the servers answer IsMember")
    if parts.scheme == "redis" and parts.path.strip("/") not in ("", "0"):
        raise FrontError("the membership front reads Redis database 0 only, not " + parts.path.strip("/"))
    flags = ["--redis" if parts.scheme == "redis" else "--redis-cluster",
             ",".join(f"{host}:{port}" for host, port in seeds(store))]
    if not parts.password:
        return flags, b""
    return flags + ["--redis-auth-stdin"], f"{unquote(parts.username or '')}\n{unquote(parts.password)}\n".encode()


class Front:
    """A running front process: `port`, `proc`, `stop()`. `backend` is this server's HOST:PORT as a
    client dials it; `store` the server's (a directory or a Redis URL); with TLS, `tls` is (cert,
    key) and `backend_ca` what the front trusts for it."""

    def __init__(self, listen, backend, store, tls=None, backend_ca=None):
        if not os.access(BINARY, os.X_OK):
            raise FrontError(f"the membership front is not built ({BINARY}); run `make install`")
        flags, secrets = store_arguments(store)
        args = [BINARY, "--listen", listen, "--backend", backend, *flags]
        if is_loopback(split_address(listen)[0]):
            args.append("--listen-is-loopback")
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1], "--backend-ca", backend_ca or tls[0]]
        # stderr is the server's: the front's own errors land in the same log
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        try:
            self.proc.stdin.write(secrets)
        except BrokenPipeError:                          # a front that died at once: _wait_ready says so
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self.started = time.monotonic()
        self.port = self._wait_ready()

    def _wait_ready(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        try:
            return json.loads(line)["port"]
        except (ValueError, KeyError, TypeError):
            self.stop()                  # no process left holding the port
            raise FrontError(f"the membership front did not start (exit code {self.proc.returncode}, "
                             f"said {line[:200]!r})") from None

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, then SIGKILL if it lingers; returns the exit status. A front that crashed on the
        way out or had to be killed is logged as such (the suite fails on either)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                log.error("membership front did not stop; killed", extra={"fields": {"pid": self.proc.pid}})
        self.proc.stdout.close()
        if crashed(self.proc.returncode):
            log.error("membership front crashed", extra={"fields": {"pid": self.proc.pid,
                                                                    **describe_exit(self.proc.returncode)}})
        return self.proc.returncode


class Supervisor:
    """Runs a Front and restarts it whenever it exits, with growing delays; `on_change(serving)` hears
    each start and exit (the server's health). Restarts keep the port the first start bound."""

    def __init__(self, listen, backend, store, tls=None, backend_ca=None, on_change=lambda serving: None):
        self.args = (backend, store, tls, backend_ca)
        self.on_change = on_change
        self.front = Front(listen, *self.args)           # a first start that fails is the caller's error
        self.listen = f"{split_address(listen)[0]}:{self.front.port}"
        self.restarts = 0
        self._lock = threading.Lock()                    # orders replacing self.front against stop()
        self._stopping = threading.Event()
        on_change(True)
        self._thread = threading.Thread(target=self._watch, name="front-supervisor", daemon=True)
        self._thread.start()

    @property
    def port(self):
        return self.front.port

    def _watch(self):
        delay = FIRST_BACKOFF_S
        while not self._stopping.is_set():
            try:
                delay = self._outlive(delay)
            except Exception:            # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("membership front supervisor error")
                self.on_change(False)
                self._stopping.wait(delay)

    def _outlive(self, delay):
        """Wait for the front to exit; log it and restart it. Returns the next restart's delay."""
        proc = self.front.proc
        returncode = proc.wait()
        if self._stopping.is_set():
            return delay
        proc.stdout.close()
        ran = time.monotonic() - self.front.started
        self.on_change(False)
        log.error("membership front crashed" if crashed(returncode) else "membership front exited",
                  extra={"fields": {"pid": proc.pid, **describe_exit(returncode), "ran_s": round(ran, 3)}})
        if ran >= STEADY_S:
            delay = FIRST_BACKOFF_S
        while not self._restart(delay):
            delay = min(delay * 2, MAX_BACKOFF_S)
        return min(delay * 2, MAX_BACKOFF_S)

    def _restart(self, delay):
        """After `delay` seconds, a new front in place of the dead one; False if it did not start
        (True too once stopping). The start runs outside the lock, so stop() never waits for it."""
        log.warning("restarting the membership front", extra={"fields": {"in_s": delay, "restarts": self.restarts}})
        if self._stopping.wait(delay):
            return True
        try:
            new = Front(self.listen, *self.args)
        except (FrontError, OSError, ValueError) as exc:
            log.error("membership front did not restart", extra={"fields": {"error": str(exc)}})
            return self._stopping.is_set()
        with self._lock:
            if self._stopping.is_set():
                new.stop()
                return True
            self.front = new
            self.restarts += 1
        log.info("membership front restarted", extra={"fields": {"pid": new.proc.pid, "port": new.port,
                                                                 "restarts": self.restarts}})
        self.on_change(True)
        return True

    def stop(self, timeout=STOP_TIMEOUT_S):
        with self._lock:
            self._stopping.set()
            self.front.stop(timeout)
        self._thread.join(timeout)
        self.on_change(False)
