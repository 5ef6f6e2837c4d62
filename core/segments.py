"""Segments of one account: names and records, versions and the current-version pointer, history,
consumers, and the details page (size, reachability, trend); the membership queries are
core/members.py's part of Segments.

A version is written once and never changed; a commit publishes the new version and moves the pointer
as one step of the backend (core/backend.py Unit.publish), so a reader sees either the old or the new
version, never a mix. Superseded versions stay readable for `retention_s` so a reader paging through a
pinned version can finish, and the last `keep_versions` stay for rollback (core/backend.py Retention).
"""
import time

from pyroaring import BitMap, FrozenBitMap

from listseg.core.backend import COMMIT_TRIES
from listseg.core.errors import AlreadyExists, HeadMoved, InUse, InvalidArgument, NotFound, VersionGone
from listseg.core.layout import SEGMENT_ID
from listseg.core.members import Members, live_size, without_deleted

CONSUMER_KINDS = ("campaign", "journey")
MAX_NAME = 200
ID_PREFIX = "segments/"          # a segment's resource name is segments/{id}


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


class Segments(Members):
    def __init__(self, backend, account, profiles, cache, retention):
        self.backend = backend
        self.account = account
        self.number = account.number
        self.profiles = profiles
        self.cache = cache
        self.retention = retention

    @property
    def retention_s(self):
        """How long a superseded version stays readable at least (a page token's window)."""
        return self.retention.seconds

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

        return version, self.cache.get((self.number, seg_id, version, snap.version_tag(self.number, seg_id, version)),
                                       load)

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

    def publish(self, unit, rec, expected_head, staged, now, origin):
        """Make a staged version (Backend.stage) the segment's next one, if its head is still
        expected_head (HeadMoved otherwise), and mark the segment ready (in the caller's unit).
        origin: what made it, {"upload": id} or {"rollback_of": version}, for its history row."""
        version = unit.publish(self.number, rec["id"], expected_head, staged, now, self.retention, origin)
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

    def versions(self, segment):
        """Every version ever published, newest first: {version, time, size, head, kept, upload
        (the upload record that made it, if any), rollback_of (the version it copies, if any)}.
        `kept`: its members are still there, so it can be read with a page token or rolled back to."""
        with self.backend.snapshot() as snap:
            seg_id = self.find_id(snap, segment)
            head, kept = snap.head(self.number, seg_id), snap.kept_versions(self.number, seg_id)
            out = []
            for version, row in reversed(snap.history(self.number, seg_id)):
                upload = snap.upload(self.number, row["upload"]) if "upload" in row else None
                out.append({"version": version, "time": row["time"], "size": row["size"], "head": version == head,
                            "kept": version in kept, "upload": upload, "rollback_of": row.get("rollback_of")})
            return out

    def rollback(self, segment, version, now=None):
        """A new head version with the members of `version` (less profiles deleted since): history
        stays linear ("version 9 = rollback to 6"). Refused while a campaign or journey uses the
        segment (InUse), for the head itself (InvalidArgument) and for an expired version
        (VersionGone). Returns the new version."""
        def build(snap):
            seg_id = self.find_id(snap, segment)
            self.check_free(self.record(snap, seg_id))
            head = snap.head(self.number, seg_id)
            if not 1 <= version <= head:
                raise NotFound(f"segment {seg_id} has no version {version} (its versions are 1 to {head})",
                               segment=seg_id, version=version)
            if version == head:
                raise InvalidArgument(f"version {version} is the head already", field="version")
            if version not in snap.kept_versions(self.number, seg_id):   # expired, if still in a cache
                raise VersionGone(f"version {version} of segment {seg_id} is no longer kept",
                                  segment=seg_id, version=version)
            _, bm = self.bitmap(snap, seg_id, version)
            return seg_id, head, without_deleted(bm, self.profiles.deleted(snap))

        def finish(unit, seg_id, head, staged, _members):
            rec = self.record(unit, seg_id)
            self.check_free(rec)                    # again: a consumer may have attached meanwhile
            return self.publish(unit, rec, head, staged, now or time.time(), {"rollback_of": version})
        return self.commit(build, finish)

    def commit(self, build, finish, stage=True):
        """The optimistic commit of a new version, for uploads and rollbacks alike: build(snap) gives
        (segment id, head, members) as a snapshot sees the segment; the members are staged (unless not
        stage: a dry run) outside any transaction; then one unit runs finish(unit, segment id, head,
        staged, members), whose publish flips the head if it is still that head. A commit that moved
        it meanwhile (HeadMoved) means build again, COMMIT_TRIES times at most; then HeadMoved."""
        for attempt in range(COMMIT_TRIES):
            with self.backend.snapshot() as snap:
                seg_id, head, members = build(snap)
            staged = self.backend.stage(self.number, BitMap(members)) if stage else None
            try:
                return self.backend.write(lambda unit: finish(unit, seg_id, head, staged, members))
            except HeadMoved:
                if attempt == COMMIT_TRIES - 1:
                    raise

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
