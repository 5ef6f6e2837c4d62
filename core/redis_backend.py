"""The Redis Cluster backend (also one plain Redis node, for development), with the keys of
core/layout.py's Redis section and the records of its backend-neutral half.

What it gives of core/backend.py's guarantees, and how:
- A metadata unit (accounts, segments, uploads, heads, history, manifests) is all or nothing: its
  reads go to Redis, its writes are buffered, and one Lua script on the account's slot applies them
  only if the account's `mver` has not moved since the unit first read the account (else `fn` runs
  again). Every unit that writes moves mver, so a unit that commits saw no write after its reads.
- A snapshot is not one view of every key: each call reads what is there. A read of a segment's
  members still comes from one version: a version is a manifest plus containers that never change.
- Versions are staged first (their containers, under a fresh token no other version uses), then a
  unit publishes the manifest and flips the head against the expected head, atomically.
- Profile writes (upsert, delete) are not one unit: they hold the account's profile lock, move the
  profiles generation to odd while they write and to even after, and write records, then maps, then
  channel containers. A crash can leave part of a batch; a record without a map entry is never read.
- Durability is Redis's own: replication is asynchronous, so an acknowledged write can be lost in a
  failover (issue 12 adds WAIT and the manifest check after a failover).
"""
import json
import re
import time
import uuid
from array import array
from contextlib import contextmanager
from urllib.parse import urlsplit

from pyroaring import BitMap, FrozenBitMap

from listseg.core.backend import Backend, Snapshot, Unit
from listseg.core.errors import HeadMoved, InvalidProfile, StorageUnavailable, StoreError
from listseg.core.layout import (CHANNELS, DELETED, FLAG, REDIS_BLOCK_BITS, REDIS_BUCKETS, REDIS_DIRECTORY_COUNTER,
                                 REDIS_DIRECTORY_CREDENTIALS, REDIS_DIRECTORY_NAMES, UNKNOWN, channel_names,
                                 decode_profile, decode_uid, dumps, encode_profile, encode_uid, loads,
                                 redis_account_key, redis_block_key, redis_bucket_key, redis_bucket_keys)

COUNTERS = ("next_uid", "next_segment", "next_upload")
FAILOVER_S = 20                 # how long a write keeps trying through a failover before STORAGE_UNAVAILABLE
WAIT_MS = 5_000                 # how long a write waits for its replicas (WAIT)
UNIT_TRIES = 100                # a unit that keeps meeting other units' writes gives up (StoreError)
LOCK_TTL_MS = 600_000           # a profile write's lock lasts at most this long if its writer dies
GET_CHUNK = 10_000              # fields asked in one HMGET

# Applies a unit's buffered writes to one account's slot if its mver is still the one the unit saw.
# KEYS[1] is the account's meta hash; ARGV[1] the expected mver, ARGV[2] the unit's token (the same
# unit sent again, after its answer was lost, is told it applied), then ops: "s" key field value
# (HSET), "d" key field (HDEL), "x" key (DEL), keys given as indexes into KEYS.
COMMIT = """
if (redis.call('HGET', KEYS[1], 'mver') or '0') ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'unit') == ARGV[2] then return 1 end
  return 0
end
local i = 3
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 's' then redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'd' then redis.call('HDEL', key, ARGV[i + 2]); i = i + 3
  else redis.call('DEL', key); i = i + 2 end
end
redis.call('HINCRBY', KEYS[1], 'mver', 1)
redis.call('HSET', KEYS[1], 'unit', ARGV[2])
return 1
"""
UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
GONE = object()                 # a buffered delete


def _value(fields, ends, i):
    return bytes(fields[ends[i - 1] if i else 0:ends[i]])


def _block(uid):
    return uid >> REDIS_BLOCK_BITS


def _retry(failover_s):
    """Commands retried through a failover: a primary's replica takes over within a few seconds
    (cluster-node-timeout plus an election), so back off up to 1 s, for about failover_s in all."""
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=max(1, int(failover_s)))


