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
- Durability: Redis replicates asynchronously; every write here is acknowledged only once a replica
  has it (`durable`: WAIT on the connection that wrote), and writes and reads wait through a
  failover for up to failover_s. docs/design.md says what loss window is left.
"""
import json
import time
import uuid
from array import array
from contextlib import contextmanager

from pyroaring import BitMap, FrozenBitMap

from listseg.core import redis_profiles
from listseg.core.backend import Backend, Snapshot, Unit
from listseg.core.errors import HeadMoved, StoreError
from listseg.core.redis_client import Connection, patiently
from listseg.core.layout import (DELETED, FLAG, REDIS_BLOCK_BITS, REDIS_BUCKETS, REDIS_BUCKETS_FIELD, REDIS_DIRECTORY_COUNTER,
                                 REDIS_DIRECTORY_CREDENTIALS, REDIS_DIRECTORY_NAMES, REDIS_LOCATE, REDIS_VERSION_CONTAINER,
                                 REDIS_LOCATE_KEYS, UNKNOWN, decode_profile,
                                 decode_uid, dumps, frame_keys, loads, redis_account_key, redis_block, redis_block_key,
                                 redis_bucket_key, redis_bucket_keys)
from listseg.core.parser import value_at

COUNTERS = ("next_uid", "next_segment", "next_upload")
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


class RedisSnapshot(Snapshot):
    def __init__(self, backend):
        self.b = backend
        self.r = backend.r
        self._tags = {}              # (acct, segment, version) -> the token its head named
        self._read = {}              # (key, field) -> value, read ahead by _locate

    def _locate(self, acct, name, seg_id):
        """The segment's id, with its record, head and the generation read ahead (LOCATE)."""
        keys = [redis_account_key(acct, what) for what in REDIS_LOCATE_KEYS]
        found, rec, head, generation = self.b.locate(keys, [name.encode(), str(seg_id).encode()])
        if name:
            self._read[(keys[0], name.encode())] = found
        if found is not None:
            self._read[(keys[1], found)] = rec
            self._read[(keys[2], found)] = head
        self._read[(keys[3], b"generation")] = generation
        return int(found) if found is not None else None

    # -- raw reads (a unit overlays its own writes on these) -------------------------------------------
    def _hget(self, key, field):
        try:
            return self._read[(key, field)]
        except KeyError:
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
        return int(self._hget(redis_account_key(acct), b"generation") or 0)

    def _buckets(self, acct):
        return self.b.buckets(acct)

    def resolve(self, acct, kinds, fields, ends, nvals=1, col=0, parts=1):
        # parts: one pipeline of HMGETs already keeps the nodes busy; the batch goes in one part
        n = len(ends) // nvals
        kinds = bytes(kinds)
        buckets = self._buckets(acct)
        groups = {}
        for r in range(n):
            key = value_at(fields, ends, nvals * r + col)
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
            by_block.setdefault(redis_block(uid), []).append(uid)
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
        return frame_keys(((uid, recs.get(uid)) for uid in uids), identities)

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
        return range(redis_block(next_uid - 1) + 1) if next_uid else range(0)

    def channel(self, acct, name):
        keys = [redis_block_key(acct, block, b"c:" + name.encode()) for block in self._blocks(acct)]
        return FrozenBitMap(_union(raw for raw in self.b.get_many(keys) if raw))

    def deleted(self, acct):
        return self.channel(acct, DELETED)

    # -- segments, versions, uploads ----------------------------------------------------------------
    def segment_id(self, acct, name):
        return self._locate(acct, name, 0)

    def segment(self, acct, seg_id):
        key, field = redis_account_key(acct, b"seg"), str(seg_id).encode()
        if (key, field) not in self._read:
            self._locate(acct, "", seg_id)
        return loads(self._hget(key, field))

    def segments(self, acct):
        recs = self._hgetall(redis_account_key(acct, b"seg"))
        return [loads(recs[k]) for k in sorted(recs, key=int)]

    def head(self, acct, seg_id):
        # "version:token": a version number an unacknowledged commit used and a failover lost can be
        # issued again, with other members; the token tells the two apart (version_tag)
        raw = self._hget(redis_account_key(acct, b"heads"), str(seg_id).encode())
        if raw is None:
            return 0
        version, _, token = raw.decode().partition(":")
        self._tags[(acct, seg_id, int(version))] = token
        return int(version)

    def version_tag(self, acct, seg_id, version):
        tag = self._tags.get((acct, seg_id, version))
        if tag is None:
            manifest = self._manifest(acct, seg_id, version)
            tag = manifest["token"] if manifest else None
        return tag

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

    def kept_versions(self, acct, seg_id):
        return {int(v) for v in self.r.hkeys(redis_account_key(acct, b"m:%d" % seg_id))}

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

    # a unit reads what is there now, under its account's mver (no read-ahead)
    def segment_id(self, acct, name):
        raw = self._hget(redis_account_key(acct, b"names"), name.encode())
        return int(raw) if raw is not None else None

    def segment(self, acct, seg_id):
        return loads(self._hget(redis_account_key(acct, b"seg"), str(seg_id).encode()))

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
                REDIS_BUCKETS_FIELD: self.b.new_buckets, b"generation": 0, b"mver": 0}
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
            return redis_profiles.upsert(self, acct, fields, ends, bits_of)

    def delete_profiles(self, acct, guids):
        with self.b.profile_lock(acct):
            return redis_profiles.delete(self, acct, guids)

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
        pushes = [(key, "rpush", key, *(json.dumps(row) for row in rows[i:i + GET_CHUNK]))
                  for i in range(0, len(rows), GET_CHUNK)]
        self.b.durable([(key, "delete", key)] + pushes)

    def publish(self, acct, seg_id, expected_head, staged, now, retention, origin):
        head = self.head(acct, seg_id)
        if head != expected_head:
            raise HeadMoved(f"segment {seg_id} is at version {head}, not {expected_head}",
                            segment=seg_id, version=head)
        version = head + 1
        self._hset(redis_account_key(acct, b"m:%d" % seg_id), str(version).encode(), dumps(staged))
        self._hset(redis_account_key(acct, b"hist:%d" % seg_id), str(version).encode(),
                   dumps({"time": now, "size": staged["size"], **origin}))
        self._hset(redis_account_key(acct, b"heads"), str(seg_id).encode(), f"{version}:{staged['token']}".encode())
        superseded_at = {v - 1: rec["time"] for v, rec in self.history(acct, seg_id)}
        manifests = self._hgetall(redis_account_key(acct, b"m:%d" % seg_id))
        for raw_version, raw in manifests.items():
            v = int(raw_version)
            if v != version and retention.drops(v, version, superseded_at.get(v, now), now):
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
    return [redis_block_key(acct, block, REDIS_VERSION_CONTAINER % token) for block in manifest["blocks"]]


