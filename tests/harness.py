"""The one test base: an engine, an in-process server, a real `listseg serve` process, and how each
stops. tests/conftest.py builds its fixtures on it; benchmarks/bench.py imports it too (it runs from
a checkout beside tests/), so it needs no pytest. It stays out of the listseg package: nothing here
is for a user, and the package's root is the repo's root (setup.py: package_dir ".")."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

LOOPBACK = "127.0.0.1"
MAP_SIZE = 1 << 30

# What server/front.py logs when a membership front ends by a crash signal or has to be killed.
# No test may cause either: the front is what campaign engines call on every event.
FRONT_FAILURES = ("membership front crashed", "membership front did not stop; killed")


def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


#: The backends the engine suite runs on (tests/conftest.py `backend`), by name: "lmdb" is the embedded
#: store with the engine's own binding (compiled unless LISTSEG_NO_EXTENSIONS), "lmdb-twin" the same
#: files through the pure-Python binding, "redis-cluster" a real local cluster (tests/cluster.py).
BACKENDS = ("lmdb", "lmdb-twin", "redis-cluster")
DEFAULT_BACKEND = "lmdb"


def open_engine(path, map_size=MAP_SIZE, backend=None, **kw):
    """An engine over `backend`: None (the default), "lmdb" or "lmdb-twin" at directory path, or a
    Redis URL (redis-cluster://..., which path is not used for). The seam where a test picks one."""
    from listseg.core.engine import Engine      # here: the benchmark's processes load no engine
    if backend in (None, DEFAULT_BACKEND):
        return Engine(str(path), map_size=map_size, **kw)
    if backend == "lmdb-twin":
        from listseg.core._store_py import Store
        return Engine(str(path), map_size=map_size, store_cls=Store, **kw)
    if "://" in backend:
        return Engine(backend, **kw)
    raise ValueError(f"no backend {backend!r}; expected one of {BACKENDS} or a Redis URL")


class InProcess:
    """listseg.server.app.create_server in this process, on a free loopback port, over `engine`
    (or a new one at `data`). stop() stops the server, then closes the engine."""

    def __init__(self, data=None, engine=None, address=f"{LOOPBACK}:0", map_size=MAP_SIZE, backend=None,
                 **server_kw):
        from listseg.server.app import create_server
        self.engine = engine if engine is not None else open_engine(data, map_size, backend)
        try:
            self.server, self.port = create_server(self.engine, address, **server_kw)
        except BaseException:
            self.engine.close()
            raise
        self.target = f"{LOOPBACK}:{self.port}"

    def stop(self):
        self.server.stop(0)
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_healthy(target, timeout=30):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"no healthy server at {target}")


def start_server(data, *args, port=None):
    """`listseg serve` as a real process on a free loopback port; returns (process, target) once
    healthy. Its log goes to a file; `proc.stderr` reads it from the start."""
    port = port or free_port()
    log = tempfile.NamedTemporaryFile(prefix="listseg-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "listseg.clients.cli", "serve", "--data", str(data),
                             "--listen", f"{LOOPBACK}:{port}", *args], stderr=log)
    log.close()
    proc.stderr = open(log.name, "rb")
    os.unlink(log.name)                 # the open handles keep it until both ends close
    try:
        wait_healthy(f"{LOOPBACK}:{port}")
    except BaseException:
        proc.kill()
        raise
    return proc, f"{LOOPBACK}:{port}"


# tgkill(2): a signal to one thread of another process (os.kill lets the kernel pick the thread)
TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


def signal_a_worker_thread(pid, sig):
    """Send sig to a thread of process pid other than its main thread, as the kernel may when it
    delivers a process's signal to whichever thread runs."""
    import ctypes
    tid = next(int(t) for t in sorted(os.listdir(f"/proc/{pid}/task")) if int(t) != pid)
    if ctypes.CDLL(None, use_errno=True).syscall(TGKILL, pid, tid, int(sig)) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig})")


def front_failures(log):
    """The lines of a `listseg serve` JSON log (a binary file object) that say a front crashed or
    had to be killed."""
    return [line for line in log if any(f'"msg": "{m}"'.encode() in line for m in FRONT_FAILURES)]


def stop_server(proc, timeout=30, extra_pids=()):
    """SIGTERM a process we started (a server drains and exits), SIGKILL it if it lingers, and any of
    extra_pids (processes it started) still alive. Fails if the log of a server started by
    start_server says a membership front crashed or had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in extra_pids:
        if pid != proc.pid and os.path.exists(f"/proc/{pid}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.stderr is not None:
        with open(f"/proc/self/fd/{proc.stderr.fileno()}", "rb") as log:
            failures = front_failures(log)
        assert not failures, f"a membership front failed: {failures}"


def front_pids(listen):
    """pids of the membership fronts (server/native/listseg-front) whose command line names listen
    (HOST:PORT)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"listseg-front" in cmdline and listen.encode() in cmdline:
            pids.append(int(pid))
    return pids
