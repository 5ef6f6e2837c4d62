"""The Redis store's connection: the client for a store URL, reads that wait through a failover,
and writes acknowledged only once a replica has them (core/redis_backend.py builds on it)."""
import re
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from listseg.core.errors import InvalidArgument, StorageUnavailable, StoreError
from listseg.core.layout import REDIS_BUCKETS

FAILOVER_S = 20                 # how long a call keeps trying through a failover before STORAGE_UNAVAILABLE
WAIT_MS = 5_000                 # how long a write waits for its replicas (WAIT)


def _retry(failover_s):
    """Commands retried through a failover: a primary's replica takes over within a few seconds
    (cluster-node-timeout plus an election), so back off up to 1 s, for about failover_s in all."""
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=max(1, int(failover_s)))


def options(url):
    """(url without listseg's own query options, {option: value}): failover_s (how long a call keeps
    trying through a failover, default FAILOVER_S), replicas (how many replicas each write must
    reach: 1 on a cluster, 0 on one node) and buckets (how many buckets each identity map of an
    account made from now on gets: about profiles / 256, so they stay small hashes)."""
    parts = urlsplit(url)
    ours = {"failover_s": float, "replicas": int, "buckets": int}
    found, rest = {}, []
    for pair in filter(None, parts.query.split("&")):
        name, _, value = pair.partition("=")
        if name in ours:
            found[name] = ours[name](value)
        else:
            rest.append(pair)
    return parts._replace(query="&".join(rest)).geturl(), found


def seeds(url):
    """[(host, port)] of a store URL's nodes (one for redis://): host:port pairs after any password."""
    out = []
    for seed in urlsplit(url).netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = seed.rpartition(":")
        out.append((host or "127.0.0.1", int(port or 6379)))
    return out


