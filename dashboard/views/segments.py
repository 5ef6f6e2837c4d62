"""The segments: the list, creating and replacing one from a file, its details page with the trend,
reachability, sample users and version history, rolling it back, and downloading its users."""
import datetime as dt
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import grpc
from flask import Blueprint, Response, g, jsonify, redirect, request, url_for

from listseg.clients.client import CallError
from listseg.dashboard import chart
from listseg.dashboard.pages import (CHANNELS, STATUS, consumers, file_name, page, problem, refusal, slug, state,
                                     state_name, timestamp, too_large)
from listseg.v1 import listseg_pb2 as pb

log = logging.getLogger("listseg.dashboard")
bp = Blueprint("segments", __name__)
SAMPLE = 10


@bp.get("/")
def index():
    rows = segment_rows()
    notices = [job_notice(j) for j in state().jobs.unshown_errors(g.account)]
    return page("segments.jinja", rows=rows, notices=notices, busy=any(r.busy for r in rows))


@bp.get("/segments/rows")
def rows_fragment():
    rows = segment_rows()
    return page("_rows.jinja", rows=rows, busy=any(r.busy for r in rows))


def segment_rows():
    jobs = state().jobs
    active = jobs.active(g.account)
    rows, names = [], set()
    for s in g.client.list_segments():                   # each with its last upload
        names.add(s.name)
        rows.append(Row.of(s, job_for(s, active)))
    for j in active:                                     # creates the server has not seen yet
        if j.mode == "name" and j.target not in names:
            names.add(j.target)
            rows.append(Row(None, j.target, 0, "processing", busy=True, note=f"Uploading {j.file_name}…"))
    # a failed create leaves no segment: its row stays while the job is remembered, for the
    # troubleshoot link
    for j in jobs.finished(g.account):
        up = j.upload
        if j.mode == "name" and up is not None and up.state == pb.UPLOAD_STATE_FAILED and j.target not in names:
            names.add(j.target)
            rows.append(Row(None, j.target, 0, "failed", created=timestamp(up.create_time),
                            updated=timestamp(up.finish_time), problem=problem(up)))
    return rows


@bp.route("/segments/new", methods=["GET", "POST"])
def new_segment():
    if request.method == "GET":
        g.client.check_access()                          # sign in first if that is needed
        return page("upload.jinja", mode="create", name=request.args.get("name", ""))
    name = request.form.get("name", "").strip()
    problems = [] if name else ["Name the segment."]
    return start_upload("name", name, problems, {"mode": "create", "name": name})


@bp.route("/segments/<int:seg_id>/replace", methods=["GET", "POST"])
def replace_segment(seg_id):
    seg = g.client.get_segment(str(seg_id))
    if request.method == "GET":
        return page("upload.jinja", mode="replace", segment=seg, consumers=consumers(seg))
    return start_upload("replace", str(seg_id), [], {"mode": "replace", "segment": seg})


def start_upload(mode, target, problems, ctx):
    st = state()
    f = request.files.get("file")
    notify = [a.strip() for a in re.split(r"[,;\s]+", request.form.get("notify", "")) if a.strip()]
    ctx.update(notify=request.form.get("notify", ""))
    if f is None or not f.filename:
        problems.insert(0, "Choose a CSV file to upload.")
    bad = [a for a in notify if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a)]
    if bad:
        problems.append(f"Not an email address: {bad[0]}")
    if problems:
        return page("upload.jinja", 400, problems=problems, **with_consumers(ctx))
    tmpdir = tempfile.mkdtemp(prefix="listseg-dashboard-")
    path = os.path.join(tmpdir, file_name(f.filename))
    try:
        f.save(path)
        size = os.path.getsize(path)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if size > st.max_file_bytes or size == 0:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if size:
            return too_large()
        return page("upload.jinja", 400, problems=["The file is empty."], **with_consumers(ctx))
    job = st.jobs.start(st.job_client(g.client), g.account, path, tmpdir, mode, target, os.path.basename(path),
                        notify)
    job.done.wait(st.upload_wait_s)                     # a refusal comes back at once: show it here
    if job.error is not None and isinstance(job.error, CallError):
        job.shown = True
        exc = job.error
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            raise exc
        if exc.reason == "SEGMENT_IN_USE" and mode == "replace":
            seg = g.client.get_segment(target)
            return page("upload.jinja", 409, in_use=True, **with_consumers(dict(ctx, segment=seg)))
        return page("upload.jinja", STATUS.get(exc.code, 400), problems=[refusal(exc)], **with_consumers(ctx))
    return redirect(url_for("segments.index"), 303)


def with_consumers(ctx):
    if ctx.get("segment") is not None:
        ctx["consumers"] = consumers(ctx["segment"])
    return ctx


@bp.get("/segments/<int:seg_id>")
def segment_details(seg_id):
    return details_page(seg_id)


