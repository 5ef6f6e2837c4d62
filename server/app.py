"""Building and running the gRPC server: services, health, reflection, TLS, workers, SIGTERM drain."""
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from listseg.core.accounts import Credentials
from listseg.core.engine import DEFAULT_KEEP_VERSIONS, Engine
from listseg.core.keyindex import MAX_PROFILES
from listseg.server import front, introspection, metrics, servicers, uploads
from listseg.server.addresses import is_loopback, local_host, split_address
from listseg.server.decoding import MAX_TRANSPORT_MESSAGE, add_servicer
from listseg.server.logs import setup_logging
from listseg.server.stopping import StopSignals
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

log = logging.getLogger("listseg.server")

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("Segments", "Membership", "Profiles")]
LOOKUP_THREADS = 2               # threads for IsMember and CheckMembers; see on_pool
# After grpc has cancelled every call, how long stop() waits for the handlers still running (an upload
# setting up, a commit) before the engine may close: a handler inside LMDB once it is closed crashes
# the process.
HANDLERS_WAIT_S = 10.0


class Pool(futures.ThreadPoolExecutor):
    """A thread pool that knows when none of its tasks is queued or running."""

    def __init__(self, threads, name):
        super().__init__(threads, thread_name_prefix=name)
        self.name = name
        self.busy = 0
        self.changed = threading.Condition()

    def submit(self, fn, /, *args, **kwargs):
        with self.changed:
            self.busy += 1
        try:
            return super().submit(self._counted, fn, *args, **kwargs)
        except BaseException:
            self._done()
            raise

    def _counted(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            self._done()

    def _done(self):
        with self.changed:
            self.busy -= 1
            self.changed.notify_all()

    def wait_idle(self, timeout):
        """True once nothing runs or waits; False if something still does after timeout seconds."""
        with self.changed:
            return self.changed.wait_for(lambda: self.busy == 0, timeout)


def on_pool(servicer, names, pool):
    """Run the servicer's methods `names` on `pool` rather than the server's pool (grpc's per-method
    `experimental_thread_pool`). Short look-ups queue for a few threads instead of 32 threads
    contending for the GIL: IsMember on 2 threads served about twice the calls of 32 threads on
    2 cores (docs/performance.md)."""
    for name in names:
        method = getattr(servicer, name)
        handler = functools.partial(method)
        handler.experimental_thread_pool = pool
        setattr(servicer, name, handler)
    return servicer


class Server:
    """A running server: `port`, `stop(grace)`, and the pieces tests may want."""

    def __init__(self, engine, address="127.0.0.1:0", max_workers=32, tls=None, reuse_port=False,
                 webhooks=None, max_uploads=4, max_upload_bytes=None, mailer=None, lookup_threads=LOOKUP_THREADS,
                 with_metrics=False, resume_window=uploads.RESUME_WINDOW_S):
        self.engine = engine
        self.credentials = Credentials(engine)
        host, _ = split_address(address)
        if not self.credentials.required() and not is_loopback(host):
            raise PermissionError(
                f"no account exists, so the server runs without credentials and listens only on a loopback "
                f"address; create one with `listseg accounts create NAME` to listen on {host}")
        self.services = servicers.Services(engine, self.credentials, webhooks, max_uploads,
                                           max_upload_bytes or engine.max_upload_bytes, mailer, with_metrics,
                                           resume_window)
        self.sampler = None
        self.with_metrics = with_metrics          # count calls and uploads for server/metrics.py
        options = [("grpc.max_receive_message_length", MAX_TRANSPORT_MESSAGE),    # MAX_REQUEST: decoding.py
                   ("grpc.max_send_message_length", 64 << 20),
                   ("grpc.so_reuseport", 1 if reuse_port else 0)]
        self.pool = Pool(max_workers, "rpc")
        self.grpc = grpc.server(self.pool,
                                options=options, interceptors=[metrics.Interceptor()] if with_metrics else None)
        add_servicer(pb_grpc.add_SegmentsServicer_to_server, servicers.SegmentsServicer(self.services), self.grpc)
        self.lookups = Pool(lookup_threads, "lookup")
        add_servicer(pb_grpc.add_MembershipServicer_to_server,
                     on_pool(servicers.MembershipServicer(self.services), ("IsMember", "CheckMembers"), self.lookups),
                     self.grpc)
        add_servicer(pb_grpc.add_ProfilesServicer_to_server, servicers.ProfilesServicer(self.services), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        introspection.enable_reflection(SERVICE_NAMES + [health.SERVICE_NAME], self.grpc)
        self.grpc.add_generic_rpc_handlers((introspection.UnknownMethods(),))     # last: after every service
        if tls:
            cert, key = tls
            creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")

    def start(self):
        self.grpc.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.with_metrics:
            self.sampler = metrics.Sampler(self.engine)
        return self

    def _set_health(self, status):
        for name in ["", *SERVICE_NAMES]:
            self.health.set(name, status)

    def set_front_health(self, serving):
        """The membership front's state, under its own name (server/front.py HEALTH_NAME), so that a
        probe of this server sees the front down while it restarts."""
        self.health.set(front.HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop(self, grace=None):
        """Refuse new calls, let calls in flight (uploads) finish for up to `grace` seconds."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.stop(grace).wait()
        for pool in (self.pool, self.lookups):
            if not pool.wait_idle(HANDLERS_WAIT_S):
                log.warning("handlers still running after the stop", extra={"fields": {"pool": pool.name}})
        self.services.uploads.close()             # no stream can resume them now
        if self.sampler:
            self.sampler.stop()
        for pool in (self.pool, self.lookups):
            pool.shutdown(wait=False)
        self.services.webhooks.close()
        self.services.mailer.close()


def create_server(engine, address="127.0.0.1:0", **kwargs):
    """Start a server on address (port 0: any free port); returns (server, port)."""
    server = Server(engine, address, **kwargs).start()
    return server, server.port


def serve(data, listen, workers=1, grace=30.0, tls=None, http=None, mail=None, http_tls_ca=None,
          membership_listen=None, metrics_listen=None, **limits):
    """`listseg serve`: run until SIGTERM or SIGINT, then drain for `grace` seconds. `limits`:
    max_uploads (per account), max_upload_bytes, profile_index (False: no in-memory index),
    profile_index_max (no index for an account with more profiles),
    keep_versions and resume_window (seconds a broken upload stream may be resumed in).
    `http`: HOST:PORT to serve the web dashboard on, a client of this server's gRPC port (with TLS it
    trusts `http_tls_ca`, else the certificate itself). `membership_listen`: HOST:PORT for the native
    membership front (server/front.py), a client of this server's port the same way. `mail`: the
    SMTP settings of server.mail.Mailer, as a dict. `metrics_listen`: HOST:PORT for Prometheus
    metrics (server/metrics.py), the workers' counts added up."""
    setup_logging()
    if workers > 1 and split_address(listen)[1] == 0:
        raise ValueError("--workers > 1 needs a fixed port")
    folder = metrics.prepare(workers) if metrics_listen else None      # before the workers start
    helpers = Helpers(data, listen, tls, http_tls_ca, http, membership_listen, metrics_listen, folder)
    if metrics_listen:
        limits = dict(limits, with_metrics=True)
    try:
        if workers > 1:
            return _serve_workers(data, listen, workers, grace, tls, limits, helpers, mail)
        return _serve_one(data, listen, grace, tls, limits, reuse_port=False, helpers=helpers, mail=mail)
    finally:
        metrics.close(folder)


class Helpers:
    """What runs beside the gRPC server: the web dashboard and the native membership front (its
    clients), and the metrics endpoint. Started once the server listens; stopped before it drains."""

    def __init__(self, data, listen, tls, tls_ca, http, membership_listen, metrics_listen=None, metrics_folder=None):
        self.data, self.listen, self.tls, self.http, self.membership_listen = data, listen, tls, http, membership_listen
        self.metrics_listen, self.metrics_folder = metrics_listen, metrics_folder
        self.tls_ca = (tls_ca or tls[0]) if tls else None
        self.running = []

    def start(self, port, on_front=lambda serving: None):
        """`on_front(serving)` hears each time the membership front comes up or goes down."""
        backend = f"{local_host(self.listen)}:{port}"
        try:
            if self.metrics_listen:
                self.running.append(_MetricsEndpoint(self.metrics_listen, self.metrics_folder))
                on_front = _counting_restarts(on_front)
            if self.membership_listen:
                supervisor = front.Supervisor(self.membership_listen, backend, self.data, self.tls, self.tls_ca,
                                              on_front)
                self.running.append(supervisor)
                log.info("membership front serving", extra={"fields": {"listen": self.membership_listen,
                                                                       "port": supervisor.port,
                                                                       "pid": supervisor.front.proc.pid}})
            if self.http:
                from listseg.dashboard.server import Dashboard
                self.running.append(Dashboard(backend, self.http, tls_ca=self.tls_ca).start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        while self.running:
            self.running.pop().stop()


class _MetricsEndpoint:
    def __init__(self, listen, folder):
        self.http, port = metrics.serve_http(listen, folder)
        log.info("metrics serving", extra={"fields": {"listen": listen, "port": port}})

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


def _counting_restarts(on_front):
    """on_front, also setting the front's metrics: up or down, and a restart each time it comes up
    again."""
    started = []

    def changed(serving):
        metrics.front_changed(serving, restarts=int(serving and bool(started)))
        if serving:
            started.append(True)
        on_front(serving)
    return changed


def _serve_one(data, listen, grace, tls, limits, reuse_port, helpers=None, mail=None, front_up=None):
    """One server process. With `helpers` it runs them too; a worker instead mirrors `front_up`, the
    parent's view of the front (a shared flag), into its health service."""
    from listseg.server.mail import Mailer
    limits = dict(limits)
    engine = Engine(data, profile_index=limits.pop("profile_index", True),   # after the fork, in each worker
                    profile_index_max=limits.pop("profile_index_max", MAX_PROFILES),
                    keep_versions=limits.pop("keep_versions", DEFAULT_KEEP_VERSIONS))
    stop = StopSignals()                    # after the engine: a signal during an upgrade still ends it at once
    server = Server(engine, listen, tls=tls, reuse_port=reuse_port, mailer=Mailer(**mail) if mail else None,
                    **limits).start()
    store = engine.backend.lmdb_path and os.path.abspath(engine.backend.lmdb_path) or _without_password(data)
    log.info("serving", extra={"fields": {"listen": listen, "port": server.port, "store": store, "pid": os.getpid()}})
    try:
        if helpers:
            if helpers.membership_listen:
                server.set_front_health(False)
            helpers.start(server.port, on_front=server.set_front_health)
        if front_up is not None:
            threading.Thread(target=_mirror_front_health, args=(front_up, server), daemon=True).start()
    except BaseException:
        server.stop(0)
        engine.close()
        raise
    stop.wait()
    log.info("draining", extra={"fields": {"grace_s": grace}})
    if helpers:
        helpers.stop()
    server.stop(grace)
    engine.close()
    log.info("stopped")
    return 0


def _without_password(url):
    """A store URL fit for a log line."""
    head, at, tail = url.rpartition("@")
    return head.split("//", 1)[0] + "//***@" + tail if at else url


def _serve_workers(data, listen, workers, grace, tls, limits, helpers, mail=None):
    stop = StopSignals()
    ctx = multiprocessing.get_context("spawn")       # no gRPC or LMDB state crosses into a worker
    front_up = ctx.Value("b", 0) if helpers.membership_listen else None
    procs = [ctx.Process(target=_worker, args=(data, listen, grace, tls, limits, mail, front_up), daemon=False)
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        _wait_listening(listen, procs)
        helpers.start(split_address(listen)[1], on_front=lambda serving: setattr(front_up, "value", int(serving)))
    except BaseException:
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)
            p.join()
        raise
    signalled = stop.wait(unless=lambda: not all(p.is_alive() for p in procs))
    helpers.stop()
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join()
    return 0 if signalled else 1


def _wait_listening(listen, procs, timeout=60.0):
    """Until a worker accepts connections on listen (so its LMDB databases exist), or one dies."""
    host, port = local_host(listen).strip("[]"), split_address(listen)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.is_alive() for p in procs):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise OSError(f"no worker is listening on {listen}")


def _mirror_front_health(front_up, server, interval=0.1):
    """A worker's health for the front follows the parent's flag (the parent supervises the front)."""
    serving = None
    while True:
        if bool(front_up.value) != serving:
            serving = bool(front_up.value)
            server.set_front_health(serving)
        time.sleep(interval)


def _worker(data, listen, grace, tls, limits, mail=None, front_up=None):
    setup_logging()
    sys.exit(_serve_one(data, listen, grace, tls, limits, reuse_port=True, mail=mail, front_up=front_up))
