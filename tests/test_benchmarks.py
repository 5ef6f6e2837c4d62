"""The benchmark scripts run end to end at a tiny scale and write every key of their JSON (issue 4).

They are scripts, not tests: no figure is checked here, only that they run and keep their contract.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def redis_available():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make bench installs it)")
    pytest.importorskip("redis", reason="redis-py is not installed (make bench installs it)")


def run(script, *args, full=False):
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out if full else out.stdout


def test_bench_writes_every_key(tmp_path, redis_available):
    out = tmp_path / "latest.json"
    stdout = run("bench.py", "--scale", "2000", "--seconds", "1", "--repeat", "1",
                 "--workdir", str(tmp_path / "work"), "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) == {"scale", "ingest", "check_batch", "is_member", "export", "reach", "memory",
                           "replace_read_p99_ms", "cpu", "cores", "versions"}
    assert set(result["ingest"]) == {"listseg", "redis", "python"}
    assert set(result["check_batch"]) == set(result["export"]) == {"listseg", "redis"}
    assert set(result["is_member"]) == {"listseg_qps", "listseg_p99_ms", "redis_qps", "redis_p99_ms"}
    assert set(result["reach"]) == {"listseg_ms", "redis_ms"}
    assert set(result["memory"]) == {"listseg_bytes_per_member", "redis_bytes_per_member"}
    assert result["scale"] == 2000 and result["cores"] >= 1
    assert {"python", "redis-server", "grpcio", "pyroaring"} <= set(result["versions"])
    assert all(v > 0 for case in ("ingest", "check_batch", "is_member", "export", "reach", "memory")
               for v in result[case].values())
    assert "| case | listseg | peer | ours vs peer | bar | holds |" in stdout
    assert not (tmp_path / "work").exists()


def test_bench_cluster_writes_every_key(tmp_path, redis_available):
    """bench_cluster.py on its own local cluster: every key of cluster.json, and the cluster is gone after."""
    out = tmp_path / "cluster.json"
    done = run("bench_cluster.py", "--scale", "2000", "--seconds", "1", "--repeat", "1",
               "--workdir", str(tmp_path / "work"), "--out", str(out), full=True)
    result = json.loads(out.read_text())
    assert set(result) == {"scale", "ingest", "check_batch", "is_member", "export", "reach", "memory",
                           "cpu", "cores", "versions"}
    assert set(result["ingest"]) == set(result["check_batch"]) == set(result["export"]) == {"listseg", "redis"}
    # latest.json's IsMember keys (through the fronts), the same case through the servers alone, and
    # what the fronts asked of the cluster a check (0 when every answer came from what they keep)
    assert set(result["is_member"]) == {"listseg_qps", "listseg_p99_ms", "redis_qps", "redis_p99_ms",
                                        "servers_qps", "servers_p99_ms", "listseg_redis_commands_per_check"}
    assert result["is_member"].pop("listseg_redis_commands_per_check") >= 0
    assert set(result["reach"]) == {"listseg_ms", "redis_ms"}
    assert set(result["memory"]) == {"listseg_bytes_per_member", "redis_bytes_per_member",
                                     "listseg_bytes_per_profile", "redis_bytes_per_profile"}
    assert result["versions"]["listseg_membership"] == "front"
    assert result["scale"] == 2000 and result["cores"] >= 1
    assert {"python", "redis-server", "grpcio", "pyroaring", "redis", "hiredis"} <= set(result["versions"])
    assert result["versions"]["listseg_servers"] == 2 and result["versions"]["hiredis_in_use"] is True
    assert all(v > 0 for case in ("ingest", "check_batch", "is_member", "export", "reach", "memory")
               for v in result[case].values())
    assert "| case | listseg | peer | ours vs peer | bar | holds |" in done.stdout
    assert not (tmp_path / "work").exists()
    # the cluster it started (its folder and pids are in its log) is stopped and removed
    up = re.search(r"cluster up in (\S+): ports .* \(pids \[([\d, ]+)\]\)", done.stderr)
    assert up and "cluster stopped" in done.stderr, done.stderr[-3000:]
    assert not os.path.exists(up.group(1))
    for pid in map(int, up.group(2).split(",")):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_soak_runs_without_errors(tmp_path):                        # listseg alone: no Redis needed
    out = tmp_path / "soak.json"
    run("soak.py", "--scale", "2000", "--list-rows", "500", "--seconds", "3", "--write-interval", "0.5",
        "--workdir", str(tmp_path / "work"), "--out", str(out))
    result = json.loads(out.read_text())
    assert result["errors"] == 0
    assert {"UploadList (replace)", "UploadList (create)", "DeleteSegment", "IsMember", "CheckMembers",
            "ListMembers (whole segment)", "GetSegment"} <= set(result["rpcs"])
    assert all({"calls", "errors", "p50_ms", "p99_ms", "max_ms"} <= set(r) for r in result["rpcs"].values())
    assert result["rss_bytes"]["start"] > 0 and result["rss_bytes"]["end"] > 0
    assert 0 < result["anon_bytes"]["start"] <= result["rss_bytes"]["start"]


def test_bench_changes_writes_every_key(tmp_path):
    """bench_changes.py: its own server and data; the change counts it asserts are the ones it made."""
    out = tmp_path / "changes.json"
    stdout = run("bench_changes.py", "--scale", "4000", "--repeat", "1", "--workdir", str(tmp_path / "work"),
                 "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) == {"scale", "changes_1pct", "list_members", "changes_10pct", "cpu", "cores"}
    assert [result[k]["members"] for k in ("changes_1pct", "list_members", "changes_10pct")] == [40, 4000, 400]
    assert all(set(result[k]) == {"members", "seconds", "server_cpu_s"}
               for k in ("changes_1pct", "list_members", "changes_10pct"))
    assert "| ListMemberChanges 1% vs ListMembers of the whole segment (s) |" in stdout
    assert not (tmp_path / "work").exists()


def test_bench_resume_writes_every_key(tmp_path):
    """bench_resume.py: both uploads end alike (it asserts so) and the resumed one was cut twice."""
    out = tmp_path / "resume.json"
    stdout = run("bench_resume.py", "--scale", "2000", "--bytes", "3000000", "--repeat", "1",
                 "--workdir", str(tmp_path / "work"), "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) == {"scale", "file_bytes", "report", "best", "runs", "cpu", "cores"}
    assert result["file_bytes"] >= 3_000_000 and result["report"][6] == 2000       # every profile qualifies
    assert [r["cuts"] for r in result["runs"]["resumed"]] == [2]
    assert all(set(r) == {"seconds", "file_bytes_read", "proxy_bytes", "cuts", "report", "members_sha256"}
               for runs in result["runs"].values() for r in runs)
    assert result["best"]["resumed"]["file_bytes_read"] >= result["file_bytes"]
    assert "| bytes sent twice: read beyond the file's size (MB) |" in stdout
    assert not (tmp_path / "work").exists()


def test_bench_scale_writes_every_key(tmp_path):
    """bench_scale.py: generated data (the C helper), import, upload through `listseg upload`; it
    asserts the counts are exact, so a run that ends is a run whose upload was right."""
    out = tmp_path / "scale.json"
    stdout = run("bench_scale.py", "--profiles", "20000", "--rows", "20000", "--mixed", "--workdir",
                 str(tmp_path / "work"), "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) == {"profiles", "rows", "mixed", "file_bytes", "generate_s", "import", "upload",
                           "data_dir_bytes", "during_upload", "cpu", "cores"}
    assert result["upload"]["counts"] == {"rows": 20000, "qualified": 18000, "unknown": 1000, "invalid": 0,
                                          "duplicates": 1000, "size": 18000}
    assert set(result["during_upload"]) == {"is_member_rate", "is_member_calls", "is_member_errors", "is_member_p50_ms",
                                            "is_member_p99_ms", "is_member_late_p99_ms", "server_peak_anon_bytes"}
    assert result["during_upload"]["is_member_rate"] == 200 and result["during_upload"]["is_member_errors"] == 0
    for step in ("import", "upload"):
        assert all(isinstance(v, float) for v in result[step]["phases_s"].values()), result[step]["phases_s"]
    assert result["during_upload"]["server_peak_anon_bytes"] > 0 and result["import"]["server_peak_anon_bytes"] > 0
    assert "| upload, `listseg upload` start to report |" in stdout
    assert not (tmp_path / "work").exists()
