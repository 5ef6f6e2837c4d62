"""Resumable uploads: a stream that breaks leaves its upload waiting for a resume (server/uploads.py);
a new stream naming it continues from the byte the server holds, and the result is the unbroken
upload's. The connection is cut by a real TCP proxy (tests/proxy.py), the client resumes by itself."""
import json
import os
import random
import signal
import threading
import time

import grpc
import pytest

from conftest import upload_state, wait_until
from harness import start_server, stop_server
from listseg import CallError, Client
from listseg.clients import cli
from listseg.server.uploads import NO_FINISH, STREAM_ENDED
from listseg.v1 import UPLOAD_ID_HEADER
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc
from proxy import Proxy

BACKENDS = ["lmdb", "redis-cluster"]
PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,user%d@x.com,email\n" % (k, k) for k in range(3000))


def tricky_file(rng):
    """A Type,Identity file with every kind of row, CRLF and LF endings, quoted fields (with commas
    and doubled quotes) and rows the parser rejects."""
    rows = [b"Type,Identity\r\n"]
    for k in range(4000):
        n = rng.randrange(3300)                       # some unknown (>= 3000), some twice
        rows.append(rng.choice([b"g,g%d\r\n" % n, b'g,"g%d"\n' % n, b'i,"user%d@x.com"\r\n' % n,
                                b"i,user%d@x.com\n" % n, b'g,"g%d,x"\r\n' % n, b'g,"g""%d"\n' % n,
                                b"x,g%d\n" % n, b"g,\r\n", b"g,g%d,extra\n" % n]))
    return b"".join(rows)


def report_of(up):
    r = up.report
    return (up.state, up.reason, r.rows, r.qualified, r.unknown, r.invalid, r.duplicates, r.size, r.bytes,
            [(e.line, e.reason) for e in r.errors], up.committed_bytes)


class CutFile:
    """A file whose reads stop at each cut offset. At one, it waits until the server has consumed
    every byte before it, then resets the connection through the proxy: the stream breaks with the
    server at exactly that offset."""

    def __init__(self, data, cuts, proxy, direct):
        self.data, self.cuts, self.proxy, self.direct = data, sorted(cuts), proxy, direct
        self.pos, self.upload_id = 0, None
        self.streaming = threading.Event()     # the client knows the upload's id (on_stream)
        self.cut_off = set()                   # the threads (one a call) that read for a stream now cut

    def on_stream(self, upload_id, offset):
        self.upload_id = upload_id
        self.streaming.set()

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        # gRPC may ask a cut stream's reader for more once: that read must not cut the next stream
        if self.cuts and self.pos == self.cuts[0] and threading.current_thread() not in self.cut_off:
            assert self.streaming.wait(30)
            wait_until(lambda: self.direct.get_upload(self.upload_id).committed_bytes >= self.pos)
            self.proxy.cut()
            self.cut_off.add(threading.current_thread())
            self.cuts.pop(0)
        stop = self.cuts[0] if self.cuts and self.cuts[0] > self.pos else len(self.data)
        out = self.data[self.pos:min(self.pos + n, stop)]
        self.pos += len(out)
        return out


@pytest.fixture
def direct(server):
    with Client(server.target, timeout=10) as c:
        c.import_profiles(PROFILES)
        yield c


@pytest.fixture
def proxy(server):
    p = Proxy(server.target)
    yield p
    p.close()


def trial_cuts(data, rng):
    """20 trials of cut offsets: inside a quoted field, inside a doubled quote, between CR and LF,
    inside the header, before the first byte, after the last (before the finish message), two cuts
    in one stream, and random ones."""
    quoted = data.index(b'"g') + 2
    doubled = data.index(b'""') + 1
    crlf = data.index(b"\r\n", 20) + 1
    fixed = [[quoted], [doubled], [crlf], [5], [0], [len(data)], [quoted, crlf + 40000], [1, len(data) - 1]]
    return fixed + [[rng.randrange(1, len(data))] for _ in range(20 - len(fixed))]