def options(url):
    """(url without listseg's own query options, {option: value}): failover_s (how long a call keeps
    trying through a failover, default FAILOVER_S) and replicas (how many replicas each write must
    reach: 1 on a cluster, 0 on one node)."""
    parts = urlsplit(url)
    ours = {"failover_s": float, "replicas": int}
    found, rest = {}, []
    for pair in filter(None, parts.query.split("&")):
        name, _, value = pair.partition("=")
        if name in ours:
            found[name] = ours[name](value)
        else:
            rest.append(pair)
    return parts._replace(query="&".join(rest)).geturl(), found


def connect(url, failover_s=FAILOVER_S):
    """A redis-py client for redis-cluster://host:port,host:port... or redis://host:port[/db]
    (rediss:// and redis-clusters:// for TLS; a password as redis://:PASSWORD@host:port)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss"):
        return redis.Redis.from_url(url, retry=_retry(failover_s), retry_on_error=[redis.ConnectionError])
    nodes = []
    for seed in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = seed.rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
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


def _patiently(client, failover_s, attempt):
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
    (_patiently). Reads go through it; writes go through RedisBackend.durable."""

    def __init__(self, client, failover_s):
        self.raw, self.failover_s = client, failover_s

    def pipeline(self, transaction=False):
        return _PatientPipeline(self)

    def __getattr__(self, name):
        command = getattr(self.raw, name)
        return lambda *args, **kw: _patiently(self.raw, self.failover_s, lambda: command(*args, **kw))


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
        return _patiently(self.patient.raw, self.patient.failover_s, attempt) if self.calls else []


