"""Limits and security over the wire: size and concurrency limits, page sizes, TLS, webhooks."""
import datetime
import http.server
import ipaddress
import threading

import grpc
import pytest

from harness import InProcess
from listseg import CallError, Client
from listseg.core.engine import Engine
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,,email\n" % k for k in range(100))


def csv(*guids):
    return b"Type,Identity\n" + b"".join(b"g,%s\n" % g.encode() for g in guids)


def test_upload_over_the_size_limit_is_refused_and_changes_nothing(serve):
    target = serve(max_upload_bytes=2000).target
    with Client(target) as c:
        c.import_profiles(PROFILES)
        c.upload(csv("g1"), name="s")
        with pytest.raises(CallError) as e:
            c.upload(csv(*[f"g{k % 100}" for k in range(500)]), replace="s")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.reason == "UPLOAD_TOO_LARGE"
        failed = c.get_upload(2)
        assert failed.state == pb.UPLOAD_STATE_FAILED and failed.reason.startswith("file too large")
        assert c.export("s") == csv("g1")


def test_an_over_long_file_name_is_refused_and_creates_nothing(serve):
    target = serve().target
    with Client(target) as c:
        c.import_profiles(PROFILES)
        stub = pb_grpc.SegmentsStub(c.channel)
        for file_name, ok in (("x" * 255, True), ("é" * 128, False), ("x" * 100_000, False)):
            data = csv("g1")
            requests = iter([pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name=f"n{len(file_name)}",
                                                                     file_name=file_name)),
                             pb.UploadListRequest(data=data),
                             pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=len(data)))])
            if ok:
                assert stub.UploadList(requests, timeout=10).file_name == file_name
                continue
            with pytest.raises(grpc.RpcError) as e:
                stub.UploadList(requests, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "255 bytes" in e.value.details()
        assert [s.name for s in c.list_segments()] == ["n255"]


def test_concurrent_uploads_per_account_are_limited(serve):
    target = serve(max_uploads=1).target
    release = threading.Event()
    with Client(target) as c:
        c.import_profiles(PROFILES)
        stub = pb_grpc.SegmentsStub(c.channel)

        def slow():
            yield pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name="slow"))
            yield pb.UploadListRequest(data=csv("g1"))
            release.wait(20)
            yield pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=len(csv("g1"))))
        first = stub.UploadList.future(slow(), timeout=30)
        deadline = threading.Event()
        for _ in range(100):                       # until the first upload holds its slot
            if c.list_segments():
                break
            deadline.wait(0.05)
        with pytest.raises(CallError) as e:
            c.upload(csv("g2"), name="second")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.reason == "TOO_MANY_UPLOADS"
        release.set()
        assert first.result().state == pb.UPLOAD_STATE_SUCCEEDED
        assert c.upload(csv("g2"), name="third").state == pb.UPLOAD_STATE_SUCCEEDED   # the slot is free


def test_page_sizes_are_coerced(serve):
    target = serve().target
    with Client(target) as c:
        c.import_profiles(PROFILES)
        up = c.upload(csv("g1") + b"x,bad\n" * 10_050, name="s")
        assert up.report.invalid == 10_050
        stub = pb_grpc.SegmentsStub(c.channel)
        page = stub.ListUploadErrors(pb.ListUploadErrorsRequest(id=up.id, page_size=1_000_000), timeout=10)
        assert len(page.errors) == 10_000 and page.next_page_token
        with pytest.raises(CallError) as e:
            next(c.list_members("s", page_size=-1))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(c.upload_errors(up.id)) == 10_050


def _certificates(tmp_path):
    """A CA and a server certificate for 127.0.0.1, made now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("listseg test CA")).issuer_name(name("listseg test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for label, data in (("ca", ca.public_bytes(serialization.Encoding.PEM)),
                        ("cert", cert.public_bytes(serialization.Encoding.PEM)),
                        ("key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))):
        paths[label] = tmp_path / f"{label}.pem"
        paths[label].write_bytes(data)
    return {k: str(v) for k, v in paths.items()}


def test_tls(serve, tmp_path):
    certs = _certificates(tmp_path)
    target = serve(tls=(certs["cert"], certs["key"])).target
    with Client(target, tls_ca=certs["ca"]) as c:
        c.import_profiles(PROFILES)
        assert c.upload(csv("g1"), name="s").report.size == 1
        assert c.is_member("s", guid="g1")
    with Client(target, timeout=3) as plain:                  # a plaintext client gets nowhere
        with pytest.raises(CallError) as e:
            plain.list_segments()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


class _Hook(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _http(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_webhook_redirects_are_not_followed(serve):
    hits = []

    class Elsewhere(_Hook):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()
    elsewhere = _http(Elsewhere)

    class Redirect(_Hook):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/stolen")
            self.end_headers()
    redirect = _http(Redirect)
    served = serve()
    server, target = served.server, served.target
    server.services.webhooks.backoff_s = 0.01
    with Client(target) as c:
        c.import_profiles(PROFILES)
        assert c.upload(csv("g1"), name="s", webhook_url=f"http://127.0.0.1:{redirect.server_port}/").state == \
            pb.UPLOAD_STATE_SUCCEEDED
    assert server.services.webhooks.notify(f"http://127.0.0.1:{redirect.server_port}/", pb.Upload()).result(10) is False
    assert hits == []
    redirect.shutdown()
    elsewhere.shutdown()


def test_a_slow_webhook_never_blocks_uploads(serve):
    entered, release = threading.Event(), threading.Event()

    class Slow(_Hook):
        def do_POST(self):
            entered.set()
            release.wait(20)
            self.send_response(204)
            self.end_headers()
    slow = _http(Slow)
    target = serve().target
    with Client(target) as c:
        c.import_profiles(PROFILES)
        c.upload(csv("g1"), name="a", webhook_url=f"http://127.0.0.1:{slow.server_port}/")
        assert entered.wait(10)                       # the hook is now stuck inside its handler...
        assert c.upload(csv("g2"), name="b").state == pb.UPLOAD_STATE_SUCCEEDED   # ...and uploads go on
        assert not release.is_set()
    release.set()
    slow.shutdown()


def test_passcodes_are_stored_only_as_salted_hashes(tmp_path):
    from listseg.core.accounts import Credentials
    from listseg.core.store import Database
    engine = Engine(str(tmp_path / "d"), map_size=1 << 26)
    creds = Credentials(engine)
    (a, pa), (b, pb_) = creds.create("A"), creds.create("B")
    assert creds.authenticate(a, pa).name == a
    db = engine.backend.database                  # the LMDB file itself: every key and value
    with db.read() as txn:
        stored = b"".join(k + v for k, v in Database.scan(txn, db.db.accounts, b""))
    assert pa.encode() not in stored and pb_.encode() not in stored
    states = [engine.account(x).state() for x in (a, b)]
    assert states[0]["salt"] != states[1]["salt"] and len(bytes.fromhex(states[0]["passcode"])) == 32
    engine.close()


def test_a_full_store_is_resource_exhausted_and_keeps_what_was_committed(tmp_path):
    with InProcess(tmp_path / "small", map_size=1 << 20) as server:      # a 1 MiB LMDB map
        with Client(server.target) as c:
            c.import_profiles(PROFILES)
            c.upload(csv("g1"), name="kept")
            with pytest.raises(CallError) as e:
                c.import_profiles(b"".join(b"p%d-%s,,email\n" % (k, b"x" * 200) for k in range(20_000)))
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.reason == "STORAGE_FULL"
            assert c.export("kept") == csv("g1")
            assert c.is_member("kept", guid="g1")
