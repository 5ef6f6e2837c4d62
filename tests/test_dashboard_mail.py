"""The completion email, against a real SMTP server (aiosmtpd) on loopback; and the serve flags that
wire the dashboard and the email into `listseg serve`."""
import asyncio
import email
import email.policy
import logging
import signal
import ssl
import subprocess
import sys
import time

import grpc
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from conftest import needs_tgkill
from harness import InProcess, free_port, signal_a_worker_thread, start_server, stop_server
from listseg import CallError, Client
from listseg.clients import cli
from listseg.core.engine import Engine
from listseg.dashboard.server import Dashboard
from listseg.server.app import Helpers
from listseg.server.mail import Mailer
from test_dashboard import PROFILES, Web, csv, wait_for


class Inbox:
    """An aiosmtpd handler that keeps every message; `delay` seconds before accepting one."""

    def __init__(self, delay=0.0):
        self.messages, self.delay = [], delay

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def wait(self, n=1, timeout=15):
        wait_for(lambda: len(self.messages) >= n, timeout)
        return self.messages[n - 1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctrl = Controller(inbox, hostname="127.0.0.1", port=free_port())
    ctrl.start()
    yield inbox, ctrl.port
    ctrl.stop()


@pytest.fixture
def served(smtp, serve):
    """A gRPC server whose uploads email through the test's SMTP server; (client, inbox, server)."""
    inbox, port = smtp
    mailer = Mailer("127.0.0.1", port, sender="listseg@example.com", dashboard_url="http://dash.example:8080/",
                    backoff_s=0.01)
    server = serve(mailer=mailer, max_upload_bytes=100_000)
    with Client(server.target, timeout=10) as c:
        c.import_profiles(PROFILES)
        yield c, inbox, server.server


def body(msg):
    return msg.get_body(("plain",)).get_content()


def test_success_email_one_per_upload(served):
    client, inbox, _ = served
    up = client.upload(csv("g1", "g2", "g3", "g3", "nobody", extra=b"x,bad\n"), name="vip",
                       notify_emails=["ana@example.com", "Bo@Example.com", "ana@example.com"])
    sender, rcpts, msg = inbox.wait()
    assert sender == "listseg@example.com" and rcpts == ["ana@example.com", "Bo@Example.com"]
    assert msg["Subject"] == "Segment vip is ready: 3 users"
    text = body(msg)
    for line in ("Segment:  vip", "Size:     3 users (version 1)", "Rows in the file: 6", "qualified   3",
                 "unknown     1", "invalid     1", "duplicates  1", "line 7: bad type",
                 f"Segment details: http://dash.example:8080/segments/{up.segment}"):
        assert line in text, line
    time.sleep(0.2)
    assert len(inbox.messages) == 1                          # one email for the upload, to everyone
    client.upload(csv("g4"), name="quiet")                    # no recipients: no email
    time.sleep(0.2)
    assert len(inbox.messages) == 1


def test_failed_reupload_email_says_the_last_version_stays(served):
    client, inbox, _ = served
    client.upload(csv("g1", "g2"), name="vip")
    up = client.upload(csv("nobody", extra=b"q,zz\ng,\n"), replace="vip", notify_emails=["ana@example.com"])
    _, _, msg = inbox.wait()
    assert msg["Subject"] == "File re-upload failed: vip"
    text = body(msg)
    for line in ("Reason: no row names a known profile",
                 "The segment stays available with its last successful update: 2 users.",
                 "unknown     1", "invalid     2", "line 3: bad type", "line 4: empty identity",
                 f"Troubleshoot this upload: http://dash.example:8080/uploads/{up.id}"):
        assert line in text, line
    assert client.get_segment("vip").size == 2


def test_failed_create_and_broken_stream_emails(served):
    client, inbox, _ = served
    client.upload(csv("nobody"), name="ghost", notify_emails=["ana@example.com"])
    _, _, msg = inbox.wait(1)
    assert msg["Subject"] == "File upload failed: ghost" and "Fix the errors" in body(msg)
    client.upload(csv("g1"), name="vip")
    with pytest.raises(CallError) as e:                       # over the server's size limit: the call fails...
        client.upload(csv(*[f"g{k % 300}" for k in range(20_000)]), replace="vip", notify_emails=["ana@example.com"])
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _, _, msg = inbox.wait(2)                                 # ...and the email still says so
    assert msg["Subject"] == "File re-upload failed: vip" and "file too large" in body(msg)
    assert "last successful update: 1 users" in body(msg)


def test_bad_addresses_are_refused_before_anything_changes(served):
    client, _, _ = served
    for addresses in (["nope"], ["a@b.com\r\nBcc: x@y.com"], ["a@b.com, c@d.com"],
                      [f"u{k}@example.com" for k in range(21)]):
        with pytest.raises(CallError) as e:
            client.upload(csv("g1"), name="x", notify_emails=addresses)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.list_segments() == []


def test_a_dead_or_slow_mail_server_never_fails_or_delays_the_upload(tmp_path, caplog):
    inbox = Inbox(delay=2.0)
    ctrl = Controller(inbox, hostname="127.0.0.1", port=free_port())
    ctrl.start()
    dead = Mailer("127.0.0.1", free_port(), backoff_s=0.01, timeout_s=2)
    served = InProcess(tmp_path / "data", mailer=dead)
    server = served.server
    try:
        with Client(served.target, timeout=10) as c, caplog.at_level(logging.WARNING, "listseg.server"):
            c.import_profiles(PROFILES)
            up = c.upload(csv("g1"), name="a", notify_emails=["ana@example.com"])
            assert up.state == 3                              # SUCCEEDED
            assert dead.notify(["ana@example.com"], {"id": 9, "state": "succeeded", "mode": "create"}).result(10) is False
            assert any(r.getMessage() == "email failed" for r in caplog.records)
        server.services.mailer = Mailer("127.0.0.1", ctrl.port)            # now a slow one
        with Client(served.target, timeout=10) as c:
            started = time.monotonic()
            c.upload(csv("g2"), name="b", notify_emails=["ana@example.com"])
            assert time.monotonic() - started < 1.5                        # the server answered at once
            inbox.wait(1, timeout=10)                                      # and the email came later
        server.services.mailer.close()
    finally:
        served.stop()
        ctrl.stop()


def test_starttls_and_login(tmp_path):
    from test_limits_security import _certificates
    certs = _certificates(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs["cert"], certs["key"])

    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"u", b"s3cret")
        return AuthResult(success=ok, handled=False)            # False: the server answers 535
    inbox = Inbox()
    ctrl = Controller(inbox, hostname="127.0.0.1", port=free_port(), tls_context=server_tls, require_starttls=True,
                      authenticator=check, auth_required=True)
    ctrl.start()
    try:
        client_tls = ssl.create_default_context(cafile=certs["ca"])
        upload = {"id": 1, "state": "succeeded", "mode": "create", "segment": 1, "segment_name": "vip",
                  "report": {"size": 3, "rows": 3, "qualified": 3}}
        good = Mailer("127.0.0.1", ctrl.port, user="u", password="s3cret", starttls=True, ssl_context=client_tls)
        assert good.notify(["ana@example.com"], upload).result(15) is True
        assert inbox.wait()[2]["Subject"] == "Segment vip is ready: 3 users"
        wrong = Mailer("127.0.0.1", ctrl.port, user="u", password="nope", starttls=True, ssl_context=client_tls,
                       backoff_s=5)
        started = time.monotonic()
        assert wrong.notify(["ana@example.com"], upload).result(15) is False
        assert time.monotonic() - started < 4                  # a refused login is not retried
        plain = Mailer("127.0.0.1", ctrl.port, backoff_s=0.01)  # no STARTTLS: the server refuses
        assert plain.notify(["ana@example.com"], upload).result(15) is False
        assert len(inbox.messages) == 1
    finally:
        ctrl.stop()


