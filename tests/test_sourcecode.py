"""The source passes ruff (the whole tree) and mypy (the public API: listseg.Client and its module,
listseg.core.engine.Engine), with pyproject.toml's settings: asyncpg's test__sourcecode.py habit.
mypy sees this folder as the `listseg` package, the way it is installed, through a symlink."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PUBLIC = ("listseg.clients.client", "listseg.core.engine")


def test_ruff_finds_nothing():
    out = subprocess.run([os.path.join(BIN, "ruff"), "check", "--no-cache", ROOT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_mypy_finds_nothing_in_the_public_api(tmp_path):
    os.symlink(ROOT, tmp_path / "listseg")
    args = [os.path.join(BIN, "mypy"), "--config-file", os.path.join(ROOT, "pyproject.toml"), "--no-incremental",
            *(a for module in PUBLIC for a in ("-p", module))]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, MYPYPATH=str(tmp_path)))
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert f"in {len(PUBLIC)} source files" in out.stdout           # both were checked, not skipped
