"""The suite's fixtures, built on tests/harness.py (the one place that starts and stops engines and
servers)."""
import logging
import os
import shutil
import time

import pytest

import harness
from harness import FRONT_FAILURES
from listseg.core import _parser_py, _store_py
from listseg.core.layout import CHANNELS

TWIN_ONLY = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))
# under LISTSEG_NO_EXTENSIONS "lmdb" is the twin binding already
BACKENDS = [b for b in harness.BACKENDS if not (TWIN_ONLY and b == "lmdb-twin")]


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


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 6-node Redis Cluster (tests/cluster.py) for the whole session; skipped only where
    redis-server is not installed (`make test` installs it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    import cluster
    c = cluster.start()
    yield c
    c.stop()
    shutil.rmtree(c.folder, ignore_errors=True)


def flush(cluster_):
    """An empty cluster for the next test: every primary flushed."""
    from redis.cluster import RedisCluster
    client = RedisCluster.from_url(cluster_.url.replace("redis-cluster://", "redis://").split(",")[0])
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()


def pytest_generate_tests(metafunc):
    """`backend` takes each of BACKENDS, or of the test module's own BACKENDS list when it has one."""
    if "backend" in metafunc.fixturenames:
        names = getattr(metafunc.module, "BACKENDS", BACKENDS)
        metafunc.parametrize("backend", [n for n in names if n in BACKENDS], indirect=True)


@pytest.fixture
def backend(request):
    """What harness.open_engine opens (harness.BACKENDS): "lmdb", "lmdb-twin", or the URL of the
    session's Redis Cluster, emptied for this test. A test that takes `engine` or `account` runs once
    per backend, the engine's conformance suite. Server tests run on the default backend; one that
    takes `backend` too gets its servers (`serve`, `server`) on each."""
    if request.param != "redis-cluster":
        return request.param
    c = request.getfixturevalue("redis_cluster")
    flush(c)
    return c.url


@pytest.fixture
def engine(tmp_path, backend):
    with harness.open_engine(tmp_path / "data", backend=backend) as e:
        yield e


@pytest.fixture
def account(engine):
    return engine.account()


def people(n, start=0):
    """n profiles: guid g<k>, identity id<k> for odd k, channels by k."""
    chans = [["email"], ["sms", "push"], [], ["email", "whatsapp", "webpush"]]
    return [(f"g{k}", f"id{k}" if k % 2 else None, chans[k % 4]) for k in range(start, start + n)]


def channels_of(account):
    """{channel: FrozenBitMap of its reachable uids} of the account, from one snapshot."""
    with account.backend.snapshot() as snap:
        return {name: snap.channel(account.number, name) for name in CHANNELS}


def upload(account, data, mode="create", chunk=None, **kw):
    up = account.upload(mode, **kw)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        up.feed(data[i:i + step])
    return up.finish()


class _FrontFailures(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.seen = []

    def emit(self, record):
        if record.getMessage() in FRONT_FAILURES:
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True)
def front_never_crashes(request):
    """Fails a test in whose process a membership front crashed or hung (see harness.stop_server for
    the fronts of `listseg serve` processes). Mark a test `front_crash_expected` to crash one on purpose."""
    handler = _FrontFailures()
    logger = logging.getLogger("listseg.server")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if not request.node.get_closest_marker("front_crash_expected"):
        assert not handler.seen, f"a membership front failed: {handler.seen}"


def pytest_configure(config):
    config.addinivalue_line("markers", "front_crash_expected: the test crashes a membership front on purpose")


@pytest.fixture
def serve(tmp_path, request):
    """serve(data=None, engine=None, **kw): an in-process server (harness.InProcess; kw: map_size and
    create_server's) over engine, or a new engine at data (by default a new directory in tmp_path);
    all stopped after the test."""
    made = []
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else None

    def start(data=None, engine=None, **kw):
        if engine is None:
            kw.setdefault("backend", backend)
            if data is None:            # tmp_path/"data", then data1, data2...: one directory each
                data = tmp_path / (f"data{len(made)}" if made else "data")
        made.append(harness.InProcess(data, engine, **kw))
        return made[-1]
    yield start
    for server in made:
        server.stop()


@pytest.fixture
def server(serve):
    """An in-process server over an empty engine at tmp_path/"data"."""
    return serve()


@pytest.fixture
def serve_process():
    """serve_process(data, *args): a real `listseg serve` (harness.start_server), (process, target);
    stopped after the test by harness.stop_server, which fails the test if a front crashed."""
    made = []

    def start(data, *args, **kw):
        made.append(harness.start_server(data, *args, **kw))
        return made[-1]
    yield start
    for proc, _ in made:
        harness.stop_server(proc)


# for tests that send a signal to one thread of a process (harness.signal_a_worker_thread)
needs_tgkill = pytest.mark.skipif(harness.TGKILL is None, reason="tgkill's number is known for x86_64 and aarch64 only")


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
