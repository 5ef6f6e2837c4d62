"""The dashboard's pages (Flask). Every read and write goes through the public gRPC API with
`listseg.Client`, so the dashboard works against any listseg server.

Security: a server-side session (sessions.py) behind an HttpOnly, SameSite=Strict cookie; every POST
needs the session's CSRF token and, when the browser says where it comes from, this origin; pages are
autoescaped and sent with a strict Content-Security-Policy (no inline script or style).
"""
import csv
import datetime as dt
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import grpc
from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from listseg.clients.client import CallError, Client
from listseg.dashboard import chart
from listseg.dashboard.jobs import Jobs
from listseg.dashboard.sessions import Sessions
from listseg.v1 import listseg_pb2 as pb

log = logging.getLogger("listseg.dashboard")

MAX_FILE_BYTES = 50 * 1024 * 1024        # "You can upload maximum file size of 50 MB from the dashboard."
FORM_SLACK = 64 * 1024                   # multipart framing and the other fields, on top of the file
COOKIE = "listseg_session"
CHANNELS = ("email", "sms", "push", "whatsapp", "webpush")
CHANNEL_LABELS = {"email": "Email", "sms": "SMS", "push": "Push", "whatsapp": "WhatsApp", "webpush": "Web push"}
SAMPLE = 10
ERRORS_SHOWN = 500                       # rejected rows on the troubleshoot page (all are in the download)
STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
          grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.INVALID_ARGUMENT: 400,
          grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
          grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.UNAUTHENTICATED: 401}


class _Flask(Flask):
    def select_jinja_autoescape(self, filename):
        return True          # the templates are *.jinja; escape everything, always


