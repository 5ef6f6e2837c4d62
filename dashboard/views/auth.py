"""Signing in with an account id and passcode, and out."""
import logging

import grpc
from flask import Blueprint, g, redirect, request, url_for

from listseg.clients.client import CallError
from listseg.dashboard.pages import page, state

log = logging.getLogger("listseg.dashboard")
bp = Blueprint("auth", __name__)


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    st = state()
    target_path = local_path(request.values.get("next"))
    if request.method == "GET":
        if g.session.account or dev_mode(st.anonymous):
            return redirect(target_path)
        return page("signin.jinja", next=target_path)
    account = request.form.get("account", "").strip()
    passcode = request.form.get("passcode", "")
    if not account or not passcode:
        return page("signin.jinja", 400, next=target_path, account=account,
                    error="Enter your account id and passcode.")
    client = st.client(account, passcode)
    try:
        client.check_access()
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


@bp.post("/signout")
def signout():
    st = state()
    st.sessions.drop(g.session.token)
    g.session, g.set_cookie = st.sessions.new(), True
    return redirect(url_for("auth.signin"), 303)


def local_path(value):
    """`next` only ever points inside the dashboard."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value.rstrip("?") or "/"


def dev_mode(client):
    """True when the server needs no credentials: no account exists (the dev mode)."""
    try:
        client.check_access()
        return True
    except CallError as exc:
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return False
        raise
