"""Membership queries over a segment's immutable versions: is_member, check_members and check_lines
(every answer from one version), members and member_page (paged, sharded, pinned to a version),
change_page (who joined and left between two versions, paged alike), sample, and export. `Members` is a part of core/segments.py's Segments, which gives it find_id,
bitmap, profiles, backend and number.
"""
import bisect
import random
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from pyroaring import BitMap

from listseg.core.errors import InvalidArgument, NotFound, VersionGone

EXPORT_HEADER = b"Type,Identity\n"
WATCH_POLL_S = 0.25             # how often watch() reads a segment's head
FIT_CHUNK = 16_384              # uids read at a time when a page has a byte budget (member_page)


class BitmapCache:
    """Deserialized versions, keyed by (account, segment, version, the backend's version_tag).
    Versions are immutable, so an entry never goes stale; it only ages out."""

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


def live_size(bm, deleted):
    """Members that still have a profile: a version keeps the uids of profiles deleted after it."""
    return len(bm) - bm.intersection_cardinality(deleted) if deleted else len(bm)


def without_deleted(bm, deleted):
    """bm less the deleted uids; bm itself (no copy) when it holds none."""
    return bm - deleted if bm.intersect(deleted) else bm


class Members:
    """The membership queries of Segments (core/segments.py), which holds the records and versions."""

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
        return (version, *_shard_page(bm, start, count, shard_index, shard_count))

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

    def change_page(self, segment, from_version, to_version=None, start=0, count=10_000, shard_index=0,
                    shard_count=1, max_bytes=None, pinned=False):
        """Who joined and who left segment between two of its versions, as member_page pages them:
        the symmetric difference of the two bitmaps, in uid order, split into shards by rank. Members
        whose profile is gone are left out (they have no guid to give). from_version 0 is "before the
        first version" (everyone is added); to_version None is the head. With max_bytes, guids, found
        and added together hold at most that many bytes (member_page). Versions come from the
        request, or (pinned) from a page token: then one the segment never had is InvalidArgument on
        page_token rather than NotFound. Returns a ChangePage."""
        if not 0 <= shard_index < shard_count:
            raise InvalidArgument("shard_index must be in [0, shard_count)", field="shard_index")
        with self.backend.snapshot() as snap:
            seg_id = self.find_id(snap, segment)
            head = self.head(snap, seg_id)
            to_version = head if to_version is None else to_version
            for name, v in (("from_version", from_version), ("to_version", to_version)):
                if not 0 <= v <= head:
                    msg = f"segment {seg_id} has no version {v} (its versions are 1 to {head})"
                    if pinned:
                        raise InvalidArgument(msg, field="page_token")
                    raise NotFound(msg, segment=seg_id, version=v)
            old, new = (self.bitmap(snap, seg_id, v)[1] for v in (from_version, to_version))
            deleted = self.profiles.deleted(snap)
            changed = without_deleted(old ^ new, deleted)
            uids, nxt = _shard_page(changed, start, count, shard_index, shard_count)
            # the added flags are a byte a member, a quarter of its uid at most: within max_bytes too
            guids, found, taken = self._fit_guids(snap, uids, max_bytes and max_bytes * 4 // 5)
        ids = array("I")
        ids.frombytes(found)
        joined = BitMap(ids) & new
        added = bytes(uid in joined for uid in ids)
        return ChangePage(from_version, to_version, guids, found, added,
                          start + taken if taken < len(uids) else nxt,
                          changed.intersection_cardinality(new), changed.difference_cardinality(new),
                          live_size(new, deleted))

    def watch(self, segment, after=None, still_wanted=lambda: True, interval=WATCH_POLL_S):
        """Yield a HeadChange each time the segment's head moves, until still_wanted() is false: first
        its head now (from_version `after`, or 0: everyone in it joined), unless that is `after`. The
        head is read every `interval` seconds, so commits closer together make one change, whose
        from_version says so; a from_version no longer kept gives way to 0. Reads only: a watcher,
        however slow, holds back no writer. NotFound once the segment is deleted."""
        seg_id, seen = self.id_of(segment), after
        while still_wanted():
            with self.backend.snapshot() as snap:
                self.record(snap, seg_id)            # NotFound once deleted
                head = self.head(snap, seg_id)
            if head != seen:
                yield self._head_change(seg_id, seen or 0, head)
                seen = head
            time.sleep(interval)

    def _head_change(self, seg_id, before, head):
        try:
            page = self.change_page(seg_id, before, head, count=0)
        except VersionGone:                          # `before` is past its retention: from nothing
            before, page = 0, self.change_page(seg_id, 0, head, count=0)
        return HeadChange(head, before, page.added_total, page.removed_total, page.to_size)

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


@dataclass
class HeadChange:
    """The segment's head moved from from_version to version: `added` joined, `removed` left."""
    version: int
    from_version: int
    added: int
    removed: int
    size: int


@dataclass
class ChangePage:
    """One page of change_page: members that joined (added[i] 1) or left (0) between the versions."""
    from_version: int
    to_version: int
    guids: bytes          # each followed by a newline
    found: bytes          # their uids, packed uint32
    added: bytes          # one byte a member, in the same order
    next_start: int | None
    added_total: int      # over every page and shard
    removed_total: int
    to_size: int          # to_version's members that still have a profile


def _shard_page(bm, start, count, shard_index, shard_count):
    """(uids, next start or None): up to count members of bm from rank `start` of shard shard_index,
    the shards being shard_count contiguous rank ranges. A start outside the shard (it came from a page
    token) is InvalidArgument on page_token."""
    n = len(bm)
    lo, hi = n * shard_index // shard_count, n * (shard_index + 1) // shard_count
    if start and not 0 < start < hi - lo:
        raise InvalidArgument(f"position {start} is outside shard {shard_index} of {hi - lo} members",
                              field="page_token")
    first = lo + start
    last = min(hi, first + count)
    uids = bm[first:last].to_array() if first < last else array("I")
    return uids, (start + len(uids) if last < hi else None)


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

