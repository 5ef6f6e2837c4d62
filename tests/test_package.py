"""The package: `pip wheel .` in a clean venv builds a wheel (Cython extensions and gRPC stubs made
by the build, pyproject.toml's pinned dependencies), and `listseg` installed from it serves, uploads
and answers IsMember with no `make` and nothing from this checkout on its path."""
import json
import os
import subprocess
import sys

from harness import free_port, stop_server, wait_healthy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **kw):
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out


def test_a_wheel_built_in_a_clean_venv_serves_uploads_and_answers(tmp_path):
    source = tmp_path / "src"                  # the checkout's files, less what git ignores (builds, stubs)
    files = run("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    for rel in filter(None, files.split("\0")):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(source / os.path.dirname(rel), exist_ok=True)
            with open(os.path.join(ROOT, rel), "rb") as f, open(source / rel, "wb") as g:
                g.write(f.read())
    assert not (source / "v1" / "listseg_pb2.py").exists()      # the build makes the stubs
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", str(source), "--no-deps", "-w", str(tmp_path / "dist"))
    [wheel] = os.listdir(tmp_path / "dist")
    run(*pip, "install", str(tmp_path / "dist" / wheel))
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LISTSEG_FRONT")}
    listseg = str(venv / "bin" / "listseg")
    where = run(str(venv / "bin" / "python"), "-c", "import listseg.core._store as s; print(s.__file__)",
                cwd=work, env=env).stdout
    assert where.startswith(str(venv)) and where.strip().endswith(".so")    # the compiled store, installed
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([listseg, "serve", "--data", str(work / "data"), "--listen", f"127.0.0.1:{port}"],
                            cwd=work, env=env, stderr=log)
    try:
        wait_healthy(f"127.0.0.1:{port}")
        server = ["--server", f"127.0.0.1:{port}"]
        (work / "profiles.csv").write_text("guid,identity,channels\ng1,jane@x.com,email\ng2,,sms\n")
        (work / "list.csv").write_text("Type,Identity\ni,jane@x.com\ng,nobody\n")
        run(listseg, *server, "profiles", "import", "profiles.csv", cwd=work, env=env)
        up = run(listseg, *server, "--json", "upload", "list.csv", "--name", "vip", cwd=work, env=env)
        assert json.loads(up.stdout)["qualified"] == 1, up.stdout
        assert subprocess.run([listseg, *server, "is-member", "vip", "--guid", "g1"], cwd=work, env=env,
                              timeout=60).returncode == 0
        assert subprocess.run([listseg, *server, "is-member", "vip", "--guid", "g2"], cwd=work, env=env,
                              timeout=60).returncode == 1
    finally:
        stop_server(proc)
        log.close()