def test_the_upload_page_sends_the_email(served):
    client, inbox, _ = served
    dash = Dashboard(client.target, "127.0.0.1:0").start()
    try:
        web = Web(dash.url)
        assert web.upload("/segments/new", csv("g1", "g2"), name="from-web", notify="ana@example.com, bo@example.com"
                          ).status == 303
        _, rcpts, msg = inbox.wait()
        assert rcpts == ["ana@example.com", "bo@example.com"] and msg["Subject"] == "Segment from-web is ready: 2 users"
    finally:
        dash.stop()


def test_serve_wires_http_smtp_and_cli_notify(tmp_path, smtp, capsys):
    """`listseg serve --http --smtp`, `listseg upload --notify`: the email links to the served dashboard."""
    inbox, smtp_port = smtp
    data = str(tmp_path / "data")
    with Engine(data) as e:
        e.account().profiles.upsert([(f"g{k}", None, ["email"]) for k in range(5)])
    http_port = free_port()
    proc, target = start_server(data, "--http", f"127.0.0.1:{http_port}", "--smtp", f"127.0.0.1:{smtp_port}",
                                "--smtp-from", "segments@example.com")
    try:
        path = tmp_path / "vip.csv"
        path.write_bytes(csv("g1", "g2"))
        assert cli.main(["--server", target, "upload", str(path), "--name", "vip",
                         "--notify", "ana@example.com,bo@example.com"]) == 0
        sender, rcpts, msg = inbox.wait()
        assert sender == "segments@example.com" and rcpts == ["ana@example.com", "bo@example.com"]
        link = f"http://127.0.0.1:{http_port}/segments/1"
        assert f"Segment details: {link}" in body(msg)
        page = Web(link).get("/segments/1")
        assert page.status == 200 and "vip" in page.text and "<svg" in page.text
        assert cli.main(["--server", target, "upload", str(path), "--name", "x", "--notify", "nope"]) == 1
        assert "not an email address" in capsys.readouterr().err
    finally:
        stop_server(proc)


