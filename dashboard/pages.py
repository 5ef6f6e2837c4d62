"""What every page of the dashboard shares: the app's state, rendering, and the view helpers that turn
API messages into what the templates show."""
import datetime as dt
import os
import re

import grpc
from flask import current_app, render_template

from listseg.v1 import listseg_pb2 as pb

MAX_FILE_BYTES = 50 * 1024 * 1024        # "You can upload maximum file size of 50 MB from the dashboard."
CHANNELS = ("email", "sms", "push", "whatsapp", "webpush")
CHANNEL_LABELS = {"email": "Email", "sms": "SMS", "push": "Push", "whatsapp": "WhatsApp", "webpush": "Web push"}
STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
          grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.INVALID_ARGUMENT: 400,
          grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
          grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.UNAUTHENTICATED: 401,
          grpc.StatusCode.ABORTED: 409}


def state():
    """The app's State (web.py): its clients, sessions and upload jobs."""
    return current_app.extensions["listseg"]


def page(template, status=200, **ctx):
    return render_template(template, **ctx), status


def too_large():
    mb = state().max_file_bytes // (1024 * 1024)
    return page("error.jinja", 413, title="File too large", message=(
        f"The file is larger than {mb} MB, the most the dashboard takes. "
        "Split it into smaller files, or upload it with the API or `listseg upload` (up to 5 GB)."))


def state_name(state_):
    return pb.SegmentState.Name(state_).removeprefix("SEGMENT_STATE_").lower()


def problem(up):
    """The troubleshoot message for a failed upload, else None."""
    if up is None or up.state != pb.UPLOAD_STATE_FAILED:
        return None
    if up.mode == pb.UPLOAD_MODE_CREATE:
        return {"title": "File upload failed", "upload": up.id, "reason": up.reason,
                "help": "The segment could not be created from the uploaded file. Fix the errors and "
                        "re-upload the file."}
    return {"title": "File re-upload failed", "upload": up.id, "reason": up.reason,
            "help": "The segment could not be refreshed with the latest file. The segment stays available "
                    "with the last successful update."}


def consumers(seg):
    return [{"kind": "Campaign" if c.kind == pb.CONSUMER_KIND_CAMPAIGN else "Journey", "id": c.id, "name": c.name}
            for c in seg.consumers]


def refusal(exc):
    text = str(exc)
    if exc.code == grpc.StatusCode.ALREADY_EXISTS:
        return f"{text}. Pick another name, or replace that segment from its action menu."
    if exc.reason == "TOO_MANY_UPLOADS":
        return f"{text}. Wait for one to finish, then try again."
    return text


def timestamp(ts):
    """A protobuf Timestamp as an aware datetime; None when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, dt.timezone.utc)


def when(value):
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:80] or "segment"


def file_name(name):
    base = os.path.basename(name.replace("\\", "/"))
    return re.sub(r"[^\w.\- ]+", "_", base).strip(" .")[:120] or "upload.csv"