def test_a_stream_cut_anywhere_resumes_to_the_unbroken_result(backend, server, direct, proxy):
    rng = random.Random(14)
    data = tricky_file(rng)
    assert data.count(b'"') > 1000 and b'""' in data and b"\r\n" in data
    unbroken = direct.upload(data, name="unbroken")
    members = direct.export("unbroken")
    assert unbroken.report.invalid and unbroken.report.duplicates and unbroken.report.unknown
    via = Client(proxy.target, timeout=10)
    try:
        for trial, cuts in enumerate(trial_cuts(data, rng)):
            f = CutFile(data, cuts, proxy, direct)
            before = proxy.cuts
            up = via.upload(f, name=f"t{trial}", on_stream=f.on_stream)
            assert proxy.cuts - before == len(cuts), cuts                # each cut happened, mid-stream
            assert report_of(up) == report_of(unbroken), (trial, cuts)
            assert up.report.version == 1 and direct.export(f"t{trial}") == members, (trial, cuts)
            assert report_of(direct.get_upload(up.id)) == report_of(unbroken)
    finally:
        via.close()


def test_a_source_that_fails_is_not_resumed(server, direct):
    """A file that cannot be read is no broken connection: the client raises the file's error at once."""
    streams = []

    class Failing(CutFile):
        def read(self, n):
            if self.pos:
                raise OSError("the disk went away")
            return super().read(n)
    f = Failing(b"Type,Identity\n" + b"g,g1\n" * 1000, [], None, direct)
    with pytest.raises(OSError, match="the disk went away"):
        direct.upload(f, name="s", on_stream=lambda upload_id, offset: streams.append(offset))
    assert streams == [0] or streams == []          # one stream (its headers may not have come back)


def _broken_stream(stub, first, data, wait_for):
    """An UploadList call that sends `first`, then `data`, then breaks (is cancelled) once
    wait_for(upload_id) holds; returns the upload id from the call's headers."""
    sent, release = threading.Event(), threading.Event()

    def messages():
        yield first
        yield pb.UploadListRequest(data=data)
        sent.set()
        release.wait(30)
    call = stub.UploadList.future(messages(), timeout=60)
    upload_id = int(dict(call.initial_metadata())[UPLOAD_ID_HEADER])
    assert sent.wait(10)
    wait_until(lambda: wait_for(upload_id))
    call.cancel()
    release.set()
    return upload_id


def _segment_and_a_broken_upload(c, mode, wait_for=lambda upload_id: True):
    """Profiles, a segment `s` of g1, and an upload of `mode` into it (g2) whose stream broke once
    wait_for(upload_id) held; returns the upload's id."""
    c.import_profiles(PROFILES)
    c.upload(b"Type,Identity\ng,g1\n", name="s")
    spec = pb.UploadListRequest(spec=pb.UploadSpec(mode=mode, segment="s"))
    return _broken_stream(pb_grpc.SegmentsStub(c.channel), spec, b"Type,Identity\ng,g2\n", wait_for)


def _create(name):
    return pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name=name))


def _resume(upload_id, offset):
    return pb.UploadListRequest(resume=pb.UploadResume(upload_id=upload_id, offset=offset))


def _finish(total):
    return pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=total))


def _waiting(client, upload_id):
    return client.get_upload(upload_id).HasField("resume_deadline")