class RedisBackend(Connection, Backend):
    """url: redis-cluster://HOST:PORT,... (seed nodes) or redis://HOST:PORT (one node)."""

    def __init__(self, url):
        super().__init__(url)
        self._unlock = self.raw.register_script(UNLOCK)
        self._locate = self.raw.register_script(REDIS_LOCATE)
        self._buckets = {}

    atomic_bulk_writes = False      # a profile batch is not one unit (see the module docstring)

    def buckets(self, acct):
        n = self._buckets.get(acct)
        if n is None:
            n = self._buckets[acct] = int(self.r.hget(redis_account_key(acct), REDIS_BUCKETS_FIELD) or REDIS_BUCKETS)
        return n

    @contextmanager
    def snapshot(self):
        with self.errors():
            yield RedisSnapshot(self)

    def write(self, fn):
        with self.errors():
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
            for block in range(redis_block(bm.min()), redis_block(bm.max()) + 1):
                lo = block << REDIS_BLOCK_BITS
                part = bm & BitMap(range(lo, lo + (1 << REDIS_BLOCK_BITS)))
                if part:
                    part.run_optimize()
                    blocks.append(block)
                    key = redis_block_key(acct, block, REDIS_VERSION_CONTAINER % token.encode())
                    writes.append((key, "set", key, part.serialize()))
        with self.errors():
            self.durable(writes)
        return {"token": token, "blocks": blocks, "size": len(bm)}

    def locate(self, keys, args):
        return patiently(self.raw, self.failover_s, lambda: self._locate(keys=keys, args=args))

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
            patiently(self.raw, self.failover_s, lambda: self._unlock(keys=[key], args=[token]))