class RedisSnapshot(Snapshot):
    def __init__(self, backend):
        self.b = backend
        self.r = backend.r

    # -- raw reads (a unit overlays its own writes on these) -------------------------------------------
    def _hget(self, key, field):
        return self.r.hget(key, field)

    def _hgetall(self, key):
        return self.r.hgetall(key)

    def _get(self, key):
        return self.r.get(key)

    def _meta(self, acct):
        return self._hgetall(redis_account_key(acct))

    # -- the account directory ------------------------------------------------------------------
    def account_names(self):
        return sorted(name.decode() for name in self.r.hkeys(REDIS_DIRECTORY_NAMES))

    def account_number(self, name):
        raw = self.r.hget(REDIS_DIRECTORY_NAMES, name.encode())
        return int(raw) if raw is not None else None

    def account_state(self, acct):
        meta = self._meta(acct)
        if not meta.get(b"state"):
            return None
        state = loads(meta[b"state"])
        state.update({c: int(meta.get(c.encode(), 0)) for c in COUNTERS})
        return state

    def credentials_required(self):
        return self._get(REDIS_DIRECTORY_CREDENTIALS) is not None

    # -- profiles --------------------------------------------------------------------------------
    def generation(self, acct):
        return int(self.r.hget(redis_account_key(acct), b"generation") or 0)

    def _buckets(self, acct):
        return self.b.buckets(acct)

    def resolve(self, acct, kinds, fields, ends, nvals=1, col=0):
        n = len(ends) // nvals
        kinds = bytes(kinds)
        buckets = self._buckets(acct)
        groups = {}
        for r in range(n):
            key = _value(fields, ends, nvals * r + col)
            if key:
                groups.setdefault(redis_bucket_key(acct, b"i" if kinds[r] == 105 else b"g", key, buckets),
                                  []).append((r, key))
        out = array("I", [UNKNOWN]) * n
        items = list(groups.items())
        pipe = self.r.pipeline(transaction=False)
        for bucket, rows in items:
            pipe.hmget(bucket, [key for _, key in rows])
        for (_, rows), answers in zip(items, pipe.execute()):
            for (r, _), raw in zip(rows, answers):
                if raw is not None:
                    out[r] = decode_uid(raw)
        return out.tobytes()

    def _records(self, acct, uids):
        """{uid: raw profile record} of the uids that have one."""
        by_block = {}
        for uid in uids:
            by_block.setdefault(_block(uid), []).append(uid)
        pipe = self.r.pipeline(transaction=False)
        asked = []
        for block, members in by_block.items():
            for i in range(0, len(members), GET_CHUNK):
                part = members[i:i + GET_CHUNK]
                pipe.hmget(redis_block_key(acct, block, b"p"), [str(u).encode() for u in part])
                asked.append(part)
        found = {}
        for part, answers in zip(asked, pipe.execute() if asked else []):
            for uid, raw in zip(part, answers):
                if raw is not None:
                    found[uid] = raw
        return found

    def member_keys(self, acct, uids, identities=False):
        uids = list(uids)
        recs = self._records(acct, uids)
        keys, found = bytearray(), array("I")
        for uid in uids:
            raw = recs.get(uid)
            if raw is None:
                continue
            _, guid, ident = decode_profile(raw)
            key = ident if identities else guid
            if identities and not key:
                continue
            keys += key + b"\n"
            found.append(uid)
        return bytes(keys), found.tobytes()

    def profiles(self, acct, uids):
        uids = list(uids)
        recs = self._records(acct, uids)
        return [decode_profile(recs[u]) if u in recs else None for u in uids]

    def all_keys(self, acct):
        out = []
        for kind in (b"g", b"i"):
            pipe = self.r.pipeline(transaction=False)
            for bucket in redis_bucket_keys(acct, kind, self._buckets(acct)):
                pipe.hgetall(bucket)
            keys, uids = bytearray(), array("I")
            for fields in pipe.execute():
                for key, raw in fields.items():
                    keys += key + b"\n"
                    uids.append(decode_uid(raw))
            out.append((bytes(keys), uids.tobytes()))
        return tuple(out)

    def _blocks(self, acct):
        """Every uid block the account has used."""
        next_uid = int(self.r.hget(redis_account_key(acct), b"next_uid") or 0)
        return range(_block(next_uid - 1) + 1) if next_uid else range(0)

    def channel(self, acct, name):
        keys = [redis_block_key(acct, block, b"c:" + name.encode()) for block in self._blocks(acct)]
        return FrozenBitMap(_union(raw for raw in self.b.get_many(keys) if raw))

    def deleted(self, acct):
        return self.channel(acct, DELETED)

    # -- segments, versions, uploads ----------------------------------------------------------------
    def segment_id(self, acct, name):
        raw = self._hget(redis_account_key(acct, b"names"), name.encode())
        return int(raw) if raw is not None else None

    def segment(self, acct, seg_id):
        return loads(self._hget(redis_account_key(acct, b"seg"), str(seg_id).encode()))

    def segments(self, acct):
        recs = self._hgetall(redis_account_key(acct, b"seg"))
        return [loads(recs[k]) for k in sorted(recs, key=int)]

    def head(self, acct, seg_id):
        raw = self._hget(redis_account_key(acct, b"heads"), str(seg_id).encode())
        return int(raw) if raw is not None else 0

    def _manifest(self, acct, seg_id, version):
        return loads(self._hget(redis_account_key(acct, b"m:%d" % seg_id), str(version).encode()))

    def version(self, acct, seg_id, version):
        manifest = self._manifest(acct, seg_id, version)
        if manifest is None:
            return None
        parts = self.b.get_many(_containers(acct, manifest))
        if any(raw is None for raw in parts):
            return None                  # a container lost (expired, or in a failover): not this version
        return FrozenBitMap(_union(parts))

    def history(self, acct, seg_id):
        rows = self._hgetall(redis_account_key(acct, b"hist:%d" % seg_id))
        return sorted((int(v), loads(raw)) for v, raw in rows.items())

    def upload(self, acct, upload_id):
        return loads(self._hget(redis_account_key(acct, b"up"), str(upload_id).encode()))

    def uploads(self, acct):
        recs = self._hgetall(redis_account_key(acct, b"up"))
        return [loads(recs[k]) for k in sorted(recs, key=int)]

    def rejects(self, acct, upload_id, start, limit):
        rows = self.r.lrange(redis_account_key(acct, b"rej:%d" % upload_id), start, start + limit - 1)
        return [tuple(json.loads(row)) for row in rows]