def test_a_resume_must_start_at_the_offset_the_server_names(backend, server, direct):
    data = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(100))
    stub = pb_grpc.SegmentsStub(direct.channel)
    upload_id = _broken_stream(stub, _create("s"), data[:50],
                               lambda i: direct.get_upload(i).committed_bytes == 50)
    wait_until(lambda: _waiting(direct, upload_id))
    up = direct.get_upload(upload_id)
    assert (up.state, up.committed_bytes, up.report.rows) == (pb.UPLOAD_STATE_RECEIVING, 50, 0)
    for offset in (0, 49, 51, len(data)):
        with pytest.raises(grpc.RpcError) as e:
            stub.UploadList(iter([_resume(upload_id, offset), pb.UploadListRequest(data=data[offset:]),
                                  _finish(len(data))]), timeout=10)
        err = CallError.from_rpc(e.value)
        assert (err.code, err.reason, err.metadata["committed_bytes"]) == (
            grpc.StatusCode.FAILED_PRECONDITION, "WRONG_OFFSET", "50"), offset
    assert _waiting(direct, upload_id)                 # a wrong offset changes nothing: it still waits
    done = stub.UploadList(iter([_resume(upload_id, 50), pb.UploadListRequest(data=data[50:]), _finish(len(data))]),
                           timeout=10)
    assert (done.id, done.state, done.report.rows, done.report.size, done.report.bytes) == (
        upload_id, pb.UPLOAD_STATE_SUCCEEDED, 100, 100, len(data))
    assert not done.HasField("resume_deadline")
    for upload, reason in ((upload_id, "NOT_RESUMABLE"), (upload_id + 1, "NOT_FOUND")):   # ended; none such
        with pytest.raises(grpc.RpcError) as e:
            stub.UploadList(iter([_resume(upload, 0), _finish(0)]), timeout=10)
        assert CallError.from_rpc(e.value).reason == reason


def test_a_resume_takes_the_upload_from_a_stream_still_open(server, direct):
    """A client that thinks its stream broke may resume while the server still has the old one: the
    new stream takes the upload over and the old one's later messages are refused."""
    data = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(100))
    stub = pb_grpc.SegmentsStub(direct.channel)
    more, sent = threading.Event(), threading.Event()

    def old_stream():
        yield _create("s")
        yield pb.UploadListRequest(data=data[:50])
        sent.set()
        more.wait(30)
        yield pb.UploadListRequest(data=b"g,g999\n")                  # after the takeover: refused
        yield _finish(57)
    old = stub.UploadList.future(old_stream(), timeout=60)
    upload_id = int(dict(old.initial_metadata())[UPLOAD_ID_HEADER])
    assert sent.wait(10)
    wait_until(lambda: direct.get_upload(upload_id).committed_bytes == 50)
    new = stub.UploadList.future(iter([_resume(upload_id, 50), pb.UploadListRequest(data=data[50:]),
                                       _finish(len(data))]), timeout=60)
    done = new.result()
    more.set()
    with pytest.raises(grpc.RpcError) as e:
        old.result()
    assert CallError.from_rpc(e.value).reason == "NOT_RESUMABLE"
    assert (done.state, done.report.rows, done.report.size) == (pb.UPLOAD_STATE_SUCCEEDED, 100, 100)
    assert b"g999" not in direct.export("s")


def test_an_upload_not_resumed_in_its_window_fails_with_its_reason(serve):
    server = serve(resume_window=1)
    with Client(server.target, timeout=10) as c:
        upload_id = _segment_and_a_broken_upload(c, pb.UPLOAD_MODE_REPLACE, lambda i: c.get_upload(i).committed_bytes == 19)
        wait_until(lambda: upload_state(c, upload_id) == pb.UPLOAD_STATE_FAILED)
        failed = c.get_upload(upload_id)
        # grpc tells the server of a cancel as an error or, now and then, as a clean end of the stream
        assert failed.reason in (f"{STREAM_ENDED}; not resumed within 1 s", f"{NO_FINISH}; not resumed within 1 s")
        assert not failed.HasField("resume_deadline") and failed.committed_bytes == 19
        assert c.export("s") == b"Type,Identity\ng,g1\n" and c.get_segment("s").version == 1
        assert report_of(c.upload(b"Type,Identity\ng,g1\ng,g2\n", resume=upload_id)) == report_of(failed)


