"""Segments of one account: records, immutable bitmap versions, the current-version pointer, history,
consumers, and every read query (membership, size, reachability, paging, sampling, export).

A version is written once and never changed; a commit publishes the new version and moves the pointer
as one step of the backend (core/backend.py Unit.publish), so a reader sees either the old or the new
version, never a mix. Superseded versions stay readable for `retention_s` so a reader paging through a
pinned version can finish.
"""
import bisect
import random
import threading
import time
from array import array
from collections import OrderedDict

from pyroaring import FrozenBitMap

from listseg.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound, VersionGone
from listseg.core.layout import SEGMENT_ID

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
    def __init__(self, backend, account, profiles, cache, retention_s):
        self.backend = backend
        self.account = account
        self.number = account.number
        self.profiles = profiles
        self.cache = cache
        self.retention_s = retention_s

    # -- records ----------------------------------------------------------------------------
    def find_id(self, snap, segment):
        """The id of a segment named by id (int) or name (str); NotFound otherwise."""
        if isinstance(segment, int):
            if 0 <= segment < 1 << 8 * SEGMENT_ID.width and snap.segment(self.number, segment) is not None:
                return segment
        else:
            seg_id = snap.segment_id(self.number, str(segment))
            if seg_id is not None:
                return seg_id
            ref = read_ref(str(segment))
            if isinstance(ref, int):
                return self.find_id(snap, ref)
        raise NotFound(f"no segment {segment!r}", segment=segment)

    def id_of(self, segment):
        """find_id in a snapshot of its own."""
        with self.backend.snapshot() as snap:
            return self.find_id(snap, segment)

    def record(self, snap, seg_id):
        rec = snap.segment(self.number, seg_id)
        if rec is None:
            raise NotFound(f"no segment {seg_id}", segment=seg_id)
        return rec

    def head(self, snap, seg_id):
        return snap.head(self.number, seg_id)

    def bitmap(self, snap, seg_id, version=None):
        """(version, FrozenBitMap) of the current version, or of `version` while retained."""
        if version is None:
            version = snap.head(self.number, seg_id)
        if version == 0:
            return 0, FrozenBitMap()

        def load():
            bm = snap.version(self.number, seg_id, version)
            if bm is None:
                raise VersionGone(f"version {version} of segment {seg_id} is no longer kept",
                                  segment=seg_id, version=version)
            return bm

        return version, self.cache.get((self.number, seg_id, version), load)

    def check_new_name(self, snap, name):
        """The name, trimmed, if it is valid and free; InvalidArgument or AlreadyExists otherwise."""
        name = check_name(name)
        self._claim(snap, name)
        return name

    def _claim(self, snap, name):
        """None if the name is free for a create; the segment the create takes over if the name is
        held by a failed segment that never had a version; AlreadyExists otherwise. (A failed create
        removes its segment, but keeps it, failed, when a consumer was attached meanwhile.)"""
        seg_id = snap.segment_id(self.number, name)
        if seg_id is None:
            return None
        rec = self.record(snap, seg_id)
        if rec["state"] == "failed" and snap.head(self.number, seg_id) == 0:
            return rec
        raise AlreadyExists(f"a segment named {name!r} exists", name=name)

    def create(self, unit, name, state="processing", now=None):
        """A segment record with no version yet, for a create upload: a new one, or a failed one
        that never had a version taken over (its id and consumers kept)."""
        name = check_name(name)
        rec = self._claim(unit, name)
        now = now or time.time()
        if rec is None:
            rec = {"id": unit.allocate(self.number, "next_segment"), "name": name, "consumers": [],
                   "last_upload": None}
            unit.claim_name(self.number, name, rec["id"])
        rec.update(state=state, created=now, updated=now)
        self.save(unit, rec)
        return rec

    def save(self, unit, rec):
        unit.put_segment(self.number, rec)

    def check_free(self, rec):
        """Refuse changes to a segment that campaigns or journeys are using."""
        if rec["consumers"]:
            raise InUse(rec["name"], rec["consumers"])

    def publish(self, unit, rec, expected_head, staged, now):
        """Make a staged version (Backend.stage) the segment's next one, if its head is still
        expected_head (HeadMoved otherwise), and mark the segment ready (in the caller's unit)."""
        version = unit.publish(self.number, rec["id"], expected_head, staged, now, self.retention_s)
        rec["state"] = "ready"
        rec["updated"] = now
        self.save(unit, rec)
        return version

    # -- API: segments ------------------------------------------------------------------------
    def get(self, segment, sample=0):
        """Everything the details page shows: record, size, version, reachability, trend, sample."""
        with self.backend.snapshot() as snap:
            seg_id = self.find_id(snap, segment)
            rec = self.record(snap, seg_id)
            version, bm = self.bitmap(snap, seg_id)
            deleted = self.profiles.deleted(snap)
            out = dict(rec, version=version, size=live_size(bm, deleted), reachability=snap.reach(self.number, bm),
                       trend=self._trend(snap, seg_id))
            if sample:
                out["sample"] = [p.to_dict() for p in self._sample(snap, without_deleted(bm, deleted), sample)]
            return out

    def _trend(self, snap, seg_id):
        return [dict(rec, version=version) for version, rec in snap.history(self.number, seg_id)]

    def list(self):
        """Every segment of the account with its size, in id order."""
        out = []
        with self.backend.snapshot() as snap:
            deleted = self.profiles.deleted(snap)
            for rec in snap.segments(self.number):
                version, bm = self.bitmap(snap, rec["id"])
                out.append(dict(rec, version=version, size=live_size(bm, deleted)))
        return out

    def delete(self, segment):
        def run(unit):
            rec = self.record(unit, self.find_id(unit, segment))
            self.check_free(rec)
            self.remove(unit, rec)
            return rec
        return self.backend.write(run)

    def remove(self, unit, rec):
        """Drop the segment: versions, history, pointer, record and name (in the caller's unit)."""
        unit.drop_segment(self.number, rec["id"], rec["name"])

    def attach(self, segment, kind, consumer_id, name=None):
        return self._consumers(segment, kind, consumer_id, name, attach=True)

    def detach(self, segment, kind, consumer_id):
        return self._consumers(segment, kind, consumer_id, None, attach=False)

    def _consumers(self, segment, kind, consumer_id, name, attach):
        if kind not in CONSUMER_KINDS:
            raise InvalidArgument(f"consumer kind must be one of {', '.join(CONSUMER_KINDS)}", field="kind")
        if not str(consumer_id).strip():
            raise InvalidArgument("consumer id must not be empty", field="id")

        def run(unit):
            rec = self.record(unit, self.find_id(unit, segment))
            rest = [c for c in rec["consumers"] if (c["kind"], c["id"]) != (kind, str(consumer_id))]
            if attach:
                rest.append({"kind": kind, "id": str(consumer_id), "name": name or ""})
            elif len(rest) == len(rec["consumers"]):
                raise NotFound(f"{kind} {consumer_id} is not attached to {rec['name']!r}")
            rec["consumers"] = rest
            self.save(unit, rec)
            return rec
        return self.backend.write(run)

    # -- API: membership ---------------------------------------------------------------------
    def is_member(self, segment, kind, key):
        return self.check_members(segment, [key], kind)[1][0]

    def check_members(self, segment, keys, kind=None):
        """(version, [bool]) for [(kind 'g'|'i', key)], or for plain keys all of `kind`; every
        answer comes from one version."""
        version, bm, uids = self._at_head(segment, lambda snap: self.profiles.resolve_keys(snap, keys, kind))
        return version, [uid in bm for uid in uids]     # UNKNOWN is never a member (uids < 2**32-1)

    def check_lines(self, segment, lines, kind):
        """(version, bytes: 1 for a member, else 0) for newline-ended keys all of `kind`: the bulk
        form of check_members, with no Python object per key on the way in. Lines may end in CRLF:
        a line's trailing CR is dropped here, once, for the profile index and LMDB alike (no stored
        guid or identity holds a CR; IsMember and the plain form keep a CR as part of the key)."""
        if b"\r" in lines:
            lines = lines.replace(b"\r\n", b"\n")

        def resolve(snap):
            uids = self.profiles.lookup_lines(snap, lines, kind)
            return uids if uids is not None else self.profiles.resolve_keys(snap, lines.split(b"\n")[:-1], kind)
        version, bm, uids = self._at_head(segment, resolve)
        return version, bytes([uid in bm for uid in uids])

    def _at_head(self, segment, resolve):
        """(version, bitmap, resolve(snap)) with the segment's current version, in one snapshot."""
        with self.backend.snapshot() as snap:
            version, bm = self.bitmap(snap, self.find_id(snap, segment))
            return version, bm, resolve(snap)

    def members(self, segment, start=0, count=10_000, version=None, shard_index=0, shard_count=1):
        """A page of member uids in uid order, from one version.

        The members are split into shard_count contiguous rank ranges; this pages through range
        shard_index, from rank `start` within it. Returns (version, uids array, next start or None).
        A later page's start and version come from a page token, so they are checked: a version the
        segment never had, or a start outside the shard, is InvalidArgument (field page_token)."""
        if not 0 <= shard_index < shard_count:
            raise InvalidArgument("shard_index must be in [0, shard_count)", field="shard_index")
        with self.backend.snapshot() as snap:
            seg_id = self.find_id(snap, segment)
            if version is not None and not 0 < version <= self.head(snap, seg_id):
                raise InvalidArgument(f"segment {seg_id} has no version {version}", field="page_token")
            version, bm = self.bitmap(snap, seg_id, version)
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
        with self.backend.snapshot() as snap:
            guids, found, taken = self._fit_guids(snap, uids, max_bytes)
        return version, guids, found, (start + taken if taken < len(uids) else nxt)

    def _fit_guids(self, snap, uids, max_bytes):
        """(guids, found, taken): member_guids of uids[:taken], the most leading uids whose members
        fit in max_bytes. Reads FIT_CHUNK uids at a time, so a long page of long guids reads little
        more than it sends."""
        if max_bytes is None:
            return (*self.member_guids(snap, uids), len(uids))
        parts, size, taken = [], 0, 0
        while taken < len(uids):
            chunk = uids[taken:taken + FIT_CHUNK]
            guids, found = self.member_guids(snap, chunk)
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

    def _sample(self, snap, bm, n):
        """Up to n profiles picked at random ranks of bm (give it without_deleted's members)."""
        ranks = sorted(random.sample(range(len(bm)), min(n, len(bm))))
        return self.profiles.get_many(snap, [bm[r] for r in ranks])

    def sample(self, segment, n=10):
        with self.backend.snapshot() as snap:
            _, bm = self.bitmap(snap, self.find_id(snap, segment))
            return self._sample(snap, without_deleted(bm, self.profiles.deleted(snap)), n)

    def member_guids(self, snap, uids):
        """(guids, found) of ascending uids: each guid followed by a newline, and the uids that
        still have a profile (packed uint32). One C loop, no object per member."""
        return snap.member_keys(self.number, uids)

    def export(self, segment, page=65_536, max_bytes=None):
        """The members as a re-uploadable CSV (`Type,Identity` then `g,<guid>`), in byte chunks of
        whole rows (with max_bytes, of at most that many bytes), all from the version current when
        the export starts."""
        with self.backend.snapshot() as snap:
            seg_id = self.find_id(snap, segment)
            version, bm = self.bitmap(snap, seg_id)
        yield EXPORT_HEADER
        for first in range(0, len(bm), page):
            uids = bm[first:first + page].to_array()
            with self.backend.snapshot() as snap:
                guids, found = self.member_guids(snap, uids)
            plain = not any(c in guids for c in (b",", b'"', b"\r")) and guids.count(b"\n") == len(found) // 4
            if plain:                   # the common case: no guid needs CSV quoting
                chunk = b"g," + guids[:-1].replace(b"\n", b"\ng,") + b"\n" if guids else b""
            else:
                with self.backend.snapshot() as snap:
                    rows = self.profiles.get_many(snap, uids)
                chunk = "".join(f"g,{_csv(p.guid)}\n" for p in rows).encode()
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