class RedisUnit(RedisSnapshot, Unit):
    """Buffered writes to one account's metadata slot (and the directory), applied by COMMIT."""

    def __init__(self, backend):
        super().__init__(backend)
        self.acct = None             # the one account whose metadata this unit reads or writes
        self.mver = None
        self.hashes = {}             # key -> {field: value or GONE}
        self.dropped = set()         # keys deleted whole (before any of their fields written again)
        self.directory = []          # (key, value) SETs of the directory, applied first
        self.after = []              # keys to delete once the unit has committed (expired containers)

    def _watch(self, key):
        """Note the account of a metadata key; the first time, read its mver (before any of its data)."""
        acct = int(key[3:key.index(b"}")])
        if self.acct is None:
            self.acct = acct
            self.mver = self.r.hget(redis_account_key(acct), b"mver") or b"0"
        elif acct != self.acct:
            raise StoreError("a unit may change only one account")

    def _hget(self, key, field):
        self._watch(key)
        fields = self.hashes.get(key, {})
        if field in fields:
            value = fields[field]
            return None if value is GONE else value
        return None if key in self.dropped else self.r.hget(key, field)

    def _hgetall(self, key):
        self._watch(key)
        out = {} if key in self.dropped else dict(self.r.hgetall(key))
        for field, value in self.hashes.get(key, {}).items():
            if value is GONE:
                out.pop(field, None)
            else:
                out[field] = value
        return out

    def _hset(self, key, field, value):
        self._watch(key)
        self.hashes.setdefault(key, {})[field] = value

    def _hdel(self, key, field):
        self._watch(key)
        self.hashes.setdefault(key, {})[field] = GONE

    def _drop(self, key):
        self._watch(key)
        self.dropped.add(key)
        self.hashes.pop(key, None)

    def commit(self):
        """True if applied (or nothing to apply); False if another unit wrote the account meanwhile."""
        if self.directory:
            self.b.durable([(key, "set", key, value) for key, value in self.directory])
        if self.acct is None or not (self.hashes or self.dropped):
            return True
        keys = [redis_account_key(self.acct)]
        index = {keys[0]: 1}

        def at(key):
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            return index[key]
        args = [self.mver, uuid.uuid4().hex]
        for key in self.dropped:
            args += [b"x", at(key)]
        for key, fields in self.hashes.items():
            for field, value in fields.items():
                args += [b"d", at(key), field] if value is GONE else [b"s", at(key), field, value]
        if not self.b.durable([(keys[0], "eval", COMMIT, len(keys), *keys, *args)])[0]:
            return False
        if self.after:
            self.b.durable([(key, "delete", key) for key in self.after])
        return True

    # -- writes ----------------------------------------------------------------------------------
    def create_account(self, name, state):
        counter = REDIS_DIRECTORY_COUNTER
        number = self.b.durable([(counter, "incr", counter)])[0] - 1
        meta = {b"state": dumps({k: v for k, v in state.items() if k not in COUNTERS}),
                b"buckets": REDIS_BUCKETS, b"generation": 0, b"mver": 0}
        meta.update({c.encode(): state[c] for c in COUNTERS})
        key = redis_account_key(number)
        self.b.durable([(key, "hset", key, None, None, meta)])         # nobody knows the number yet
        names = REDIS_DIRECTORY_NAMES
        if not self.b.durable([(names, "hsetnx", names, name.encode(), number)])[0]:
            raise _Conflict()                # another process named it first: read its number again
        return number

    def put_account_state(self, acct, state):
        key = redis_account_key(acct)
        self._hset(key, b"state", dumps({k: v for k, v in state.items() if k not in COUNTERS}))
        for c in COUNTERS[1:]:          # next_uid moves only with profile writes (HINCRBY)
            if c in state:
                self._hset(key, c.encode(), str(state[c]).encode())

    def allocate(self, acct, counter):
        key = redis_account_key(acct)
        value = int(self._hget(key, counter.encode()) or 0)
        self._hset(key, counter.encode(), str(value + 1).encode())
        return value

    def require_credentials(self):
        self.directory.append((REDIS_DIRECTORY_CREDENTIALS, FLAG))

    def upsert_profiles(self, acct, fields, ends, bits_of):
        with self.b.profile_lock(acct):
            return _upsert(self, acct, fields, ends, bits_of)

    def delete_profiles(self, acct, guids):
        with self.b.profile_lock(acct):
            return _delete(self, acct, guids)

    def put_segment(self, acct, rec):
        self._hset(redis_account_key(acct, b"seg"), str(rec["id"]).encode(), dumps(rec))

    def claim_name(self, acct, name, seg_id):
        self._hset(redis_account_key(acct, b"names"), name.encode(), str(seg_id).encode())

    def drop_segment(self, acct, seg_id, name):
        manifests = self._hgetall(redis_account_key(acct, b"m:%d" % seg_id))
        for raw in manifests.values():
            self.after += _containers(acct, loads(raw))
        self._drop(redis_account_key(acct, b"m:%d" % seg_id))
        self._drop(redis_account_key(acct, b"hist:%d" % seg_id))
        self._hdel(redis_account_key(acct, b"heads"), str(seg_id).encode())
        self._hdel(redis_account_key(acct, b"seg"), str(seg_id).encode())
        self._hdel(redis_account_key(acct, b"names"), name.encode())

    def put_upload(self, acct, rec):
        self._hset(redis_account_key(acct, b"up"), str(rec["id"]).encode(), dumps(rec))

    def put_rejects(self, acct, upload_id, rows):
        # written at once (only this upload writes them; a unit run again writes the same rows)
        key = redis_account_key(acct, b"rej:%d" % upload_id)
        self.b.durable([(key, "delete", key)] + [(key, "rpush", key, *(json.dumps(row) for row in rows[i:i + GET_CHUNK]))
                                                 for i in range(0, len(rows), GET_CHUNK)])

    def publish(self, acct, seg_id, expected_head, staged, now, retention_s):
        head = self.head(acct, seg_id)
        if head != expected_head:
            raise HeadMoved(f"segment {seg_id} is at version {head}, not {expected_head}",
                            segment=seg_id, version=head)
        version = head + 1
        self._hset(redis_account_key(acct, b"m:%d" % seg_id), str(version).encode(), dumps(staged))
        self._hset(redis_account_key(acct, b"hist:%d" % seg_id), str(version).encode(),
                   dumps({"time": now, "size": staged["size"]}))
        self._hset(redis_account_key(acct, b"heads"), str(seg_id).encode(), str(version).encode())
        superseded_at = {v - 1: rec["time"] for v, rec in self.history(acct, seg_id)}
        manifests = self._hgetall(redis_account_key(acct, b"m:%d" % seg_id))
        for raw_version, raw in manifests.items():
            v = int(raw_version)
            if v != version and now - superseded_at.get(v, now) > retention_s:
                self._hdel(redis_account_key(acct, b"m:%d" % seg_id), raw_version)
                self.after += _containers(acct, loads(raw))
        return version


