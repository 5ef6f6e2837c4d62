"""The web dashboard over plain HTTP: pages, uploads, troubleshooting, downloads, CSRF, sign-in, limits.

A real gRPC server (in process, ephemeral port) and the real dashboard (waitress, ephemeral port); the
dashboard reaches segments only through the gRPC API.
"""
import http.client
import re
import time
import uuid
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import upload_state
from listseg import Client
from listseg.core.accounts import Credentials
from listseg.dashboard.server import Dashboard

PROFILES = b"guid,identity,channels\n" + b"".join(
    b"g%d,user%d@x.com,%s\n" % (k, k, [b"email", b"sms;push", b""][k % 3]) for k in range(300))


def csv(*guids, extra=b""):
    return b"Type,Identity\n" + b"".join(b"g,%s\n" % g.encode() for g in guids) + extra


class Web:
    """A tiny browser over http.client: a cookie jar, forms with the CSRF token, multipart files."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.body = resp.read()
        resp.text = resp.body.decode("utf-8", "replace")
        resp.cookie_headers = resp.headers.get_all("Set-Cookie") or []
        for header in resp.cookie_headers:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        conn.close()
        return resp

    def get(self, path):
        return self.request("GET", path)

    def csrf(self, path="/segments/new"):
        resp = self.get(path)
        if resp.status in (302, 303):                     # e.g. to /signin
            resp = self.get(resp.headers["Location"])
        page = resp.text
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page[:2000]
        return found.group(1)

    def post(self, path, fields=None, files=None, token=True, headers=None):
        fields = dict(fields or {})
        if token is True:
            fields["csrf_token"] = self.csrf()
        elif token:
            fields["csrf_token"] = token
        if files is None:
            body = urlencode(fields).encode()
            ctype = "application/x-www-form-urlencoded"
        else:
            boundary = uuid.uuid4().hex
            parts = []
            for k, v in fields.items():
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
            for k, (filename, data) in files.items():
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{filename}"\r\n'
                             f"Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n")
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={boundary}"
        return self.request("POST", path, body, {"Content-Type": ctype, **(headers or {})})

    def upload(self, path, data, filename="list.csv", **fields):
        return self.post(path, fields, files={"file": (filename, data)})


def wait_for(condition, timeout=20):
    deadline = time.time() + timeout
    while not (result := condition()):
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    return result


#: The dashboard works alike on the embedded store and on a real Redis Cluster (conftest `backend`).
BACKENDS = ["lmdb", "redis-cluster"]


@pytest.fixture
def stack(backend, server):
    """(engine, grpc target, dashboard) with 300 profiles, in dev mode (no account)."""
    dash = Dashboard(server.target, "127.0.0.1:0").start()
    with Client(server.target) as c:
        c.import_profiles(PROFILES)
    yield server.engine, server.target, dash
    dash.stop()


@pytest.fixture
def web(stack):
    return Web(stack[2].url)


@pytest.fixture
def client(stack):
    with Client(stack[1], timeout=10) as c:
        yield c


def test_segments_list_and_session_cookie(stack, web, client):
    client.upload(csv("g1", "g2"), name="vip")
    client.attach("vip", "campaign", "c-1")
    resp = web.get("/")
    assert resp.status == 200
    cookie = resp.cookie_headers[0]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    row = re.search(r'<tr data-segment="vip" data-state="ready">(.*?)</tr>', resp.text, re.S).group(1)
    assert ">2</td>" in row and ">1</td>" in row                      # size 2, one campaign
    assert "Ready" in row and "UTC" in row                             # state, created and updated times
    assert web.get("/static/app.js").status == 200


def test_create_from_the_upload_form_then_details(stack, web, client):
    resp = web.upload("/segments/new", csv("g1", "g2", "g3", "nobody", extra=b"x,bad\n"), name="vip",
                      filename="vip.csv")
    assert resp.status == 303 and resp.headers["Location"] == "/"
    seg = wait_for(lambda: next((s for s in client.list_segments() if s.name == "vip" and s.size), None))
    assert seg.size == 3
    page = web.get(f"/segments/{seg.id}").text
    assert "<svg" in page and 'class="line"' in page                   # the trend chart, drawn server-side
    reach = re.search(r'id="reachability">(.*?)</table>', page, re.S).group(1)
    assert re.search(r'data-channel="email">.*?>1</td>', reach, re.S)  # g3 is the one on email
    assert re.search(r'data-channel="sms">.*?>1</td>', reach, re.S)
    assert page.count("/profile?guid=") == 3                          # sample users open their profile
    assert "vip.csv" in page and "1 invalid" in page                  # the last upload
    prof = web.get(f"/profile?guid=g1&segment={seg.id}").text
    assert "user1@x.com" in prof and "SMS" in prof and "Push" in prof and "Email" not in prof
    users = web.get(f"/segments/{seg.id}/users.csv")
    assert users.headers["Content-Disposition"] == 'attachment; filename="vip-users.csv"'
    assert users.body == client.export("vip") == b"Type,Identity\ng,g1\ng,g2\ng,g3\n"


def test_failed_reupload_troubleshoot_page_and_rejected_rows(stack, web, client):
    client.upload(csv("g1", "g2"), name="vip")
    bad = csv("nobody", extra=b"q,zz\ng,\n")
    assert web.upload("/segments/1/replace", bad).status == 303
    failed = wait_for(lambda: (s := client.get_segment("vip")).last_upload.id == 2 and s)
    assert failed.size == 2
    listing = web.get("/").text
    assert "File re-upload failed" in listing and 'href="/uploads/2"' in listing
    page = web.get("/uploads/2").text
    assert "File re-upload failed" in page and "no row names a known profile" in page
    assert "last successful update" in page and 'id="live-size">2<' in page
    assert 'data-count="unknown">1<' in page and 'data-count="invalid">2<' in page
    assert "bad type" in page and "empty identity" in page
    rejected = web.get("/uploads/2/rejected.csv")
    assert rejected.headers["Content-Type"].startswith("text/csv")
    assert rejected.text == "line,reason\n3,bad type\n4,empty identity\n"
    assert web.get("/segments/1").text.count("File re-upload failed") == 1


def test_failed_create_says_upload_failed_and_the_name_stays_free(web, client):
    assert web.upload("/segments/new", csv("nobody"), name="ghost").status == 303
    wait_for(lambda: upload_state(client, 1) == 4)                        # FAILED
    assert client.list_segments() == []                                   # it left no segment...
    listing = web.get("/").text                                           # ...but the list still says so
    assert 'data-segment="ghost" data-state="failed"' in listing
    assert "File upload failed" in listing and 'href="/uploads/1"' in listing
    page = web.get("/uploads/1").text
    assert "File upload failed" in page and "could not be created" in page and "no row names a known profile" in page
    assert 'data-count="unknown">1<' in page and 'href="/segments/new?name=ghost"' in page
    assert 'id="name" name="name" value="ghost"' in web.get("/segments/new?name=ghost").text
    assert web.upload("/segments/new", csv("g1"), name="ghost").status == 303     # fixed, uploaded again
    seg = wait_for(lambda: next((s for s in client.list_segments() if s.state == 2), None))   # READY
    assert (seg.name, seg.size) == ("ghost", 1)
    listing = web.get("/").text
    assert 'data-segment="ghost" data-state="ready"' in listing and "File upload failed" not in listing


def test_replace_in_use_is_refused_naming_consumers(web, client):
    client.upload(csv("g1", "g2"), name="vip")
    client.attach("vip", "campaign", "spring-sale", "Spring sale")
    client.attach("vip", "journey", "welcome")
    assert "spring-sale" in web.get("/segments/1/replace").text          # warned before trying
    resp = web.upload("/segments/1/replace", csv("g3"))
    assert resp.status == 409
    assert "nothing was changed" in resp.text
    assert "spring-sale" in resp.text and "Spring sale" in resp.text and "welcome" in resp.text
    assert client.export("vip") == csv("g1", "g2")


def test_history_table_rolls_back_with_a_confirmation_and_marks_the_trend(web, client, tmp_path):
    (tmp_path / "first.csv").write_bytes(csv("g1", "g2"))
    (tmp_path / "second.csv").write_bytes(csv("g3", extra=b"g,nobody\n"))
    client.upload(str(tmp_path / "first.csv"), name="vip")
    client.upload(str(tmp_path / "second.csv"), replace="vip")
    page = web.get("/segments/1").text
    history = re.search(r'id="version-history">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r'<tr data-version="(\d+)"( class="head")?>(.*?)</tr>', history, re.S)
    assert [(v, bool(head)) for v, head, _ in rows] == [("2", True), ("1", False)]      # newest first
    assert "Replace: second.csv" in rows[0][2] and re.search(r">1</td>\s*<td class=\"num\">1</td>", rows[0][2])
    assert "Create: first.csv" in rows[1][2] and 'href="/uploads/1"' in rows[1][2]
    assert "Roll back" not in rows[0][2]                                  # not to the head itself
    changes = [re.search(r'class="joined">\+(\d+)</span> / <span class="left">−(\d+)<', r[2]).groups() for r in rows]
    assert changes == [("1", "2"), ("2", "0")]                             # joined and left since the one before
    confirm = re.search(r"<details class=\"confirm\">(.*?)</details>", rows[1][2], re.S).group(1)
    assert 'name="version" value="1"' in confirm and "2 users" in confirm and 'name="csrf_token"' in confirm
    assert 'class="mark"' not in page
    resp = web.post("/segments/1/rollback", {"version": "1"}, token=web.csrf("/segments/1"))
    assert resp.status == 303 and resp.headers["Location"] == "/segments/1"
    assert client.export("vip") == csv("g1", "g2")                       # the rollback took
    page = web.get("/segments/1").text
    assert re.search(r'<tr data-version="3" class="head">.*?\+2</span> / <span class="left">−1<.*?Rollback to version 1',
                     page, re.S)
    assert page.count('class="mark"') == 1 and "Rollback to version 1</title>" in page   # marked on the trend
    client.attach("vip", "journey", "welcome")
    page = web.get("/segments/1").text
    assert "Roll back…" not in page and "it cannot\n    be rolled back" in page   # in use: no action offered...
    refused = web.post("/segments/1/rollback", {"version": "2"})                    # ...nor taken
    assert refused.status == 409 and 'id="rollback-problem"' in refused.text and "welcome" in refused.text
    assert client.get_segment("vip").version == 3                          # nothing changed
    assert web.post("/segments/1/rollback", {"version": "x"}).status == 400
    assert web.post("/segments/1/rollback", {"version": "2"}, token="forged").status == 403


def test_create_refusals_show_on_the_form(web, client):
    client.upload(csv("g1"), name="vip")
    resp = web.upload("/segments/new", csv("g2"), name="vip")
    assert resp.status == 409 and "exists" in resp.text and "Pick another name" in resp.text
    resp = web.upload("/segments/new", csv("g2"), name="")
    assert resp.status == 400 and "Name the segment" in resp.text
    resp = web.post("/segments/new", {"name": "x"}, files={})
    assert resp.status == 400 and "Choose a CSV file" in resp.text
    resp = web.upload("/segments/new", csv("g2"), name="n", notify="not-an-address")
    assert resp.status == 400 and "Not an email address" in resp.text
    assert [s.name for s in client.list_segments()] == ["vip"]


def test_csrf_is_required_on_every_form(stack, web, client):
    client.upload(csv("g1"), name="vip")
    for path in ("/segments/new", "/segments/1/replace", "/signout", "/signin"):
        for token in (None, "forged"):
            resp = web.post(path, {"name": "evil", "account": "a", "passcode": "p"},
                            files={"file": ("x.csv", csv("g2"))}, token=token)
            assert resp.status == 403, (path, token)
    other = Web(stack[2].url)                                           # another visitor's token
    resp = web.post("/segments/new", {"name": "evil"}, files={"file": ("x.csv", csv("g2"))}, token=other.csrf())
    assert resp.status == 403
    resp = web.post("/segments/new", {"name": "evil"}, files={"file": ("x.csv", csv("g2"))},
                    headers={"Origin": "http://evil.example"})          # a right token from a wrong origin
    assert resp.status == 403
    resp = web.post("/segments/new", {"name": "evil"}, files={"file": ("x.csv", csv("g2"))},
                    headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403
    assert [s.name for s in client.list_segments()] == ["vip"]


def test_only_loopback_host_names_reach_a_loopback_dashboard(web):
    assert web.request("GET", "/", headers={"Host": "rebound.example:80"}).status == 400   # DNS rebinding
    assert web.request("GET", "/", headers={"Host": f"localhost:{web.port}"}).status == 200
    assert web.get("/").status == 200


def test_upload_over_50_mb_is_refused_clearly(web, client):
    token = web.csrf()
    limit = 50 << 20

    def sized(n):                    # g1 and g2, padded with spaces the parser trims (fast to process)
        head, tail = b"Type,Identity\ng,g1", b"\ng,g2\n"
        return head + b" " * (n - len(head) - len(tail)) + tail
    big = sized(limit + 1)
    resp = web.post("/segments/new", {"name": "big", "csrf_token": token}, files={"file": ("big.csv", big)},
                    token=False)
    assert resp.status == 413
    assert "larger than 50 MB" in resp.text and "listseg upload" in resp.text
    assert client.list_segments() == []
    ok = sized(limit)                                                    # exactly 50 MB: accepted
    resp = web.post("/segments/new", {"name": "fits", "csrf_token": token}, files={"file": ("ok.csv", ok)},
                    token=False)
    assert resp.status == 303
    assert wait_for(lambda: [s.size for s in client.list_segments() if s.size]) == [2]


def test_names_are_escaped(web, client):
    client.upload(csv("g1"), name='<script>alert("x")</script>')
    page = web.get("/").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(" in page
    assert "<script>alert" not in web.get("/segments/1").text


def test_unknown_pages_and_segments(web):
    assert web.get("/segments/99").status == 404
    assert web.get("/uploads/99").status == 404
    assert web.get("/nowhere").status == 404


def test_sign_in_when_accounts_exist(stack, monkeypatch):
    engine, target, _ = stack
    creds = Credentials(engine)
    a_id, a_pass = creds.create("Shop A")
    b_id, b_pass = creds.create("Shop B")
    with Client(target, a_id, a_pass) as a:
        a.import_profiles(PROFILES)
        a.upload(csv("g1", "g2"), name="a-only")
    monkeypatch.setenv("LISTSEG_ACCOUNT", a_id)      # the dashboard's own environment: never lent to visitors
    monkeypatch.setenv("LISTSEG_PASSCODE", a_pass)
    dash = Dashboard(target, "127.0.0.1:0").start()
    try:
        _sign_in_flow(dash, a_id, a_pass, b_id, b_pass)
    finally:
        dash.stop()


def _sign_in_flow(dash, a_id, a_pass, b_id, b_pass):
    web = Web(dash.url)
    for path in ("/", "/segments/1", "/segments/new", "/uploads/1", "/segments/1/users.csv"):
        resp = web.get(path)
        assert resp.status == 302 and resp.headers["Location"].startswith("/signin"), path
    assert web.get("/segments/rows").status == 401
    assert "a-only" not in web.get("/signin").text
    resp = web.post("/signin", {"account": a_id, "passcode": "wrong"})
    assert resp.status == 401 and "do not match" in resp.text
    resp = web.post("/signin", {"account": a_id, "passcode": ""})
    assert resp.status == 400
    before = dict(web.cookies)
    resp = web.post("/signin", {"account": a_id, "passcode": a_pass, "next": "/segments/1"})
    assert resp.status == 303 and resp.headers["Location"] == "/segments/1"
    assert web.cookies["listseg_session"] != before["listseg_session"]    # a new session on sign-in
    assert "HttpOnly" in resp.cookie_headers[0] and "SameSite=Strict" in resp.cookie_headers[0]
    page = web.get("/").text
    assert "a-only" in page and a_id in page and a_pass not in page
    assert a_pass not in web.cookies["listseg_session"]
    other = Web(dash.url)                                               # account B sees none of A's
    other.post("/signin", {"account": b_id, "passcode": b_pass})
    assert "a-only" not in other.get("/").text and other.get("/segments/1").status == 404
    assert web.post("/signin", {"account": a_id, "passcode": a_pass, "next": "//evil.example/"}) \
        .headers["Location"] == "/"                                     # no open redirect
    web.post("/signout")
    assert web.get("/").status == 302


def test_dashboard_refuses_a_public_address_in_dev_mode(stack):
    with pytest.raises(PermissionError):
        Dashboard(stack[1], "0.0.0.0:0").start()
