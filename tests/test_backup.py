"""`listseg backup DEST` and `listseg restore SRC`: a backup taken from a real server while uploads,
replaces and IsMember calls run is a valid store whose every segment is one committed version, and a
server started on it answers exactly as the original did at that version; a backup that runs out of
disk fails cleanly and leaves the server serving; a restore never lands under a running server."""
import json
import os
import resource
import signal
import subprocess
import sys
import threading

import pytest

from conftest import wait_until
from harness import start_server, stop_server
from listseg import Client

PROFILES = b"guid,identity,channels\n" + b"".join(b"g%d,id%d,email\n" % (k, k) for k in range(3000))
LISTS = [list(range(0, 3000, 2)), list(range(1, 3000, 3)), list(range(0, 3000, 5))]


def csv_of(uids):
    return b"Type,Identity\n" + b"".join(b"g,g%d\n" % k for k in uids)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "listseg.clients.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def members(target, segment):
    """(version, sorted member uids) of one export, which reads one version."""
    with Client(target, timeout=60) as c:
        rows = c.export(segment).decode().split()[1:]
        return c.get_segment(segment).version, sorted(int(row[3:]) for row in rows)


@pytest.fixture
def served(tmp_path):
    data = tmp_path / "data"
    proc, target = start_server(str(data))
    with Client(target, timeout=60) as c:
        c.import_profiles(PROFILES)
        for name in ("a", "b"):
            c.upload(csv_of(LISTS[0]), name=name)
    yield data, proc, target
    stop_server(proc)


def test_a_backup_under_load_is_one_committed_version_of_every_segment(served, tmp_path):
    data, _, target = served
    made = {("a", 1): LISTS[0], ("b", 1): LISTS[0]}    # (segment, version) -> its members, as committed
    stop, errors = threading.Event(), []

    def replace(name):
        with Client(target, timeout=60) as c:
            k = 0
            while not stop.is_set():
                k += 1
                uids = LISTS[k % len(LISTS)]
                made[(name, c.upload(csv_of(uids), replace=name).report.version)] = uids

    def ask():
        with Client(target, timeout=60) as c:
            while not stop.is_set():
                try:
                    c.is_member("a", guid="g2")
                except Exception as e:       # noqa: BLE001 - noted, the test fails on it
                    errors.append(e)
    threads = [threading.Thread(target=replace, args=(n,)) for n in ("a", "b")] + [threading.Thread(target=ask)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(max(v for (n, v) in list(made) if n == name) >= 3 for name in "ab"),
                   timeout=60)                             # replaces are landing
        backups = [tmp_path / f"backup{k}" for k in range(3)]
        for dest in backups:                               # three, each while replaces land
            out = cli("backup", str(dest), "--data", str(data), "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["bytes"] == os.path.getsize(dest / "data.mdb")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    seen = []
    for dest in backups:
        proc, copy = start_server(str(dest))               # a server on the backup itself
        try:
            for name in ("a", "b"):
                version, uids = members(copy, name)
                seen.append(version)
                assert uids == made[(name, version)], (dest, name, version)   # that version, whole
                with Client(copy) as c:                    # and IsMember agrees with it
                    assert [c.is_member(name, guid=f"g{k}") for k in range(12)] == \
                           [k in set(made[(name, version)]) for k in range(12)]
        finally:
            stop_server(proc)
    assert min(seen) >= 3                                  # each backup caught a replace's version


def test_a_backup_that_runs_out_of_disk_fails_cleanly_and_the_server_serves_on(served, tmp_path):
    data, _, target = served
    dest = tmp_path / "full"

    def small_disk():                                      # the copy may write at most 64 KiB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
    out = cli("backup", str(dest), "--data", str(data), preexec_fn=small_disk)
    assert out.returncode == 1 and "the backup failed" in out.stderr, out.stderr
    assert not dest.exists()                               # no partial copy left behind
    with Client(target) as c:
        assert c.is_member("a", guid="g2") and c.get_segment("b").version == 1
    assert cli("backup", str(dest), "--data", str(data)).returncode == 0      # with room, it works


def test_restore_never_lands_under_a_running_server(served, tmp_path):
    data, proc, target = served
    backup = tmp_path / "backup"
    assert cli("backup", str(backup), "--data", str(data)).returncode == 0
    with Client(target) as c:
        c.upload(csv_of(LISTS[1]), replace="a")            # after the backup: version 2
    refused = cli("restore", str(backup), "--data", str(data), "--force")
    assert refused.returncode == 1 and "is in use" in refused.stderr, refused.stderr
    assert members(target, "a") == (2, LISTS[1])           # untouched
    stop_server(proc)
    assert "holds a store already" in cli("restore", str(backup), "--data", str(data)).stderr
    out = cli("restore", str(backup), "--data", str(data), "--force")
    assert out.returncode == 0, out.stderr
    proc, target = start_server(str(data))
    try:
        assert members(target, "a") == (1, LISTS[0])       # as at the backup
    finally:
        stop_server(proc)
    fresh = tmp_path / "fresh"                             # and into a new directory
    assert cli("restore", str(backup), "--data", str(fresh)).returncode == 0
    assert os.path.getsize(fresh / "data.mdb") == os.path.getsize(backup / "data.mdb")