class _Conflict(Exception):
    """A unit met another's write: run it again."""


def _union(raws):
    bm = BitMap()
    for raw in raws:
        bm |= BitMap.deserialize(raw)
    return bm


def _containers(acct, manifest):
    token = manifest["token"].encode()
    return [redis_block_key(acct, block, b"v:" + token) for block in manifest["blocks"]]


# -- profile writes ------------------------------------------------------------------------------------
def _upsert(unit, acct, fields, ends, bits_of):
    """core/backend.py Unit.upsert_profiles, row by row in Python over prefetched state."""
    n = len(ends) // 3
    rows, skipped, memo = [], [], {}
    for k in range(n):
        chans = _value(fields, ends, 3 * k + 2)
        if chans not in memo:
            try:
                memo[chans] = bits_of(chans)
            except InvalidProfile as e:
                memo[chans] = e
        bits = memo[chans]
        if isinstance(bits, InvalidProfile):
            skipped.append((k, str(bits)))
        else:
            rows.append((_value(fields, ends, 3 * k), _value(fields, ends, 3 * k + 1), bits))
    guid_uids = array("I", unit.resolve(acct, b"g" * n, fields, ends, 3, 0))
    ident_uids = array("I", unit.resolve(acct, b"i" * n, fields, ends, 3, 1))
    bad = {k for k, _ in skipped}
    good = [k for k in range(n) if k not in bad]
    stored_g = {rows[j][0]: guid_uids[k] for j, k in enumerate(good) if guid_uids[k] != UNKNOWN}
    stored_i = {rows[j][1]: ident_uids[k] for j, k in enumerate(good) if ident_uids[k] != UNKNOWN and rows[j][1]}
    fresh = list(dict.fromkeys(g for g, _, _ in rows if g not in stored_g))
    meta = redis_account_key(acct)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])       # odd: a profile write is under way
    base = unit.b.durable([(meta, "hincrby", meta, b"next_uid", len(fresh))])[0] - len(fresh) if fresh else 0
    new_uid = {g: base + i for i, g in enumerate(fresh)}
    recs = {uid: decode_profile(raw) for uid, raw in
            unit._records(acct, set(stored_g.values()) | set(stored_i.values())).items()}
    before = {}
    gmap, imap = {}, {}              # what the batch writes: guid -> uid, identity -> uid or None (gone)
    for g, i, bits in rows:
        uid = gmap.get(g, stored_g.get(g, new_uid.get(g)))
        old = recs.get(uid)
        old_bits, _, old_ident = old if old else (0, g, b"")
        before.setdefault(uid, old_bits)
        if i != old_ident:
            if old_ident:
                imap[old_ident] = None
            if i:
                holder = imap[i] if i in imap else stored_i.get(i)
                if holder is not None and holder != uid:
                    if holder in recs:
                        hb, hg, _ = recs[holder]
                        recs[holder] = (hb, hg, b"")
                imap[i] = uid
        recs[uid] = (bits, g, i)
        gmap[g] = uid
    buckets = unit.b.buckets(acct)
    records = []                                           # records first, then the maps that lead to them
    for uid, (bits, g, i) in recs.items():
        key = redis_block_key(acct, _block(uid), b"p")
        records.append((key, "hset", key, str(uid).encode(), encode_profile(bits, g, i)))
    unit.b.durable(records)
    maps = []
    for g, uid in gmap.items():
        if stored_g.get(g) != uid:
            key = redis_bucket_key(acct, b"g", g, buckets)
            maps.append((key, "hset", key, g, encode_uid(uid)))
    for i, uid in imap.items():
        key = redis_bucket_key(acct, b"i", i, buckets)
        maps.append((key, "hdel", key, i) if uid is None else (key, "hset", key, i, encode_uid(uid)))
    unit.b.durable(maps)
    adds, drops = {}, {}
    for uid, old_bits in before.items():
        bits = recs[uid][0]
        for k, name in enumerate(CHANNELS):
            bit = 1 << k
            if bits & bit and not old_bits & bit:
                adds.setdefault(name, []).append(uid)
            elif old_bits & bit and not bits & bit:
                drops.setdefault(name, []).append(uid)
    _update_channels(unit.b, acct, adds, drops)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])       # even: done
    return n - len(skipped), skipped