def details_page(seg_id, status=200, rollback_problem=None):
    seg = g.client.get_segment(str(seg_id), sample=SAMPLE)
    job = job_for(seg)
    history = with_changes(seg.id, [HistoryRow.of(v) for v in g.client.versions(seg.id)])
    points = [(timestamp(t.time), t.size) for t in seg.trend]
    rollbacks = [(h.time, h.made_by) for h in history if h.rollback_of]
    last = seg.last_upload if seg.HasField("last_upload") else None
    return page("details.jinja", status, seg=seg, row=Row.of(seg, job),
                busy=seg.state == pb.SEGMENT_STATE_PROCESSING or job is not None,
                chart=chart.trend_svg(points, marks=rollbacks), trend=points,
                reach=[(ch, seg.reachability.get(ch, 0)) for ch in CHANNELS], consumers=consumers(seg),
                history=history, rollback_problem=rollback_problem, last=last, last_problem=problem(last),
                last_state=pb.UploadState.Name(last.state).removeprefix("UPLOAD_STATE_").lower() if last else "")


def with_changes(seg_id, history):
    """The history rows (newest first), each kept version with how many joined and left since the
    version before it (also kept; the first version's are all joined)."""
    for row, before in zip(history, history[1:] + [None]):
        if row.kept and (before is None or before.kept):
            try:
                row.joined, row.left = g.client.change_counts(seg_id, before.version if before else 0, row.version)
            except CallError as exc:
                if exc.reason != "VERSION_EXPIRED":            # dropped since the list was read
                    raise
    return history


@bp.post("/segments/<int:seg_id>/rollback")
def rollback_segment(seg_id):
    """Makes the chosen version the head again (as a new version); a refusal is shown on the page."""
    version = request.form.get("version", "")
    if not version.isdigit():
        return details_page(seg_id, 400, "Choose a version to roll back to.")
    try:
        g.client.rollback(seg_id, int(version))
    except CallError as exc:
        if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
            raise                                      # signing in again, or the server is down: the app's pages
        return details_page(seg_id, STATUS.get(exc.code, 400), str(exc))
    return redirect(url_for("segments.segment_details", seg_id=seg_id), 303)


@bp.get("/segments/<int:seg_id>/status")
def segment_status(seg_id):
    seg = g.client.get_segment(str(seg_id))
    return jsonify(busy=seg.state == pb.SEGMENT_STATE_PROCESSING or job_for(seg) is not None,
                   state=state_name(seg.state), size=seg.size, version=seg.version)


def job_for(seg, active=None):
    """The dashboard's upload running for this segment, if any."""
    jobs = state().jobs.active(g.account) if active is None else active
    return next((j for j in jobs if (j.mode == "replace" and j.target == str(seg.id))
                 or (j.mode == "name" and j.target == seg.name)), None)


@bp.get("/segments/<int:seg_id>/users.csv")
def download_users(seg_id):
    seg = g.client.get_segment(str(seg_id))            # 404 before any byte is sent
    chunks = g.client.export_chunks(seg.id)

    def body():
        try:
            yield from chunks
        except CallError as exc:                       # headers are gone: end the file early
            log.warning("users download broke", extra={"fields": {"segment": seg_id, "error": exc.code.name}})
    return Response(body(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{slug(seg.name)}-users.csv"'})


# -- view models -------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the segments list."""
    id: int | None
    name: str
    size: int
    state: str                         # processing / ready / failed
    busy: bool = False
    created: dt.datetime | None = None
    updated: dt.datetime | None = None
    campaigns: int = 0
    journeys: int = 0
    note: str = ""
    problem: dict | None = None        # the last upload failed: label, upload id
    consumers: list = field(default_factory=list)

    @classmethod
    def of(cls, seg, job):
        last = seg.last_upload if seg.HasField("last_upload") else None
        busy = seg.state == pb.SEGMENT_STATE_PROCESSING or job is not None
        kinds = [c.kind for c in seg.consumers]
        return cls(seg.id, seg.name, seg.size, "processing" if busy else state_name(seg.state), busy,
                   timestamp(seg.create_time), timestamp(seg.update_time), kinds.count(pb.CONSUMER_KIND_CAMPAIGN),
                   kinds.count(pb.CONSUMER_KIND_JOURNEY),
                   note=f"Uploading {job.file_name}…" if job else "",
                   problem=None if busy else problem(last), consumers=consumers(seg))


@dataclass
class HistoryRow:
    """One version in the details page's history."""
    version: int
    time: dt.datetime | None
    size: int
    head: bool
    kept: bool                         # still there to roll back to
    rollback_of: int = 0               # the version a rollback copied
    upload: object = None              # the Upload that made it (mode, file, counts), if one did
    joined: int | None = None          # members that joined since the version before (when both are kept)
    left: int | None = None

    @classmethod
    def of(cls, v):
        return cls(v.version, timestamp(v.create_time), v.size, v.head, v.kept, v.rollback_of,
                   v.upload if v.HasField("upload") else None)

    @property
    def made_by(self):
        if self.rollback_of:
            return f"Rollback to version {self.rollback_of}"
        if self.upload is None:
            return "—"
        mode = pb.UploadMode.Name(self.upload.mode).removeprefix("UPLOAD_MODE_").lower()
        return f"{mode.capitalize()}: {self.upload.file_name or 'a file'}"


def job_notice(job):
    what = f"the new segment {job.target}" if job.mode == "name" else "the segment"
    why = refusal(job.error) if hasattr(job.error, "code") else "the upload broke"
    return f"The upload of {job.file_name} to {what} was refused: {why}"
