"""Engine dicts <-> listseg.v1 messages. Nothing here touches storage."""
import base64
import struct

from google.protobuf.timestamp_pb2 import Timestamp

from listseg.core.errors import InvalidArgument
from listseg.core.segments import read_ref
from listseg.v1 import listseg_pb2 as pb

MODES = {pb.UPLOAD_MODE_CREATE: "create", pb.UPLOAD_MODE_REPLACE: "replace",
         pb.UPLOAD_MODE_APPEND: "append", pb.UPLOAD_MODE_REMOVE: "remove"}
MODE_ENUM = {v: k for k, v in MODES.items()}
UPLOAD_STATES = {"receiving": pb.UPLOAD_STATE_RECEIVING, "processing": pb.UPLOAD_STATE_PROCESSING,
                 "succeeded": pb.UPLOAD_STATE_SUCCEEDED, "failed": pb.UPLOAD_STATE_FAILED}
SEGMENT_STATES = {"processing": pb.SEGMENT_STATE_PROCESSING, "ready": pb.SEGMENT_STATE_READY,
                  "failed": pb.SEGMENT_STATE_FAILED}
KINDS = {pb.CONSUMER_KIND_CAMPAIGN: "campaign", pb.CONSUMER_KIND_JOURNEY: "journey"}
KIND_ENUM = {v: k for k, v in KINDS.items()}
TYPES = {pb.IDENTITY_TYPE_GUID: "g", pb.IDENTITY_TYPE_IDENTITY: "i"}


def timestamp(seconds):
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def identity_type(value):
    if value not in TYPES:
        raise InvalidArgument("type must be IDENTITY_TYPE_GUID or IDENTITY_TYPE_IDENTITY", field="type")
    return TYPES[value]


def consumer_kind(value):
    if value not in KINDS:
        raise InvalidArgument("kind must be CONSUMER_KIND_CAMPAIGN or CONSUMER_KIND_JOURNEY", field="kind")
    return KINDS[value]


def segment_ref(value):
    """A segment id ("42", "segments/42") as int, else the name as given."""
    if not value:
        raise InvalidArgument("segment is required", field="segment")
    return read_ref(value)                  # the core's rule, which refuses names it would misread


def upload(rec):
    report = rec.get("report") or {}
    receiving = rec["state"] == "receiving"
    waiting = {"resume_deadline": timestamp(rec["resume_by"])} if receiving and rec.get("resume_by") else {}
    return pb.Upload(
        id=rec["id"], segment=str(rec["segment"]) if rec.get("segment") is not None else "",
        segment_name=rec.get("segment_name", ""), mode=MODE_ENUM[rec["mode"]],
        state=UPLOAD_STATES[rec["state"]], reason=rec.get("reason", ""), dry_run=rec["dry_run"],
        strict=rec["strict"], file_name=rec.get("file_name", ""),
        report=pb.UploadReport(
            rows=report.get("rows", 0), qualified=report.get("qualified", 0), unknown=report.get("unknown", 0),
            invalid=report.get("invalid", 0), duplicates=report.get("duplicates", 0),
            size=report.get("size", 0), bytes=report.get("bytes", 0), version=report.get("version", 0),
            errors=[pb.RowError(line=e["line"], reason=e["reason"]) for e in report.get("errors", [])]),
        create_time=timestamp(rec.get("created")), finish_time=timestamp(rec.get("finished")),
        committed_bytes=rec.get("committed_bytes", 0) if receiving else report.get("bytes", 0), **waiting)


def profile(p):
    return pb.Profile(uid=p["uid"], guid=p["guid"], identity=p["identity"] or "", channels=p["channels"])


def segment_version(v):
    out = pb.SegmentVersion(version=v["version"], create_time=timestamp(v["time"]), size=v["size"], head=v["head"],
                            kept=v["kept"], rollback_of=v["rollback_of"] or 0)
    if v["upload"]:
        out.upload.CopyFrom(upload(v["upload"]))
    return out


def segment(seg, last_upload=None):
    out = pb.Segment(
        id=seg["id"], name=seg["name"], state=SEGMENT_STATES[seg["state"]], version=seg.get("version", 0),
        size=seg.get("size", 0), reachability=seg.get("reachability", {}),
        trend=[pb.TrendPoint(time=timestamp(t["time"]), size=t["size"], version=t["version"])
               for t in seg.get("trend", [])],
        consumers=[pb.Consumer(kind=KIND_ENUM[c["kind"]], id=c["id"], name=c.get("name", ""))
                   for c in seg["consumers"]],
        sample=[profile(p) for p in seg.get("sample", [])],
        create_time=timestamp(seg["created"]), update_time=timestamp(seg["updated"]))
    if last_upload:
        out.last_upload.CopyFrom(upload(last_upload))
    return out


class PageToken:
    """The page token of one paged method: the one definition of its fields, used to write the token
    and to read it back.

    A token is a format byte, the method's tag and each field as an unsigned 64-bit integer, packed and
    base64url-encoded: opaque to clients. It holds no secret (it must work across worker processes and
    restarts), so reading trusts nothing: the encoding, the format, the method and every field are
    checked against what the reader expects, and anything else is INVALID_ARGUMENT on page_token.
    A forged token that passes only pages what the caller may read anyway."""

    FORMAT = 1      # change it when a layout changes: older tokens are then refused, never misread

    def __init__(self, tag, *fields):
        self.tag, self.fields = tag, fields
        self.layout = struct.Struct(">BB" + "Q" * len(fields))

    def write(self, **values):
        if set(values) != set(self.fields):
            raise TypeError(f"a page token holds {self.fields}")
        raw = self.layout.pack(self.FORMAT, self.tag, *(values[f] for f in self.fields))
        return base64.urlsafe_b64encode(raw).decode()

    def read(self, token, **expected):
        """The fields of token as a dict, or None for no token (the first page). Each field must be
        expected: equal to an int, or inside a range."""
        if set(expected) != set(self.fields):
            raise TypeError(f"expect a value or range for each of {self.fields}")
        if not token:
            return None
        try:
            raw = base64.b64decode(token, altchars=b"-_", validate=True)
            form, tag, *values = self.layout.unpack(raw)
        except (ValueError, struct.error):       # not base64 (binascii.Error is a ValueError), wrong length
            raise InvalidArgument("page_token is not a page token of this method", field="page_token") from None
        if form != self.FORMAT or tag != self.tag or base64.urlsafe_b64encode(raw).decode() != token:
            raise InvalidArgument("page_token is not a page token of this method", field="page_token")
        state = dict(zip(self.fields, values))
        for name, want in expected.items():
            if not (state[name] in want if isinstance(want, range) else state[name] == want):
                raise InvalidArgument(f"page_token does not belong to this request ({name})", field="page_token")
        return state


# The paged methods' tokens. Positions count from 1: a token is only written for a page that follows.
MEMBERS_PAGE = PageToken(1, "segment", "version", "position", "shard_index", "shard_count")
SEGMENTS_PAGE = PageToken(2, "position")
UPLOAD_ERRORS_PAGE = PageToken(3, "upload", "position")
CHANGES_PAGE = PageToken(4, "segment", "from_version", "to_version", "position", "shard_index", "shard_count")


def page_size(value, default, maximum):
    if value < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(value or default, maximum)