class State:
    """What the app keeps between requests."""

    def __init__(self, target, tls_ca, max_file_bytes, upload_wait_s, timeout):
        self.target, self.tls_ca, self.timeout = target, tls_ca, timeout
        self.max_file_bytes, self.upload_wait_s = max_file_bytes, upload_wait_s
        self.anonymous = self.client()
        self.sessions = Sessions()
        self.jobs = Jobs()

    def client(self, account=None, passcode=None):
        c = Client(self.target, account or None, passcode or None, tls_ca=self.tls_ca, timeout=self.timeout)
        if not account:
            c.metadata = ()  # never the LISTSEG_ACCOUNT/PASSCODE of whoever started the dashboard
        return c

    def job_client(self, client):
        """A client of its own for one upload (same credentials), so that signing out does not cut it."""
        c = self.client()
        c.metadata = client.metadata
        return c

    def close(self):
        self.sessions.close()
        self.anonymous.close()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def create_app(target, tls_ca=None, max_file_bytes=MAX_FILE_BYTES, upload_wait_s=1.0, timeout=30.0,
               allowed_hosts=None):
    """The dashboard as a WSGI app, for the listseg gRPC server at `target`. `allowed_hosts`: the host
    names the Host header may carry (None: any); a loopback dashboard allows only loopback names, so that
    a web page cannot reach it through DNS rebinding."""
    app = _Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=max_file_bytes + FORM_SLACK, MAX_FORM_MEMORY_SIZE=64 * 1024)
    st = app.extensions["listseg"] = State(target, tls_ca, max_file_bytes, upload_wait_s, timeout)
    app.jinja_env.filters.update(number=lambda n: f"{int(n):,}", when=_when, compact=chart.compact,
                                 channels=lambda chs: ", ".join(CHANNEL_LABELS.get(c, c) for c in chs) or "—")
    app.jinja_env.globals.update(CHANNEL_LABELS=CHANNEL_LABELS, max_file_bytes=max_file_bytes,
                                 max_file_mb=max_file_bytes // (1024 * 1024))

    # -- every request: session, CSRF, size ------------------------------------------------------
    @app.before_request
    def load_session():
        if allowed_hosts is not None and urlsplit("//" + request.host).hostname not in allowed_hosts:
            return Response("unknown host\n", 400, mimetype="text/plain")
        if request.endpoint == "static":
            return None
        sess = st.sessions.get(request.cookies.get(COOKIE))
        g.set_cookie = sess is None
        g.session = sess or st.sessions.new()
        g.client = g.session.client or st.anonymous
        g.account = g.session.account or ""
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if (request.content_length or 0) > app.config["MAX_CONTENT_LENGTH"]:
                return too_large()
            if not _same_origin():
                return page("error.jinja", 403, title="Refused", message=(
                    "This form was sent from another site, so it was refused."))
            if not g.session.check_csrf(request.form.get("csrf_token")):
                return page("error.jinja", 403, title="This form has expired", message=(
                    "The form's security token is missing or out of date (the page may be old, or you "
                    "signed in elsewhere). Go back, reload the page and try again."))
        return None

    @app.after_request
    def headers(resp):
        if getattr(g, "set_cookie", False):
            resp.set_cookie(COOKIE, g.session.token, httponly=True, samesite="Strict", path="/",
                            secure=request.is_secure)
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        if request.endpoint != "static":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.context_processor
    def common():
        return {"csrf_token": g.session.csrf if "session" in g else "",
                "signed_in_as": g.session.account if "session" in g else None}

    def page(template, status=200, **ctx):
        return render_template(template, **ctx), status

    def too_large():
        return page("error.jinja", 413, title="File too large", message=(
            f"The file is larger than {max_file_bytes // (1024 * 1024)} MB, the most the dashboard takes. "
            "Split it into smaller files, or upload it with the API or `listseg upload` (up to 5 GB)."))

    @app.errorhandler(RequestEntityTooLarge)
    def entity_too_large(_exc):
        return too_large()

    @app.errorhandler(CallError)
    def api_error(exc):
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            if g.session.account:                     # the passcode stopped working: sign in again
                st.sessions.drop(g.session.token)
                g.session, g.set_cookie = st.sessions.new(), True
            if request.path.endswith("/rows") or request.path.endswith("/status"):
                return jsonify(error="sign in"), 401
            return redirect(url_for("signin", next=request.full_path if request.method == "GET" else None))
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            return page("error.jinja", 503, title="The listseg server is not reachable", message=(
                f"The dashboard could not reach the listseg server at {st.target}. Is it running?"))
        return page("error.jinja", STATUS.get(exc.code, 500), title="That did not work", message=str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return page("error.jinja", exc.code or 500, title=exc.name, message=exc.description)

    # -- sign-in ---------------------------------------------------------------------------------
    @app.route("/signin", methods=["GET", "POST"])
    def signin():
        target_path = _local_path(request.values.get("next"))
        if request.method == "GET":
            if g.session.account or _dev_mode(st.anonymous):
                return redirect(target_path)
            return page("signin.jinja", next=target_path)
        account = request.form.get("account", "").strip()
        passcode = request.form.get("passcode", "")
        if not account or not passcode:
            return page("signin.jinja", 400, next=target_path, account=account,
                        error="Enter your account id and passcode.")
        client = st.client(account, passcode)
        try:
            _probe(client)
        except CallError as exc:
            client.close()
            if exc.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
            log.info("dashboard sign-in refused", extra={"fields": {"account": account[:64]}})
            return page("signin.jinja", 401, next=target_path, account=account,
                        error="That account id and passcode do not match.")
        st.sessions.drop(g.session.token)              # a fresh session (and CSRF token) for the account
        g.session, g.set_cookie = st.sessions.new(account, client), True
        return redirect(target_path, 303)

    @app.post("/signout")
    def signout():
        st.sessions.drop(g.session.token)
        g.session, g.set_cookie = st.sessions.new(), True
        return redirect(url_for("signin"), 303)

    # -- segments --------------------------------------------------------------------------------
    @app.get("/")
    def index():
        rows = segment_rows()
        notices = [_job_notice(j) for j in st.jobs.unshown_errors(g.account)]
        return page("segments.jinja", rows=rows, notices=notices, busy=any(r.busy for r in rows))

    @app.get("/segments/rows")
    def rows_fragment():
        rows = segment_rows()
        return page("_rows.jinja", rows=rows, busy=any(r.busy for r in rows))

    def segment_rows():
        jobs = st.jobs.active(g.account)
        rows, names = [], set()
        for s in g.client.list_segments():                   # each with its last upload
            names.add(s.name)
            job = next((j for j in jobs if (j.mode == "replace" and j.target == str(s.id))
                        or (j.mode == "name" and j.target == s.name)), None)
            rows.append(Row.of(s, job))
        for j in jobs:                                       # creates the server has not seen yet
            if j.mode == "name" and j.target not in names:
                names.add(j.target)
                rows.append(Row(None, j.target, 0, "processing", busy=True, note=f"Uploading {j.file_name}…"))
        # a failed create leaves no segment: its row stays while the job is remembered, for the
        # troubleshoot link
        for j in st.jobs.finished(g.account):
            up = j.upload
            if j.mode == "name" and up is not None and up.state == pb.UPLOAD_STATE_FAILED and j.target not in names:
                names.add(j.target)
                rows.append(Row(None, j.target, 0, "failed", created=_dt(up.create_time),
                                updated=_dt(up.finish_time), problem=_problem(up)))
        return rows

    @app.route("/segments/new", methods=["GET", "POST"])
    def new_segment():
        if request.method == "GET":
            _probe(g.client)                                 # sign in first if that is needed
            return page("upload.jinja", mode="create", name=request.args.get("name", ""))
        name = request.form.get("name", "").strip()
        problems = [] if name else ["Name the segment."]
        return start_upload("name", name, problems, {"mode": "create", "name": name})

    @app.route("/segments/<int:seg_id>/replace", methods=["GET", "POST"])
    def replace_segment(seg_id):
        seg = g.client.get_segment(str(seg_id))
        if request.method == "GET":
            return page("upload.jinja", mode="replace", segment=seg, consumers=_consumers(seg))
        return start_upload("replace", str(seg_id), [], {"mode": "replace", "segment": seg})

    def start_upload(mode, target, problems, ctx):
        f = request.files.get("file")
        notify = [a.strip() for a in re.split(r"[,;\s]+", request.form.get("notify", "")) if a.strip()]
        ctx.update(notify=request.form.get("notify", ""))
        if f is None or not f.filename:
            problems.insert(0, "Choose a CSV file to upload.")
        bad = [a for a in notify if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a)]
        if bad:
            problems.append(f"Not an email address: {bad[0]}")
        if problems:
            return page("upload.jinja", 400, problems=problems, **_with_consumers(ctx))
        tmpdir = tempfile.mkdtemp(prefix="listseg-dashboard-")
        path = os.path.join(tmpdir, _file_name(f.filename))
        try:
            f.save(path)
            size = os.path.getsize(path)
        except BaseException:
            _rmtree(tmpdir)
            raise
        if size > max_file_bytes:
            _rmtree(tmpdir)
            return too_large()
        if size == 0:
            _rmtree(tmpdir)
            return page("upload.jinja", 400, problems=["The file is empty."], **_with_consumers(ctx))
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
                return page("upload.jinja", 409, in_use=True, **_with_consumers(dict(ctx, segment=seg)))
            return page("upload.jinja", STATUS.get(exc.code, 400), problems=[_refusal(exc)],
                        **_with_consumers(ctx))
        return redirect(url_for("index"), 303)

    def _with_consumers(ctx):
        if ctx.get("segment") is not None:
            ctx["consumers"] = _consumers(ctx["segment"])
        return ctx

    @app.get("/segments/<int:seg_id>")
    def segment_details(seg_id):
        seg = g.client.get_segment(str(seg_id), sample=SAMPLE)
        busy = seg.state == pb.SEGMENT_STATE_PROCESSING or _job_for(seg) is not None
        points = [(_dt(t.time), t.size) for t in seg.trend]
        reach = [(ch, seg.reachability.get(ch, 0)) for ch in CHANNELS]
        last = seg.last_upload if seg.HasField("last_upload") else None
        return page("details.jinja", seg=seg, row=Row.of(seg, _job_for(seg)), busy=busy,
                    chart=chart.trend_svg(points), trend=points, reach=reach, consumers=_consumers(seg),
                    last=last, last_problem=_problem(last),
                    last_state=pb.UploadState.Name(last.state).removeprefix("UPLOAD_STATE_").lower() if last else "")

    @app.get("/segments/<int:seg_id>/status")
    def segment_status(seg_id):
        seg = g.client.get_segment(str(seg_id))
        return jsonify(busy=seg.state == pb.SEGMENT_STATE_PROCESSING or _job_for(seg) is not None,
                       state=_state_name(seg.state), size=seg.size, version=seg.version)

    def _job_for(seg):
        return next((j for j in st.jobs.active(g.account) if (j.mode == "replace" and j.target == str(seg.id))
                     or (j.mode == "name" and j.target == seg.name)), None)

    @app.get("/segments/<int:seg_id>/users.csv")
    def download_users(seg_id):
        seg = g.client.get_segment(str(seg_id))            # 404 before any byte is sent
        stream = g.client.segments.ExportMembers(pb.ExportMembersRequest(segment=str(seg.id)),
                                                 timeout=g.client.upload_timeout, metadata=g.client.metadata)

        def body():
            try:
                for msg in stream:
                    yield msg.data
            except grpc.RpcError as exc:                   # headers are gone: end the file early
                log.warning("users download broke", extra={"fields": {"segment": seg_id, "error": exc.code().name}})
        return Response(body(), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{_slug(seg.name)}-users.csv"'})

    # -- uploads (troubleshooting) ---------------------------------------------------------------
    @app.get("/uploads/<int:upload_id>")
    def upload_report(upload_id):
        up = g.client.get_upload(upload_id)
        seg = None
        if up.segment:
            try:
                seg = g.client.get_segment(up.segment)
            except CallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
        resp = g.client.segments.ListUploadErrors(pb.ListUploadErrorsRequest(id=upload_id, page_size=ERRORS_SHOWN),
                                                  timeout=g.client.timeout, metadata=g.client.metadata)
        busy = up.state in (pb.UPLOAD_STATE_RECEIVING, pb.UPLOAD_STATE_PROCESSING)
        return page("upload_report.jinja", up=up, seg=seg, errors=list(resp.errors), more=bool(resp.next_page_token),
                    problem=_problem(up), busy=busy, seg_updated=_dt(seg.update_time) if seg else None,
                    mode=pb.UploadMode.Name(up.mode).removeprefix("UPLOAD_MODE_").lower())

    @app.get("/uploads/<int:upload_id>/status")
    def upload_status(upload_id):
        up = g.client.get_upload(upload_id)
        return jsonify(busy=up.state in (pb.UPLOAD_STATE_RECEIVING, pb.UPLOAD_STATE_PROCESSING))

    @app.get("/uploads/<int:upload_id>/rejected.csv")
    def download_rejected(upload_id):
        g.client.get_upload(upload_id)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["line", "reason"])
        writer.writerows(g.client.upload_errors(upload_id, page_size=10_000))
        return Response(out.getvalue(), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="upload-{upload_id}-rejected-rows.csv"'})

    # -- profiles --------------------------------------------------------------------------------
    @app.get("/profile")
    def profile():
        guid = request.args.get("guid", "")
        if not guid:
            return page("error.jinja", 400, title="Which user?", message="Open a user from a segment's sample.")
        prof = g.client.get_profile(guid=guid)
        back, seg = request.args.get("segment", ""), None
        if back.isdigit():
            try:
                seg = g.client.get_segment(back)
            except CallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
        return page("profile.jinja", profile=prof, seg=seg)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    return app


# -- view helpers ----------------------------------------------------------------------------------
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
        return cls(seg.id, seg.name, seg.size, "processing" if busy else _state_name(seg.state), busy,
                   _dt(seg.create_time), _dt(seg.update_time), kinds.count(pb.CONSUMER_KIND_CAMPAIGN),
                   kinds.count(pb.CONSUMER_KIND_JOURNEY),
                   note=f"Uploading {job.file_name}…" if job else "",
                   problem=None if busy else _problem(last), consumers=_consumers(seg))


def _state_name(state):
    return pb.SegmentState.Name(state).removeprefix("SEGMENT_STATE_").lower()


def _problem(up):
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


def _consumers(seg):
    return [{"kind": "Campaign" if c.kind == pb.CONSUMER_KIND_CAMPAIGN else "Journey", "id": c.id, "name": c.name}
            for c in seg.consumers]


def _refusal(exc):
    text = str(exc)
    if exc.code == grpc.StatusCode.ALREADY_EXISTS:
        return f"{text}. Pick another name, or replace that segment from its action menu."
    if exc.reason == "TOO_MANY_UPLOADS":
        return f"{text}. Wait for one to finish, then try again."
    return text


def _job_notice(job):
    what = f"the new segment {job.target}" if job.mode == "name" else "the segment"
    return f"The upload of {job.file_name} to {what} was refused: {_refusal(job.error) if hasattr(job.error, 'code') else 'the upload broke'}"


def _dt(ts):
    if not ts.seconds and not ts.nanos:
        return None
    return dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, dt.timezone.utc)


def _when(value):
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:80] or "segment"


def _file_name(name):
    base = os.path.basename(name.replace("\\", "/"))
    return re.sub(r"[^\w.\- ]+", "_", base).strip(" .")[:120] or "upload.csv"


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _local_path(value):
    """`next` only ever points inside the dashboard."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value.rstrip("?") or "/"


def _same_origin():
    """Refuse a POST whose browser says it comes from another origin (CSRF defence in depth)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:                       # an older browser or a script: the CSRF token decides
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


def _probe(client):
    """One cheap call: raises CallError (UNAUTHENTICATED, UNAVAILABLE...) if the client cannot use the API."""
    try:
        client.segments.ListSegments(pb.ListSegmentsRequest(page_size=1), timeout=client.timeout,
                                     metadata=client.metadata)
    except grpc.RpcError as err:
        raise CallError.from_rpc(err) from None


def _dev_mode(client):
    """True when the server needs no credentials: no account exists (the dev mode)."""
    try:
        _probe(client)
        return True
    except CallError as exc:
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return False
        raise
