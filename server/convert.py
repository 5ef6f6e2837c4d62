"""Engine dicts <-> listseg.v1 messages. Nothing here touches storage."""
import base64
import json

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
        create_time=timestamp(rec.get("created")), finish_time=timestamp(rec.get("finished")))


def profile(p):
    return pb.Profile(uid=p["uid"], guid=p["guid"], identity=p["identity"] or "", channels=p["channels"])


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


def page_token(state):
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def read_page_token(token, **expected):
    """The state inside an opaque page token; INVALID_ARGUMENT if it is not ours or not for this call."""
    if not token:
        return None
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise InvalidArgument("page_token is not valid", field="page_token") from None
    if not isinstance(state, dict) or any(state.get(k) != v for k, v in expected.items()):
        raise InvalidArgument("page_token does not belong to this request", field="page_token")
    return state


def page_size(value, default, maximum):
    if value < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(value or default, maximum)
