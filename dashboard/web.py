"""The dashboard as a Flask app: its state, and what every request goes through (session, CSRF, size,
security headers, errors); the pages are blueprints (views/). Every read and write goes through the
public gRPC API with `listseg.Client`, so the dashboard works against any listseg server.

Security: a server-side session (sessions.py) behind an HttpOnly, SameSite=Strict cookie; every POST
needs the session's CSRF token and, when the browser says where it comes from, this origin; pages are
autoescaped and sent with a strict Content-Security-Policy (no inline script or style).
"""
from urllib.parse import urlsplit

import grpc
from flask import Flask, Response, g, jsonify, redirect, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from listseg.clients.client import CallError, Client
from listseg.dashboard import chart
from listseg.dashboard.jobs import Jobs
from listseg.dashboard.pages import CHANNEL_LABELS, MAX_FILE_BYTES, STATUS, page, too_large, when
from listseg.dashboard.sessions import Sessions
from listseg.dashboard.views import BLUEPRINTS

FORM_SLACK = 64 * 1024                   # multipart framing and the other fields, on top of the file
COOKIE = "listseg_session"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


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
    app.extensions["listseg"] = State(target, tls_ca, max_file_bytes, upload_wait_s, timeout)
    app.jinja_env.filters.update(number=lambda n: f"{int(n):,}", when=when, compact=chart.compact,
                                 channels=lambda chs: ", ".join(CHANNEL_LABELS.get(c, c) for c in chs) or "—")
    app.jinja_env.globals.update(CHANNEL_LABELS=CHANNEL_LABELS, max_file_bytes=max_file_bytes,
                                 max_file_mb=max_file_bytes // (1024 * 1024))
    _guard(app, allowed_hosts)
    _handle_errors(app)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    app.add_url_rule("/favicon.ico", "favicon", lambda: Response(status=204))
    return app


def _guard(app, allowed_hosts):
    """Every request: the host, the session, CSRF and size; every response: the cookie and security headers."""
    st = app.extensions["listseg"]

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
        resp.headers.setdefault("Content-Security-Policy", CSP)
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


def _handle_errors(app):
    """An API error or an HTTP error as a page (or, for the pages' polling, as JSON)."""
    st = app.extensions["listseg"]

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
            return redirect(url_for("auth.signin", next=request.full_path if request.method == "GET" else None))
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            return page("error.jinja", 503, title="The listseg server is not reachable", message=(
                f"The dashboard could not reach the listseg server at {st.target}. Is it running?"))
        return page("error.jinja", STATUS.get(exc.code, 500), title="That did not work", message=str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return page("error.jinja", exc.code or 500, title=exc.name, message=exc.description)


def _same_origin():
    """Refuse a POST whose browser says it comes from another origin (CSRF defence in depth)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:                       # an older browser or a script: the CSRF token decides
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host
