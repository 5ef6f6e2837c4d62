"""`listseg serve --metrics HOST:PORT`: a real server's Prometheus endpoint, scraped after real calls;
every counter moves by exactly what was done, with one process and with workers (whose counts are
added up), and the membership front's state and restarts show."""
import os
import signal
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import upload_state, wait_until
from harness import free_port, front_pids, start_server, stop_server, wait_healthy
from listseg import CallError, Client
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,id%d,email\n" % (k, k) for k in range(100))
LIST = b"Type,Identity\n" + b"g,g1\ng,g2\ng,g2\ni,id3\ng,nobody\nx,bad\n"   # 3 qualified, 1 each other


def scrape(port):
    """{(sample name, frozenset of labels): value} of the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


def serve(tmp_path, *args):
    port = free_port()
    proc, target = start_server(str(tmp_path / "data"), "--metrics", f"127.0.0.1:{port}",
                                "--max-upload-bytes", str(2 * len(LIST)), *args)
    wait_until(lambda: _answers(port), timeout=20)
    return proc, target, port


def _answers(port):
    try:
        scrape(port)
        return True
    except OSError:
        return False


def work(target, checks):
    """An import, one upload, `checks` IsMember calls each on a connection of its own (so workers
    share them), and one IsMember of a segment that is not there."""
    with Client(target) as c:
        c.import_profiles(PROFILES)
        report = c.upload(LIST, name="vip").report
    assert (report.qualified, report.unknown, report.invalid, report.duplicates) == (3, 1, 1, 1)
    for k in range(checks):
        with Client(target) as c:
            assert c.is_member("vip", guid=f"g{k}") == (k in (1, 2, 3))      # g3 by its identity
    with Client(target) as c, pytest.raises(CallError):
        c.is_member("nope", guid="g1")
    with Client(target) as c:
        assert c.upload(LIST, name="strict", strict=True).state == pb.UPLOAD_STATE_FAILED   # --strict, an invalid row
        with pytest.raises(CallError) as e:                       # past --max-upload-bytes: the call fails
            c.upload(LIST + b"g,g4\n" * 40, name="big")
        assert e.value.reason == "UPLOAD_TOO_LARGE"


def resume_one(target):
    """An upload whose stream stops short (it waits for a resume), then its resume."""
    with Client(target) as c:
        stub = pb_grpc.SegmentsStub(c.channel)
        with pytest.raises(grpc.RpcError):
            stub.UploadList(iter([pb.UploadListRequest(spec=pb.UploadSpec(mode=pb.UPLOAD_MODE_CREATE, name="r")),
                                  pb.UploadListRequest(data=LIST)]), timeout=10)
        upload_id = max(u for u in range(1, 10) if upload_state(c, u) == pb.UPLOAD_STATE_RECEIVING)
        assert c.upload(LIST, resume=upload_id).state == pb.UPLOAD_STATE_SUCCEEDED


def check_counts(samples, checks):
    IS_MEMBER = "Membership/IsMember"
    assert value(samples, "listseg_rpcs_total", method=IS_MEMBER, code="OK") == checks
    assert value(samples, "listseg_rpcs_total", method=IS_MEMBER, code="NOT_FOUND") == 1
    assert value(samples, "listseg_rpc_seconds_count", method=IS_MEMBER) == checks + 1
    uploads = {dict(labels)["code"]: n for (name, labels), n in samples.items()
               if name == "listseg_rpcs_total" and dict(labels)["method"] == "Segments/UploadList"}
    assert uploads == {"OK": 2, "RESOURCE_EXHAUSTED": 1}         # the strict one ends OK, as failed
    assert value(samples, "listseg_rpcs_total", method="Profiles/UpsertProfiles", code="OK") == 1
    assert value(samples, "listseg_uploads_total", mode="create", state="succeeded") == 1
    assert value(samples, "listseg_uploads_total", mode="create", state="failed") == 2
    assert value(samples, "listseg_upload_bytes_total") >= 2 * len(LIST)
    for outcome, n in (("qualified", 3), ("unknown", 1), ("invalid", 1), ("duplicates", 1)):
        assert value(samples, "listseg_upload_rows_total", outcome=outcome) in (n, 2 * n)   # the failed one's too
    assert value(samples, "listseg_last_upload_rows_per_second") > 0


def test_one_server_counts_every_call_and_upload(tmp_path):
    proc, target, port = serve(tmp_path)
    try:
        work(target, checks=5)
        samples = scrape(port)
        check_counts(samples, checks=5)
        assert value(samples, "listseg_upload_resumes_total") == 0
        # sampled every few seconds from the store
        wait_until(lambda: value(scrape(port), "listseg_segments", account="default") == 1, timeout=20)
        samples = scrape(port)
        assert value(samples, "listseg_versions", account="default") == 1
        assert value(samples, "listseg_store_bytes", what="file") > 0
        assert value(samples, "listseg_store_bytes", what="map") >= value(samples, "listseg_store_bytes", what="file")
        assert 0 <= value(samples, "listseg_store_bytes", what="free") < value(samples, "listseg_store_bytes", what="file")
        wait_until(lambda: value(scrape(port), "listseg_profile_index_entries", account="default", kind="guids") == 100,
                   timeout=20)
        assert value(scrape(port), "listseg_profile_index_builds_total", account="default") == 1
        resume_one(target)
        assert value(scrape(port), "listseg_upload_resumes_total") == 1
    finally:
        stop_server(proc)


def test_workers_counts_add_up_and_the_front_shows(tmp_path):
    front_port = free_port()
    proc, target, port = serve(tmp_path, "--workers", "2", "--membership-listen", f"127.0.0.1:{front_port}")
    try:
        wait_healthy(f"127.0.0.1:{front_port}")
        work(target, checks=12)
        check_counts(scrape(port), checks=12)                   # whichever worker each call met
        assert value(scrape(port), "listseg_front_up") == 1
        [pid] = front_pids(f"127.0.0.1:{front_port}")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: value(scrape(port), "listseg_front_restarts_total") == 1, timeout=30)
        assert value(scrape(port), "listseg_front_up") == 1
    finally:
        stop_server(proc)