def connect(url, failover_s=FAILOVER_S):
    """A redis-py client for redis-cluster://host:port,host:port... or redis://host:port[/db]
    (rediss:// and redis-clusters:// for TLS; a password as redis://:PASSWORD@host:port)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss"):
        return redis.Redis.from_url(url, retry=_retry(failover_s), retry_on_error=[redis.ConnectionError])
    nodes = [ClusterNode(host, port) for host, port in seeds(url)]
    return RedisCluster(startup_nodes=nodes, password=parts.password, ssl=scheme == "redis-clusters",
                        require_full_coverage=True, retry=_retry(failover_s))


# What a store in a failover answers for a while: a connection refused or reset, the cluster down,
# a slot moving, a primary refusing writes while it has no replica (NOREPLICAS) or while it loads.
TRANSIENT = ("NOREPLICAS", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MOVED", "ASK")
# as an error's first word, or after "caused error: " in a pipeline's
TRANSIENT_RE = re.compile(r"(?:^|error: )(?:%s)\b" % "|".join(TRANSIENT))


def _transient(exc):
    import redis
    from redis.exceptions import ClusterError, RedisClusterException
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException)) or (
        isinstance(exc, redis.ResponseError) and TRANSIENT_RE.search(str(exc)) is not None)


def patiently(client, failover_s, attempt):
    """attempt(), tried again through a failover for up to failover_s: redis-py retries a cluster
    command at once, without waiting, so a failover (seconds) outlasts its retries."""
    deadline = time.monotonic() + failover_s
    while True:
        try:
            return attempt()
        except Exception as e:              # noqa: BLE001 - transient ones are tried again, the rest raised
            if not _transient(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.25)
            manager = getattr(client, "nodes_manager", None)
            if manager is not None:
                try:
                    manager.initialize()    # learn who the primaries are now
                except Exception:           # noqa: BLE001 - still failing over: the next attempt says
                    pass


class Patient:
    """A redis-py client whose commands and pipelines are tried again through a failover
    (patiently). Reads go through it; writes go through RedisBackend.durable."""

    def __init__(self, client, failover_s):
        self.raw, self.failover_s = client, failover_s

    def pipeline(self, transaction=False):
        return _PatientPipeline(self)

    def __getattr__(self, name):
        command = getattr(self.raw, name)
        return lambda *args, **kw: patiently(self.raw, self.failover_s, lambda: command(*args, **kw))


class _PatientPipeline:
    """Collects the commands, then runs them in a fresh pipeline each try (reads only: idempotent)."""

    def __init__(self, patient):
        self.patient, self.calls = patient, []

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw))

    def __len__(self):
        return len(self.calls)

    def execute(self):
        def attempt():
            pipe = self.patient.raw.pipeline(transaction=False)
            for name, args, kw in self.calls:
                getattr(pipe, name)(*args, **kw)
            return pipe.execute()
        return patiently(self.patient.raw, self.patient.failover_s, attempt) if self.calls else []


class Connection:
    """A store URL's client: `r` for reads (Patient), `durable` for writes, `errors` for what the
    engine is told when Redis fails."""

    def __init__(self, url):
        from redis.cluster import RedisCluster
        self.url = url
        url, opts = options(url)
        self.failover_s = opts.get("failover_s", FAILOVER_S)
        self.raw = connect(url, self.failover_s)
        self.r = Patient(self.raw, self.failover_s)
        self.cluster = isinstance(self.raw, RedisCluster)
        #: replicas each write must reach before it is acknowledged: 1 on a cluster, none on one node
        self.replicas = opts.get("replicas", int(self.cluster))
        self.new_buckets = opts.get("buckets", REDIS_BUCKETS)
        if not 1 <= self.new_buckets <= 1 << 24:
            raise InvalidArgument(f"buckets={self.new_buckets}: 1 to {1 << 24}", field="store")

    def durable(self, ops):
        """Run write ops [(routing key, command, *args)] and return their results in order, once
        every node written has passed them to `replicas` replicas (WAIT on the connection that wrote,
        so nothing acknowledged lives on one node only). Tried again through a failover for up to
        failover_s (each op is idempotent, or, as HINCRBY of next_uid, harmless twice: a gap)."""
        if not ops:
            return []
        return patiently(self.raw, self.failover_s, lambda: self._durable_once(ops))

    def _durable_once(self, ops):
        if not self.cluster:
            return self._on_one_connection(self.raw, "the Redis node", ops)
        by_node = {}
        for i, (key, command, *args) in enumerate(ops):
            node = self.raw.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append((i, command, args))
        out = [None] * len(ops)
        for node, items in by_node.values():
            results = self._on_one_connection(self.raw.get_redis_connection(node), node.name,
                                              [(None, command, *args) for _, command, args in items])
            for (i, _, _), result in zip(items, results):
                out[i] = result
        return out

    def _on_one_connection(self, client, name, ops):
        """ops in one pipeline of client (one connection), then WAIT for `replicas` replicas there."""
        pipe = client.pipeline(transaction=False)
        for _, command, *args in ops:
            getattr(pipe, command)(*args)
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, WAIT_MS)
        results = pipe.execute()
        if self.replicas and results[-1] < self.replicas:
            raise StorageUnavailable(f"{name} passed a write to {results[-1]} of {self.replicas} "
                                     f"replicas within {WAIT_MS} ms")
        return results[:len(ops)]

    @contextmanager
    def errors(self):
        """Redis failures as the engine's errors: STORAGE_UNAVAILABLE when it may pass, else STORAGE_ERROR."""
        import redis
        from redis.exceptions import RedisClusterException
        try:
            yield
        except (redis.RedisError, RedisClusterException) as e:
            if _transient(e):
                raise StorageUnavailable(f"the Redis store is unavailable: {e}") from e
            raise StoreError(f"the Redis store failed: {e}") from e

    def get_many(self, keys):
        """GET of each key, pipelined (grouped by node on a cluster)."""
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()

    def close(self):
        self.raw.close()
