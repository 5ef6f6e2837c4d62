"""Prometheus metrics of `listseg serve --metrics HOST:PORT` (prometheus_client).

What is counted, and where: every gRPC call by method and status code, with its latency (an
interceptor, `Interceptor`, not code in the servicers); every upload that ends, by mode and final
state, with its bytes and rows (the upload servicer calls `upload_ended`); the membership front's
state and restarts (server/front.py's supervisor); and, sampled every SAMPLE_S seconds by each
server process, the segments and versions of each account, the store's size and the profile
index's entries (`Sampler`).

With `--workers N` the counts of every process are added up: prometheus_client's multiprocess mode,
its files in a temporary folder named by PROMETHEUS_MULTIPROC_DIR, which must be set before
prometheus_client is first imported (`prepare`). So prometheus_client is imported here only, and
only inside functions.
"""
import functools
import os
import shutil
import tempfile
import threading
import time

import grpc

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"      # prometheus_client's own name for it
SAMPLE_S = 2.0
# latency buckets: IsMember answers in ~0.1 ms to a few ms; an upload of 5 GB takes minutes
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

_metrics = None
_lock = threading.Lock()


def prepare(workers):
    """Before anything imports prometheus_client: with several worker processes, a fresh folder for
    their shared counts (removed by `close`). Returns it, or None for one process."""
    if workers <= 1:
        return None
    folder = tempfile.mkdtemp(prefix="listseg-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def close(folder):
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def get():
    """The process's metrics, made on first use (prometheus_client registers each name once)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


class _Metrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram
        self.rpcs = Counter("listseg_rpcs", "gRPC calls ended, by method and status code", ["method", "code"])
        self.rpc_seconds = Histogram("listseg_rpc_seconds", "gRPC call latency, by method", ["method"],
                                     buckets=RPC_BUCKETS)
        self.uploads = Counter("listseg_uploads", "uploads ended, by mode and final state", ["mode", "state"])
        self.upload_bytes = Counter("listseg_upload_bytes", "bytes of the uploads that ended")
        self.upload_rows = Counter("listseg_upload_rows", "rows of the uploads that ended, by outcome",
                                   ["outcome"])
        self.upload_resumes = Counter("listseg_upload_resumes", "upload streams that resumed an upload whose stream broke")
        self.last_upload_rows_per_second = Gauge("listseg_last_upload_rows_per_second",
                                                 "rows a second of the last upload that succeeded",
                                                 multiprocess_mode="mostrecent")
        # sampled by each server process (the same store, so any one's latest value)
        self.segments = Gauge("listseg_segments", "segments, by account", ["account"], multiprocess_mode="mostrecent")
        self.versions = Gauge("listseg_versions", "versions made (history rows), by account", ["account"],
                              multiprocess_mode="mostrecent")
        self.store_bytes = Gauge("listseg_store_bytes", "the LMDB store's data file, its map size and the file's free pages",
                                 ["what"], multiprocess_mode="mostrecent")
        self.index_entries = Gauge("listseg_profile_index_entries",
                                   "guids and identities in the in-memory profile index, by account and kind",
                                   ["account", "kind"], multiprocess_mode="max")
        self.index_builds = Counter("listseg_profile_index_builds", "profile index builds finished, by account",
                                    ["account"])
        self.front_up = Gauge("listseg_front_up", "1 while the membership front serves, else 0",
                              multiprocess_mode="mostrecent")
        self.front_restarts = Counter("listseg_front_restarts", "restarts of the membership front")


def upload_ended(mode, rec):
    """An upload that ended: rec is its record (state, report)."""
    m = get()
    m.uploads.labels(mode, rec["state"]).inc()
    report = rec.get("report") or {}
    m.upload_bytes.inc(report.get("bytes", 0))
    for outcome in ("qualified", "unknown", "invalid", "duplicates"):
        m.upload_rows.labels(outcome).inc(report.get(outcome, 0))
    took = (rec.get("finished") or 0) - (rec.get("created") or 0)
    if rec["state"] == "succeeded" and took > 0:
        m.last_upload_rows_per_second.set(report.get("rows", 0) / took)


def upload_resumed():
    get().upload_resumes.inc()


def front_changed(serving, restarts):
    m = get()
    m.front_up.set(int(serving))
    if restarts:
        m.front_restarts.inc(restarts)


class Interceptor(grpc.ServerInterceptor):
    """Counts and times every call by method ("Service/Method") and status code."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit(".", 1)[-1]          # "/listseg.v1.Segments/UploadList" -> "Segments/UploadList"
        kind = ("stream" if handler.request_streaming else "unary") + "_" + \
               ("stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        wrap = _streamed if handler.response_streaming else _answered
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(wrap(behavior, method), request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def _record(method, context, started, failed):
    code = context.code()
    name = code.name if code is not None else ("UNKNOWN" if failed else "OK")
    m = get()
    m.rpcs.labels(method, name).inc()
    m.rpc_seconds.labels(method).observe(time.perf_counter() - started)


def _answered(behavior, method):
    @functools.wraps(behavior)     # keeps experimental_thread_pool (server/app.py on_pool)
    def call(request, context):
        started, failed = time.perf_counter(), True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            _record(method, context, started, failed)
    return call


def _streamed(behavior, method):
    @functools.wraps(behavior)
    def call(request, context):
        started, failed = time.perf_counter(), True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            _record(method, context, started, failed)
    return call


class Sampler:
    """A thread that sets the sampled gauges every SAMPLE_S seconds from the engine."""

    def __init__(self, engine):
        self.engine = engine
        self._builds = {}            # account -> index builds already counted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:        # noqa: BLE001 - a store failing now is seen in the calls' codes
                pass
            self._stop.wait(SAMPLE_S)

    def sample(self):
        m = get()
        for name, stats in self.engine.stats().items():
            m.segments.labels(name).set(stats["segments"])
            m.versions.labels(name).set(stats["versions"])
            for kind in ("guids", "identities"):
                m.index_entries.labels(name, kind).set(stats["index"][kind])
            builds = stats["index"]["builds"]
            if builds > self._builds.get(name, 0):
                m.index_builds.labels(name).inc(builds - self._builds.get(name, 0))
                self._builds[name] = builds
        for what, size in self.engine.backend.usage().items():
            m.store_bytes.labels(what).set(size)

    def stop(self):
        self._stop.set()
        self._thread.join()


def serve_http(listen, folder):
    """The /metrics endpoint on listen (HOST:PORT); with workers, their counts added up. Returns
    (the HTTP server, its port)."""
    from prometheus_client import CollectorRegistry, REGISTRY, start_http_server
    from prometheus_client import multiprocess

    from listseg.server.addresses import split_address
    host, port = split_address(listen)
    registry = REGISTRY
    if folder:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    server, thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    return server, server.server_port
