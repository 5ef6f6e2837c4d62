"""The `listseg` CLI contract: JSON keys, exit codes, one-line errors (against a real server)."""
import json
import os
import subprocess
import sys

import pytest

from listseg.clients.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.fixture
def cli(server, capsys):
    def run(*args):
        code = main(["--server", server.target, *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def ex(name):
    return os.path.join(EXAMPLES, name)


def test_walkthrough_json_contract(cli):
    code, out, _ = cli("--json", "profiles", "import", ex("profiles.csv"))
    assert (code, json.loads(out)) == (0, {"rows": 6, "upserted": 6, "invalid": 0, "errors": []})

    code, out, _ = cli("upload", ex("vip.csv"), "--name", "vip", "--json")
    up = json.loads(out)
    assert code == 0
    assert {"upload", "segment", "state", "reason", "rows", "qualified", "unknown", "invalid", "duplicates",
            "size", "errors"} <= set(up)
    assert (up["state"], up["rows"], up["qualified"], up["unknown"], up["invalid"], up["duplicates"], up["size"]) == \
        ("succeeded", 6, 3, 1, 1, 1, 3)
    assert up["errors"] == [{"line": 7, "reason": "bad type"}]

    code, out, _ = cli("--json", "segments")
    segs = json.loads(out)
    assert code == 0 and [(s["id"], s["name"], s["state"], s["size"]) for s in segs] == [(up["segment"], "vip", "ready", 3)]

    code, out, _ = cli("show", "vip", "--json")
    show = json.loads(out)
    assert {"id", "name", "state", "size", "version", "reachability", "trend", "consumers", "sample",
            "last_upload"} <= set(show)
    assert show["reachability"] == {"email": 3, "push": 1, "sms": 2, "webpush": 0, "whatsapp": 1}
    assert len(show["trend"]) == 1 and show["trend"][0]["size"] == 3 and len(show["sample"]) == 3
    assert show["last_upload"]["upload"] == up["upload"]

    assert cli("is-member", "vip", "--identity", "jane@example.com")[:2] == (0, "true\n")
    assert cli("is-member", "vip", "--identity", "leo@example.com")[:2] == (1, "false\n")
    assert cli("is-member", "nope", "--guid", "x")[0] == 2

    code, out, _ = cli("members", "vip")
    assert code == 0 and out.splitlines()[0] == "Type,Identity" and len(out.splitlines()) == 4

    assert cli("attach", "vip", "--campaign", "spring-sale")[0] == 0
    code, out, err = cli("upload", ex("vip-v2.csv"), "--replace", "vip")
    assert code == 1 and "campaign spring-sale" in err and "Traceback" not in err and err.count("\n") == 1
    assert cli("detach", "vip", "--campaign", "spring-sale")[0] == 0
    code, out, _ = cli("upload", ex("vip-v2.csv"), "--replace", "vip", "--json")
    assert code == 0 and json.loads(out)["size"] == 3

    code, out, _ = cli("versions", "vip")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["version", "time", "(UTC)", "members", "kept", "made", "by"]
    assert lines[1].split()[:5] == ["*", "2", lines[1].split()[2], "3", "kept"] and "replace vip-v2.csv" in lines[1]
    assert lines[0].index("members") + len("members") == lines[1].index("  kept")     # the columns line up
    code, out, _ = cli("changes", "vip", "--from", "1")
    assert code == 0 and out.splitlines()[0] == "Type,Identity,Change" and len(out.splitlines()) == 7
    code, out, _ = cli("rollback", "vip", "--to", "1")
    assert (code, out) == (0, "vip: version 3 = rollback to 1 (3 members)\n")


def test_failed_upload_exits_1(cli, tmp_path):
    cli("profiles", "import", ex("profiles.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"Name,Email\ng,x\n")
    code, out, _ = cli("upload", str(bad), "--name", "b", "--json")
    assert code == 1 and json.loads(out)["state"] == "failed" and json.loads(out)["reason"].startswith("bad header")


def test_a_name_that_reads_as_an_id_exits_1(cli):
    cli("profiles", "import", ex("profiles.csv"))
    for name in ("42", "segments/42"):
        code, out, err = cli("upload", ex("vip.csv"), "--name", name)
        assert (code, out) == (1, "") and "all digits" in err and "(INVALID_ARGUMENT)" in err, name
    assert cli("--json", "segments")[1].strip() == "[]"


def test_usage_errors_exit_2(cli):
    assert cli("upload", ex("vip.csv"))[0] == 2                           # no target
    assert cli("upload", ex("vip.csv"), "--name", "a", "--replace", "b")[0] == 2
    assert cli("is-member", "vip")[0] == 2
    assert cli("attach", "vip")[0] == 2
    assert cli("frobnicate")[0] == 2


def test_members_to_file_and_reupload(cli, tmp_path):
    cli("profiles", "import", ex("profiles.csv"))
    cli("upload", ex("vip.csv"), "--name", "vip")
    out_file = tmp_path / "members.csv"
    assert cli("members", "vip", "-o", str(out_file))[0] == 0
    code, out, _ = cli("upload", str(out_file), "--name", "copy", "--json")
    assert code == 0 and json.loads(out)["size"] == 3


def test_accounts_create_then_credentials_required(tmp_path, capsys, serve):
    data = str(tmp_path / "acct")
    assert main(["accounts", "create", "Shop", "--data", data, "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["account"].startswith("acct-") and len(created["passcode"]) >= 24
    target = serve(data, map_size=1 << 26).target
    assert main(["segments", "--server", target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["segments", "--server", target, "--account", created["account"],
                 "--passcode", created["passcode"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_accounts_create_refuses_an_empty_name_without_a_traceback(tmp_path, capsys):
    assert main(["accounts", "create", "", "--data", str(tmp_path / "acct")]) == 2
    err = capsys.readouterr().err
    assert "needs a name (INVALID_ARGUMENT)" in err and "Traceback" not in err


def test_installed_entry_point():
    exe = os.path.join(os.path.dirname(sys.executable), "listseg")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "upload" in result.stdout


def test_changes_writes_who_joined_and_left(cli, tmp_path):
    assert cli("profiles", "import", ex("profiles.csv"))[0] == 0
    assert cli("upload", ex("vip.csv"), "--name", "vip")[0] == 0          # jane, john, mia
    assert cli("upload", ex("vip-v2.csv"), "--replace", "vip")[0] == 0    # leo, ana and c3a4...
    code, out, _ = cli("changes", "vip", "--from", "1")
    rows = out.splitlines()
    assert code == 0 and rows[0] == "Type,Identity,Change" and len(rows) == 7
    assert sorted(r.rsplit(",", 1)[1] for r in rows[1:]) == ["added"] * 3 + ["removed"] * 3
    assert "g,a1e2723cba7c4518bea8ef95b036ac83,removed" in rows and "g,c3a4945edc9e473adac0ab17d258ce05,added" in rows
    out_file = tmp_path / "changes.csv"
    code, out, _ = cli("--json", "changes", "vip", "--from", "0", "--to", "1", "-o", str(out_file))
    assert code == 0 and json.loads(out) == {"from_version": 0, "to_version": 1, "added": 3, "removed": 0,
                                             "output": str(out_file)}
    assert out_file.read_text().count(",added\n") == 3 and not (tmp_path / "changes.csv.part").exists()
    code, _, err = cli("changes", "vip", "--from", "9", "-o", str(tmp_path / "no.csv"))
    assert code == 1 and "no version 9" in err
    assert not (tmp_path / "no.csv").exists() and not (tmp_path / "no.csv.part").exists()    # no partial file
    assert cli("changes", "vip", "--from", "-1")[0] == 2


def test_versions_and_rollback(cli):
    assert cli("profiles", "import", ex("profiles.csv"))[0] == 0
    assert cli("upload", ex("vip.csv"), "--name", "vip")[0] == 0
    assert cli("upload", ex("vip-v2.csv"), "--replace", "vip")[0] == 0
    code, out, _ = cli("--json", "rollback", "vip", "--to", "1")
    assert code == 0 and (json.loads(out)["version"], json.loads(out)["size"]) == (3, 3)
    code, out, _ = cli("--json", "versions", "vip")
    versions = json.loads(out)
    assert code == 0 and [(v["version"], v["head"], v["kept"], v["rollback_of"]) for v in versions] == \
        [(3, True, True, 1), (2, False, True, None), (1, False, True, None)]
    assert versions[2]["upload"]["mode"] == "create" and versions[2]["upload"]["file_name"] == "vip.csv"
    assert versions[0]["upload"] is None and versions[0]["time"].endswith("Z")
    code, out, _ = cli("versions", "vip")
    assert code == 0 and "rollback to 1" in out and "create vip.csv" in out
    code, _, err = cli("rollback", "vip", "--to", "3")
    assert code == 1 and "head already" in err