def _delete(unit, acct, guids):
    guids = list(dict.fromkeys(guids))
    if not guids:
        return 0
    fields = b"".join(guids)
    ends, at = array("Q"), 0
    for g in guids:
        at += len(g)
        ends.append(at)
    uids = [u for u in array("I", unit.resolve(acct, b"g" * len(guids), fields, ends)) if u != UNKNOWN]
    if not uids:
        return 0
    meta = redis_account_key(acct)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])
    recs = unit._records(acct, uids)
    buckets = unit.b.buckets(acct)
    drops, gone = {}, []
    uids = [u for u in uids if u in recs]              # a map entry whose record a crash never wrote
    for uid in uids:
        bits, g, i = decode_profile(recs[uid])
        for kind, key in ((b"g", g), (b"i", i)):
            if key:
                bucket = redis_bucket_key(acct, kind, key, buckets)
                gone.append((bucket, "hdel", bucket, key))
        for name in channel_names(bits):
            drops.setdefault(name, []).append(uid)
    unit.b.durable(gone)                               # the maps first: then nothing leads to the records
    unit.b.durable([(key, "hdel", key, str(uid).encode())
                    for uid in uids for key in [redis_block_key(acct, _block(uid), b"p")]])
    _update_channels(unit.b, acct, {DELETED: uids}, drops)
    unit.b.durable([(meta, "hincrby", meta, b"generation", 1)])
    return len(uids)


