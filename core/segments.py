"""Segments of one account: records, immutable bitmap versions, the current-version pointer, history,
consumers, and every read query (membership, size, reachability, paging, sampling, export).

A version is written once and never changed; a commit writes the new version and moves the pointer in
one LMDB transaction, so a reader sees either the old or the new version, never a mix. Superseded
versions stay readable for `retention_s` so a reader paging through a pinned version can finish.
"""
import bisect
import random
import threading
import time
from array import array
from collections import OrderedDict

from pyroaring import FrozenBitMap

from listseg.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound, VersionGone
from listseg.core.layout import (CHANNELS, HEAD_KEY, HISTORY_KEY, SEGMENT_ID, SEGMENT_KEY, SEGMENT_NAME_KEY, VERSION,
                                 VERSION_KEY, dumps, loads)
from listseg.core.store import Database

CONSUMER_KINDS = ("campaign", "journey")
MAX_NAME = 200
ID_PREFIX = "segments/"          # a segment's resource name is segments/{id}
EXPORT_HEADER = b"Type,Identity\n"
FIT_CHUNK = 16_384              # uids read at a time when a page has a byte budget (member_page)


class BitmapCache:
    """Deserialized versions, keyed by (account, segment, version). Versions are immutable, so an
    entry never goes stale; it only ages out."""

    def __init__(self, capacity=32):
        self.capacity = capacity
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, load):
        with self._lock:
            bm = self._items.get(key)
            if bm is not None:
                self._items.move_to_end(key)
                return bm
        bm = load()
        with self._lock:
            self._items[key] = bm
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return bm


def read_ref(text):
    """What a reference to a segment names: the id (int) in "42" or "segments/42", else a name."""
    text = text.removeprefix(ID_PREFIX)
    # ASCII only: str.isdigit() also takes "²", which int() refuses, and "٣", which it reads as 3
    return int(text) if text.isascii() and text.isdigit() else text


def check_name(name):
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("a segment name must not be empty", field="name")
    name = name.strip()
    # bytes, not characters: the name is an LMDB key (511 bytes at most, with the account prefix)
    if len(name.encode()) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidArgument(f"a segment name is at most {MAX_NAME} bytes of printable UTF-8", field="name")
    if read_ref(name) != name:          # a reference "42" or "segments/42" names segment 42, not the name
        raise InvalidArgument(f"a segment name cannot be all digits or begin with {ID_PREFIX!r}: "
                              f"references read those as segment ids ({name!r})", field="name")
    return name


def live_size(bm, deleted):
    """Members that still have a profile: a version keeps the uids of profiles deleted after it."""
    return len(bm) - bm.intersection_cardinality(deleted) if deleted else len(bm)


def without_deleted(bm, deleted):
    """bm less the deleted uids; bm itself (no copy) when it holds none."""
    return bm - deleted if bm.intersect(deleted) else bm