@pytest.mark.parametrize("to_thread", [False, pytest.param(True, marks=needs_tgkill)])
def test_listseg_dashboard_command(tmp_path, to_thread):
    """It serves, and stops on SIGTERM, whichever of its threads the signal is handed to."""
    served = InProcess(tmp_path / "data", map_size=1 << 26)
    http_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "listseg.clients.cli", "--server", served.target,
                             "dashboard", "--http", f"127.0.0.1:{http_port}"], stderr=subprocess.PIPE)
    try:
        web = Web(f"http://127.0.0.1:{http_port}")

        def up():
            try:
                return web.get("/").status == 200
            except OSError:
                return False
        wait_for(up, timeout=20)
        if to_thread:
            signal_a_worker_thread(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        assert proc.wait(20) == 0
        assert b'"msg": "dashboard"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        served.stop()


def test_serve_http_over_tls(tmp_path):
    """With --tls-cert, the served dashboard reaches the gRPC port over TLS (trusting --tls-ca)."""
    from test_limits_security import _certificates
    certs = _certificates(tmp_path)
    served = InProcess(tmp_path / "data", map_size=1 << 26, tls=(certs["cert"], certs["key"]))
    helpers = Helpers(str(tmp_path / "data"), "127.0.0.1:0", (certs["cert"], certs["key"]), certs["ca"],
                      "127.0.0.1:0", None).start(served.port)
    try:
        page = Web(helpers.running[0].url).get("/")
        assert page.status == 200 and "No segments yet" in page.text
    finally:
        helpers.stop()
        served.stop()


def test_no_smtp_configured_logs_and_sends_nothing(caplog):
    with caplog.at_level(logging.WARNING, "listseg.server"):
        assert Mailer().notify(["a@example.com"], {"id": 1}).result(1) is False
    assert "no SMTP server configured" in caplog.text