def _update_channels(backend, acct, adds, drops):
    """Read-modify-write the touched blocks' containers (under the account's profile lock)."""
    touched = {}
    for change, changes in ((0, adds), (1, drops)):
        for name, uids in changes.items():
            for uid in uids:
                touched.setdefault((name, _block(uid)), ([], []))[change].append(uid)
    if not touched:
        return
    items = list(touched.items())
    keys = [redis_block_key(acct, block, b"c:" + name.encode()) for (name, block), _ in items]
    writes = []
    for key, raw, (_, (add, drop)) in zip(keys, backend.get_many(keys), items):
        bm = BitMap.deserialize(raw) if raw else BitMap()
        bm.update(add)
        bm -= BitMap(drop)
        writes.append((key, "set", key, bm.serialize()))
    backend.durable(writes)


class RedisBackend(Backend):
    """url: redis-cluster://HOST:PORT,... (seed nodes) or redis://HOST:PORT (one node)."""

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
        self._unlock = self.raw.register_script(UNLOCK)
        self._buckets = {}

    atomic_bulk_writes = False      # a profile batch is not one unit (see the module docstring)

    def durable(self, ops):
        """Run write ops [(routing key, command, *args)] and return their results in order, once
        every node written has passed them to `replicas` replicas (WAIT on the connection that wrote,
        so nothing acknowledged lives on one node only). Tried again through a failover for up to
        failover_s (each op is idempotent, or, as HINCRBY of next_uid, harmless twice: a gap)."""
        if not ops:
            return []
        return _patiently(self.raw, self.failover_s, lambda: self._durable_once(ops))

    def _durable_once(self, ops):
        if not self.cluster:
            pipe = self.raw.pipeline(transaction=False)
            for _, command, *args in ops:
                getattr(pipe, command)(*args)
            return pipe.execute()
        by_node = {}
        for i, (key, command, *args) in enumerate(ops):
            node = self.raw.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append((i, command, args))
        out = [None] * len(ops)
        for node, items in by_node.values():
            pipe = self.raw.get_redis_connection(node).pipeline(transaction=False)
            for _, command, args in items:
                getattr(pipe, command)(*args)
            pipe.execute_command("WAIT", self.replicas, WAIT_MS)
            results = pipe.execute()
            if results[-1] < self.replicas:
                raise StorageUnavailable(f"{node.name} passed a write to {results[-1]} of {self.replicas} "
                                         f"replicas within {WAIT_MS} ms")
            for (i, _, _), result in zip(items, results):
                out[i] = result
        return out

    @contextmanager
    def _errors(self):
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

    def buckets(self, acct):
        n = self._buckets.get(acct)
        if n is None:
            n = self._buckets[acct] = int(self.r.hget(redis_account_key(acct), b"buckets") or REDIS_BUCKETS)
        return n

    @contextmanager
    def snapshot(self):
        with self._errors():
            yield RedisSnapshot(self)

    def write(self, fn):
        with self._errors():
            for _ in range(UNIT_TRIES):
                unit = RedisUnit(self)
                try:
                    result = fn(unit)
                except _Conflict:
                    continue
                if unit.commit():
                    return result
        raise StoreError(f"a unit met other writers' changes {UNIT_TRIES} times in a row")

    def stage(self, acct, bm):
        bm.run_optimize()
        token = uuid.uuid4().hex
        blocks, writes = [], []
        if bm:
            for block in range(_block(bm.min()), _block(bm.max()) + 1):
                lo = block << REDIS_BLOCK_BITS
                part = bm & BitMap(range(lo, lo + (1 << REDIS_BLOCK_BITS)))
                if part:
                    part.run_optimize()
                    blocks.append(block)
                    key = redis_block_key(acct, block, b"v:" + token.encode())
                    writes.append((key, "set", key, part.serialize()))
        with self._errors():
            self.durable(writes)
        return {"token": token, "blocks": blocks, "size": len(bm)}

    @contextmanager
    def profile_lock(self, acct):
        key, token = redis_account_key(acct, b"plock"), uuid.uuid4().hex
        delay = 0.001
        # a SET tried again after its answer was lost finds the lock taken: by us, then
        while not self.r.set(key, token, nx=True, px=LOCK_TTL_MS) and self.r.get(key) != token.encode():
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            _patiently(self.raw, self.failover_s, lambda: self._unlock(keys=[key], args=[token]))

    def close(self):
        self.raw.close()