class Segments:
    def __init__(self, database, account, profiles, cache, retention_s):
        self.database = database
        self.db = database.db
        self.account = account
        self.prefix = account.prefix
        self.profiles = profiles
        self.cache = cache
        self.retention_s = retention_s

    # -- records ----------------------------------------------------------------------------
    def find_id(self, txn, segment):
        """The id of a segment named by id (int) or name (str); NotFound otherwise."""
        if isinstance(segment, int):
            if (0 <= segment < 1 << 8 * SEGMENT_ID.width
                    and txn.get(self.db.segments, SEGMENT_KEY.pack(self.prefix, segment)) is not None):
                return segment
        else:
            raw = txn.get(self.db.segnames, SEGMENT_NAME_KEY.pack(self.prefix, str(segment).encode()))
            if raw is not None:
                return SEGMENT_ID.unpack(raw)
            ref = read_ref(str(segment))
            if isinstance(ref, int):
                return self.find_id(txn, ref)
        raise NotFound(f"no segment {segment!r}", segment=segment)

    def record(self, txn, seg_id):
        rec = loads(txn.get(self.db.segments, SEGMENT_KEY.pack(self.prefix, seg_id)))
        if rec is None:
            raise NotFound(f"no segment {seg_id}", segment=seg_id)
        return rec

    def head(self, txn, seg_id):
        raw = txn.get(self.db.heads, HEAD_KEY.pack(self.prefix, seg_id))
        return VERSION.unpack(raw) if raw else 0

    def bitmap(self, txn, seg_id, version=None):
        """(version, FrozenBitMap) of the current version, or of `version` while retained."""
        if version is None:
            version = self.head(txn, seg_id)
        if version == 0:
            return 0, FrozenBitMap()
        key = VERSION_KEY.pack(self.prefix, seg_id, version)

        def load():
            raw = txn.get(self.db.versions, key)
            if raw is None:
                raise VersionGone(f"version {version} of segment {seg_id} is no longer kept",
                                  segment=seg_id, version=version)
            return FrozenBitMap.deserialize(raw)

        return version, self.cache.get((self.account.number, seg_id, version), load)

    def check_new_name(self, txn, name):
        """The name, trimmed, if it is valid and free; InvalidArgument or AlreadyExists otherwise."""
        name = check_name(name)
        self._claim(txn, name)
        return name

    def _claim(self, txn, name):
        """None if the name is free for a create; the segment the create takes over if the name is
        held by a failed segment that never had a version; AlreadyExists otherwise. (A failed create
        removes its segment, but keeps it, failed, when a consumer was attached meanwhile.)"""
        raw = txn.get(self.db.segnames, SEGMENT_NAME_KEY.pack(self.prefix, name.encode()))
        if raw is None:
            return None
        rec = self.record(txn, SEGMENT_ID.unpack(raw))
        if rec["state"] == "failed" and self.head(txn, rec["id"]) == 0:
            return rec
        raise AlreadyExists(f"a segment named {name!r} exists", name=name)

    def create(self, txn, name, state="processing", now=None):
        """A segment record with no version yet, for a create upload: a new one, or a failed one
        that never had a version taken over (its id and consumers kept)."""
        name = check_name(name)
        rec = self._claim(txn, name)
        now = now or time.time()
        if rec is None:
            rec = {"id": self.account.allocate(txn, "next_segment"), "name": name, "consumers": [],
                   "last_upload": None}
            txn.put(self.db.segnames, SEGMENT_NAME_KEY.pack(self.prefix, name.encode()), SEGMENT_ID.pack(rec["id"]))
        rec.update(state=state, created=now, updated=now)
        self.save(txn, rec)
        return rec

    def save(self, txn, rec):
        txn.put(self.db.segments, SEGMENT_KEY.pack(self.prefix, rec["id"]), dumps(rec))

    def check_free(self, rec):
        """Refuse changes to a segment that campaigns or journeys are using."""
        if rec["consumers"]:
            raise InUse(rec["name"], rec["consumers"])

    def commit(self, txn, rec, bm, now):
        """Store bm as the segment's next version and move the pointer to it (in the caller's txn)."""
        p, seg_id = self.prefix, rec["id"]
        version = self.head(txn, seg_id) + 1
        bm.run_optimize()
        txn.put(self.db.versions, VERSION_KEY.pack(p, seg_id, version), bm.serialize())
        txn.put(self.db.history, HISTORY_KEY.pack(p, seg_id, version), dumps({"time": now, "size": len(bm)}))
        txn.put(self.db.heads, HEAD_KEY.pack(p, seg_id), VERSION.pack(version))
        rec["state"] = "ready"
        rec["updated"] = now
        self.save(txn, rec)
        self._prune(txn, rec["id"], version, now)
        return version

    def _prune(self, txn, seg_id, current, now):
        """Drop versions superseded more than retention_s ago (history rows stay: they are the trend)."""
        superseded_at = {}
        for key, raw in Database.scan(txn, self.db.history, HISTORY_KEY.prefix(self.prefix, seg_id)):
            superseded_at[HISTORY_KEY.parse(key)[-1] - 1] = loads(raw)["time"]
        for key, _ in list(Database.scan(txn, self.db.versions, VERSION_KEY.prefix(self.prefix, seg_id))):
            version = VERSION_KEY.parse(key)[-1]
            if version != current and now - superseded_at.get(version, now) > self.retention_s:
                txn.delete(self.db.versions, key)

    # -- API: segments ------------------------------------------------------------------------
    def get(self, segment, sample=0):
        """Everything the details page shows: record, size, version, reachability, trend, sample."""
        with self.database.read() as txn:
            seg_id = self.find_id(txn, segment)
            rec = self.record(txn, seg_id)
            version, bm = self.bitmap(txn, seg_id)
            channels = self.profiles.channel_bitmaps(txn)
            deleted = self.profiles.deleted(txn)
            out = dict(rec, version=version, size=live_size(bm, deleted),
                       reachability={name: bm.intersection_cardinality(channels[name]) for name in CHANNELS},
                       trend=self._trend(txn, seg_id))
            if sample:
                out["sample"] = [p.to_dict() for p in self._sample(txn, without_deleted(bm, deleted), sample)]
            return out

    def _trend(self, txn, seg_id):
        return [dict(loads(raw), version=HISTORY_KEY.parse(key)[-1])
                for key, raw in Database.scan(txn, self.db.history, HISTORY_KEY.prefix(self.prefix, seg_id))]

    def list(self):
        """Every segment of the account with its size, in id order."""
        out = []
        with self.database.read() as txn:
            deleted = self.profiles.deleted(txn)
            for _, raw in Database.scan(txn, self.db.segments, SEGMENT_KEY.prefix(self.prefix)):
                rec = loads(raw)
                version, bm = self.bitmap(txn, rec["id"])
                out.append(dict(rec, version=version, size=live_size(bm, deleted)))
        return out

    def delete(self, segment):
        def run(txn):
            rec = self.record(txn, self.find_id(txn, segment))
            self.check_free(rec)
            self.remove(txn, rec)
            return rec
        return self.database.write(run)

    def remove(self, txn, rec):
        """Drop the segment: versions, history, pointer, record and name (in the caller's txn)."""
        p, seg_id = self.prefix, rec["id"]
        for dbi, shape in ((self.db.versions, VERSION_KEY), (self.db.history, HISTORY_KEY)):
            for key, _ in list(Database.scan(txn, dbi, shape.prefix(p, seg_id))):
                txn.delete(dbi, key)
        txn.delete(self.db.heads, HEAD_KEY.pack(p, seg_id))
        txn.delete(self.db.segments, SEGMENT_KEY.pack(p, seg_id))
        txn.delete(self.db.segnames, SEGMENT_NAME_KEY.pack(p, rec["name"].encode()))

    def attach(self, segment, kind, consumer_id, name=None):
        return self._consumers(segment, kind, consumer_id, name, attach=True)

    def detach(self, segment, kind, consumer_id):
        return self._consumers(segment, kind, consumer_id, None, attach=False)

    def _consumers(self, segment, kind, consumer_id, name, attach):
        if kind not in CONSUMER_KINDS:
            raise InvalidArgument(f"consumer kind must be one of {', '.join(CONSUMER_KINDS)}", field="kind")
        if not str(consumer_id).strip():
            raise InvalidArgument("consumer id must not be empty", field="id")

        def run(txn):
            rec = self.record(txn, self.find_id(txn, segment))
            rest = [c for c in rec["consumers"] if (c["kind"], c["id"]) != (kind, str(consumer_id))]
            if attach:
                rest.append({"kind": kind, "id": str(consumer_id), "name": name or ""})
            elif len(rest) == len(rec["consumers"]):
                raise NotFound(f"{kind} {consumer_id} is not attached to {rec['name']!r}")
            rec["consumers"] = rest
            self.save(txn, rec)
            return rec
        return self.database.write(run)

    # -- API: membership ---------------------------------------------------------------------
    def is_member(self, segment, kind, key):
        return self.check_members(segment, [key], kind)[1][0]

    def check_members(self, segment, keys, kind=None):
        """(version, [bool]) for [(kind 'g'|'i', key)], or for plain keys all of `kind`; every
        answer comes from one version."""
        version, bm, uids = self._at_head(segment, lambda txn: self.profiles.resolve_keys(txn, keys, kind))
        return version, [uid in bm for uid in uids]     # UNKNOWN is never a member (uids < 2**32-1)

    def check_lines(self, segment, lines, kind):
        """(version, bytes: 1 for a member, else 0) for newline-ended keys all of `kind`: the bulk
        form of check_members, with no Python object per key on the way in. Lines may end in CRLF:
        a line's trailing CR is dropped here, once, for the profile index and LMDB alike (no stored
        guid or identity holds a CR; IsMember and the plain form keep a CR as part of the key)."""
        if b"\r" in lines:
            lines = lines.replace(b"\r\n", b"\n")

        def resolve(txn):
            uids = self.profiles.lookup_lines(txn, lines, kind)
            return uids if uids is not None else self.profiles.resolve_keys(txn, lines.split(b"\n")[:-1], kind)
        version, bm, uids = self._at_head(segment, resolve)
        return version, bytes([uid in bm for uid in uids])

    def _at_head(self, segment, resolve):
        """(version, bitmap, resolve(txn)) with the segment's current version, in one transaction."""
        with self.database.read() as txn:
            version, bm = self.bitmap(txn, self.find_id(txn, segment))
            return version, bm, resolve(txn)

    def members(self, segment, start=0, count=10_000, version=None, shard_index=0, shard_count=1):
        """A page of member uids in uid order, from one version.

        The members are split into shard_count contiguous rank ranges; this pages through range
        shard_index, from rank `start` within it. Returns (version, uids array, next start or None).
        A later page's start and version come from a page token, so they are checked: a version the
        segment never had, or a start outside the shard, is InvalidArgument (field page_token)."""
        if not 0 <= shard_index < shard_count:
            raise InvalidArgument("shard_index must be in [0, shard_count)", field="shard_index")
        with self.database.read() as txn:
            seg_id = self.find_id(txn, segment)
            if version is not None and not 0 < version <= self.head(txn, seg_id):
                raise InvalidArgument(f"segment {seg_id} has no version {version}", field="page_token")
            version, bm = self.bitmap(txn, seg_id, version)
        n = len(bm)
        lo, hi = n * shard_index // shard_count, n * (shard_index + 1) // shard_count
        if start and not 0 < start < hi - lo:
            raise InvalidArgument(f"position {start} is outside shard {shard_index} of {hi - lo} members",
                                  field="page_token")
        first = lo + start
        last = min(hi, first + count)
        uids = bm[first:last].to_array() if first < last else array("I")
        return version, uids, (start + len(uids) if last < hi else None)

    def member_page(self, segment, start=0, count=10_000, version=None, shard_index=0, shard_count=1,
                    max_bytes=None):
        """members() with the members' guids: (version, guids, found, next start or None), guids and
        found as member_guids gives them. With max_bytes, guids and found together hold at most that
        many bytes (and at least one member): a page of long guids ends early, and next start is
        then the rank after its last member, so the next page loses and repeats none."""
        version, uids, nxt = self.members(segment, start, count, version, shard_index, shard_count)
        with self.database.read() as txn:
            guids, found, taken = self._fit_guids(txn, uids, max_bytes)
        return version, guids, found, (start + taken if taken < len(uids) else nxt)

    def _fit_guids(self, txn, uids, max_bytes):
        """(guids, found, taken): member_guids of uids[:taken], the most leading uids whose members
        fit in max_bytes. Reads FIT_CHUNK uids at a time, so a long page of long guids reads little
        more than it sends."""
        if max_bytes is None:
            return (*self.member_guids(txn, uids), len(uids))
        parts, size, taken = [], 0, 0
        while taken < len(uids):
            chunk = uids[taken:taken + FIT_CHUNK]
            guids, found = self.member_guids(txn, chunk)
            if size + len(guids) + len(found) <= max_bytes:
                parts.append((guids, found))
                size += len(guids) + len(found)
                taken += len(chunk)
                continue
            end = kept = 0            # the chunk's first members that fit: guids[:end], `kept` of them
            for _ in range(len(found) // 4):
                nl = guids.index(b"\n", end) + 1
                if (size or kept) and size + nl + 4 * (kept + 1) > max_bytes:
                    break
                end, kept = nl, kept + 1
            parts.append((guids[:end], found[:4 * kept]))
            # up to and including the last member kept: uids without a profile after it come again
            taken += bisect.bisect_right(chunk, memoryview(found).cast("I")[kept - 1]) if kept else 0
            break
        return b"".join(g for g, _ in parts), b"".join(f for _, f in parts), taken

    def _sample(self, txn, bm, n):
        """Up to n profiles picked at random ranks of bm (give it without_deleted's members)."""
        ranks = sorted(random.sample(range(len(bm)), min(n, len(bm))))
        found = (self.profiles.get(txn, bm[r]) for r in ranks)
        return [p for p in found if p is not None]

    def sample(self, segment, n=10):
        with self.database.read() as txn:
            _, bm = self.bitmap(txn, self.find_id(txn, segment))
            return self._sample(txn, without_deleted(bm, self.profiles.deleted(txn)), n)

    def member_guids(self, txn, uids):
        """(guids, found) of ascending uids: each guid followed by a newline, and the uids that
        still have a profile (packed uint32). One C loop, no object per member."""
        return txn.member_guids(self.db.profile, self.prefix, uids)

    def export(self, segment, page=65_536, max_bytes=None):
        """The members as a re-uploadable CSV (`Type,Identity` then `g,<guid>`), in byte chunks of
        whole rows (with max_bytes, of at most that many bytes), all from the version current when
        the export starts."""
        with self.database.read() as txn:
            seg_id = self.find_id(txn, segment)
            version, bm = self.bitmap(txn, seg_id)
        yield EXPORT_HEADER
        for first in range(0, len(bm), page):
            uids = bm[first:first + page].to_array()
            with self.database.read() as txn:
                guids, found = self.member_guids(txn, uids)
            plain = not any(c in guids for c in (b",", b'"', b"\r")) and guids.count(b"\n") == len(found) // 4
            if plain:                   # the common case: no guid needs CSV quoting
                chunk = b"g," + guids[:-1].replace(b"\n", b"\ng,") + b"\n" if guids else b""
            else:
                with self.database.read() as txn:
                    rows = self.profiles.guids(txn, uids)
                chunk = "".join(f"g,{_csv(guid)}\n" for _, guid, _ in rows).encode()
            yield from _rows_within(chunk, max_bytes)


def _rows_within(data, max_bytes):
    """data (CSV rows) in pieces of whole rows, each at most max_bytes (or one longer row alone)."""
    at = 0
    while max_bytes is not None and len(data) - at > max_bytes:
        end = data.rfind(b"\n", at, at + max_bytes) + 1 or data.index(b"\n", at) + 1
        yield data[at:end]
        at = end
    yield data[at:] if at else data


def _csv(value):
    if any(c in value for c in ',"\r\n') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value