def test_an_upload_waiting_for_a_resume_gives_its_slot_to_a_new_one(serve):
    """A client that never resumes is never locked out by the uploads its broken streams left."""
    server = serve(max_uploads=1)
    with Client(server.target, timeout=10) as c:
        upload_id = _segment_and_a_broken_upload(c, pb.UPLOAD_MODE_APPEND)
        wait_until(lambda: _waiting(c, upload_id))
        assert c.upload(b"Type,Identity\ng,g3\n", append="s").state == pb.UPLOAD_STATE_SUCCEEDED
        failed = c.get_upload(upload_id)
        assert failed.state == pb.UPLOAD_STATE_FAILED
        assert failed.reason.endswith("; a new upload took its slot before it was resumed")
        assert c.export("s") == b"Type,Identity\ng,g1\ng,g3\n"


def test_the_cli_resumes_by_hand(server, direct, tmp_path, capsys):
    data = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(100))
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    stub = pb_grpc.SegmentsStub(direct.channel)
    upload_id = _broken_stream(stub, _create("s"), data[:60], lambda i: direct.get_upload(i).committed_bytes == 60)
    wait_until(lambda: _waiting(direct, upload_id))
    args = ["--server", server.target, "upload", str(path), "--json"]
    assert cli.main(args + ["--resume", str(upload_id), "--name", "x"]) == cli.EXIT_USAGE
    assert cli.main(args + ["--resume", str(upload_id)]) == cli.EXIT_OK
    out = capsys.readouterr()
    got = json.loads(out.out.splitlines()[-1])
    assert (got["upload"], got["state"], got["rows"], got["size"]) == (upload_id, "succeeded", 100, 100)
    assert f"upload {upload_id}: resuming at byte 60" in out.err
    assert cli.main(args + ["--resume", str(upload_id)]) == cli.EXIT_OK       # it has ended: its result again
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == got


def test_a_server_killed_while_an_upload_waits_leaves_it_interrupted(tmp_path):
    data = str(tmp_path / "data")
    proc, target = start_server(data)
    try:
        with Client(target, timeout=10) as c:
            upload_id = _segment_and_a_broken_upload(c, pb.UPLOAD_MODE_REPLACE)
            wait_until(lambda: _waiting(c, upload_id))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc, target = start_server(data)
        with Client(target, timeout=10) as c:
            up = c.get_upload(upload_id)
            assert (up.state, up.reason) == (pb.UPLOAD_STATE_FAILED, "interrupted")
            assert c.export("s") == b"Type,Identity\ng,g1\n" and c.get_segment("s").version == 1
            assert report_of(c.upload(b"Type,Identity\ng,g2\n", resume=upload_id)) == report_of(up)
    finally:
        stop_server(proc)


def test_a_resume_finds_the_worker_holding_the_upload(tmp_path):
    """With --workers 2 a resumed stream may reach the other process: it answers UPLOAD_ELSEWHERE
    and the client tries new connections until one reaches the upload."""
    data = str(tmp_path / "data")
    proc, target = start_server(data, "--workers", "2")
    proxy = Proxy(target)
    try:
        with Client(target, timeout=10) as direct, Client(proxy.target, timeout=10) as via:
            direct.import_profiles(PROFILES)
            body = b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in range(3000))
            unbroken = direct.upload(body, name="unbroken")
            for trial in range(6):
                cut = threading.Event()

                class Cutting(CutFile):
                    def read(self, n):      # no exact offset here: GetUpload may reach the other worker
                        if self.pos >= 20000 and not cut.is_set():
                            cut.set()
                            assert self.streaming.wait(30)
                            time.sleep(0.2)         # the server takes in what is on the way
                            proxy.cut()
                        return super().read(min(n, 4096))
                f = Cutting(body, [], proxy, direct)
                up = via.upload(f, name=f"t{trial}", on_stream=f.on_stream)
                assert report_of(up)[:-1] == report_of(unbroken)[:-1] and up.committed_bytes == len(body)
                assert direct.export(f"t{trial}") == direct.export("unbroken")
            assert proxy.cuts == 6
    finally:
        proxy.close()
        stop_server(proc)
