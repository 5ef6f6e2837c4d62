import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from listseg.core import _parser_py, _store_py
from listseg.core.engine import Engine

TWIN_ONLY = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))


def _scanners():
    out = [pytest.param(_parser_py.Scanner, id="twin")]
    if not TWIN_ONLY:
        from listseg.core._parser import Scanner
        out.insert(0, pytest.param(Scanner, id="compiled"))
    return out


def _stores():
    out = [pytest.param(_store_py.Store, id="twin")]
    if not TWIN_ONLY:
        from listseg.core._store import Store
        out.insert(0, pytest.param(Store, id="compiled"))
    return out


@pytest.fixture(params=_scanners())
def scanner(request):
    return request.param


@pytest.fixture(params=_stores())
def store_cls(request):
    return request.param


@pytest.fixture
def engine(tmp_path, store_cls):
    with Engine(str(tmp_path / "data"), map_size=1 << 30, store_cls=store_cls) as e:
        yield e


@pytest.fixture
def account(engine):
    return engine.account()


def people(n, start=0):
    """n profiles: guid g<k>, identity id<k> for odd k, channels by k."""
    chans = [["email"], ["sms", "push"], [], ["email", "whatsapp", "webpush"]]
    return [(f"g{k}", f"id{k}" if k % 2 else None, chans[k % 4]) for k in range(start, start + n)]


def upload(account, data, mode="create", chunk=None, **kw):
    up = account.upload(mode, **kw)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        up.feed(data[i:i + step])
    return up.finish()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# What server/front.py logs when a membership front ends by a crash signal or has to be killed.
# No test may cause either: the front is what campaign engines call on every event.
FRONT_FAILURES = ("membership front crashed", "membership front did not stop; killed")


class _FrontFailures(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.seen = []

    def emit(self, record):
        if record.getMessage() in FRONT_FAILURES:
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True)
def front_never_crashes(request):
    """Fails a test in whose process a membership front crashed or hung (see stop_server for the
    fronts of `listseg serve` processes). Mark a test `front_crash_expected` to crash one on purpose."""
    handler = _FrontFailures()
    logger = logging.getLogger("listseg.server")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if not request.node.get_closest_marker("front_crash_expected"):
        assert not handler.seen, f"a membership front failed: {handler.seen}"


def pytest_configure(config):
    config.addinivalue_line("markers", "front_crash_expected: the test crashes a membership front on purpose")


def start_server(data, *args, port=None):
    """`listseg serve` as a real process on a free loopback port; returns (process, target) once
    healthy. Its log goes to a file; `proc.stderr` reads it from the start."""
    port = port or free_port()
    log = tempfile.NamedTemporaryFile(prefix="listseg-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "listseg.clients.cli", "serve", "--data", data,
                             "--listen", f"127.0.0.1:{port}", *args], stderr=log)
    log.close()
    proc.stderr = open(log.name, "rb")
    os.unlink(log.name)                 # the open handles keep it until both ends close
    try:
        wait_healthy(f"127.0.0.1:{port}")
    except BaseException:
        proc.kill()
        raise
    return proc, f"127.0.0.1:{port}"


def stop_server(proc, timeout=30):
    """SIGTERM a server started by start_server (it drains and exits), SIGKILL it if it lingers.
    Fails if its log says a membership front crashed or had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        with open(f"/proc/self/fd/{proc.stderr.fileno()}", "rb") as log:
            failures = [line for line in log if any(f'"msg": "{m}"'.encode() in line for m in FRONT_FAILURES)]
        assert not failures, f"a membership front failed: {failures}"


def wait_until(condition, timeout=30):
    """Poll condition() until it is true; fail the test after timeout seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def upload_state(client, upload_id):
    """The upload's state over the wire, or None while the server has no such upload."""
    from listseg import CallError
    try:
        return client.get_upload(upload_id).state
    except CallError:
        return None
