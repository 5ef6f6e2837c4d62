"""The storage seam holds: the engine, the server, the dashboard and the clients reach storage only
through core/backend.py (no transaction, database handle, key or record codec of a backend), and the
engine's upload commit is a compare-and-set on the segment's head."""
import ast
import os
import threading

import pytest
from pyroaring import BitMap

from conftest import people, upload
from listseg.core import ingest
from listseg.core.backend import Retention
from listseg.core.errors import HeadMoved

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# At and below the seam: the interface, the backends (LMDB's bindings too), and the layout they share.
SEAM = {"core/backend.py", "core/lmdb_backend.py", "core/lmdb_profiles.py", "core/lmdb_migrate.py",
        "core/profile_blocks.py", "core/store.py", "core/_store_py.py", "core/redis_backend.py",
        "core/redis_client.py", "core/redis_profiles.py", "core/layout.py"}
# Above it: every other module of the engine, the server, the dashboard and the clients.
ABOVE = [rel for folder in ("core", "server", "dashboard", "clients")
         for rel in (f"{folder}/{name}" for name in sorted(os.listdir(os.path.join(ROOT, folder))))
         if rel.endswith(".py") and rel not in SEAM]
BELOW = ("listseg.core.store", "listseg.core.lmdb_backend", "listseg.core.lmdb_profiles",
         "listseg.core.lmdb_migrate", "listseg.core.profile_blocks", "listseg.core._store",
         "listseg.core._store_py", "lmdb")
# What the layout holds that only a backend may use: keys, the databases, and the record codecs.
BACKEND_ONLY = {"DATABASES", "KEYS", "account_prefix", "dumps", "loads"}
STORAGE_NAMES = {"txn", "dbi", "database"}          # a backend's handles, as names or attributes


def breaches(path, source):
    """[(line, what)] where source (the module at path) reaches below the seam."""
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module in BELOW:
                found.append((node.lineno, f"imports {module}"))
            if module == "listseg.core.layout":
                for alias in node.names:
                    name = alias.name
                    if name in BACKEND_ONLY or name.endswith("_KEY") or name.startswith(("encode_", "decode_")):
                        found.append((node.lineno, f"imports layout.{name}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name in BELOW]
        elif isinstance(node, ast.Name) and node.id in STORAGE_NAMES:
            found.append((node.lineno, f"names {node.id}"))
        elif isinstance(node, ast.Attribute) and node.attr in STORAGE_NAMES:
            found.append((node.lineno, f"uses .{node.attr}"))
        elif isinstance(node, ast.arg) and node.arg in STORAGE_NAMES:
            found.append((node.lineno, f"takes {node.arg}"))
    return found


def test_nothing_above_the_seam_touches_storage():
    assert {"core/engine.py", "core/ids.py", "core/segments.py", "core/ingest.py", "server/servicers.py"} <= set(ABOVE)
    found = []
    for rel in ABOVE:
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            found += [f"  {rel}:{line}: {what}" for line, what in breaches(rel, f.read())]
    assert not found, "storage reached around core/backend.py:\n" + "\n".join(found)


def test_the_seam_check_can_fail():
    planted = {
        "from listseg.core.store import Database": "imports listseg.core.store",
        "from listseg.core.layout import HEAD_KEY": "imports layout.HEAD_KEY",
        "from listseg.core.layout import dumps": "imports layout.dumps",
        "import lmdb": "imports lmdb",
        "with db.read() as txn: pass": "names txn",
        "x = account.database": "uses .database",
        "def f(txn): pass": "takes txn",
    }
    for source, what in planted.items():
        assert what in [w for _, w in breaches("x.py", source)], source


# -- the commit is a compare-and-set on the head ---------------------------------------------------------
def _with_a_commit_between(monkeypatch, account, times):
    """Make the next `times` commits of uploads find that another commit (an append of g7 to "s")
    moved the head after they read it."""
    real = ingest.Upload._next_version
    left = [times]

    def racing(self, snap):
        built = real(self, snap)
        if left[0] and self.segments.id_of("s") == self._current(snap)["segment"]:
            left[0] -= 1
            monkeypatch.setattr(ingest.Upload, "_next_version", real)
            upload(account, b"Type,Identity\ng,g7\n", "append", segment="s")
            monkeypatch.setattr(ingest.Upload, "_next_version", racing)
        return built
    monkeypatch.setattr(ingest.Upload, "_next_version", racing)


def test_an_append_whose_head_moved_builds_on_the_new_head(account, monkeypatch):
    account.profiles.upsert(people(8))
    upload(account, b"Type,Identity\ng,g1\n", name="s")
    _with_a_commit_between(monkeypatch, account, 1)
    rec = upload(account, b"Type,Identity\ng,g2\n", "append", segment="s")
    assert rec["state"] == "succeeded" and rec["report"]["version"] == 3
    # version 2 is the append that came between; this one read again and kept it: nothing lost
    assert list(account.segments.members("s")[1]) == [1, 2, 7]


def test_a_commit_whose_head_keeps_moving_fails_and_changes_nothing(account, monkeypatch):
    account.profiles.upsert(people(8))
    upload(account, b"Type,Identity\ng,g1\n", name="s")
    _with_a_commit_between(monkeypatch, account, ingest.COMMIT_TRIES)
    rec = upload(account, b"Type,Identity\ng,g2\ng,g3\n", "replace", segment="s")
    assert rec["state"] == "failed" and "other commits changed the segment" in rec["reason"]
    version, uids, _ = account.segments.members("s")
    assert (version, list(uids)) == (1 + ingest.COMMIT_TRIES, [1, 7])     # only the appends between


def test_publish_refuses_a_head_that_moved(engine):
    """The backend's own compare-and-set, below the engine: two units expecting one head, one wins."""
    acct = engine.account()
    acct.profiles.upsert(people(2))
    upload(acct, b"Type,Identity\ng,g0\n", name="s")
    seg = acct.segments.id_of("s")
    staged = engine.backend.stage(acct.number, BitMap([1]))
    assert engine.backend.write(lambda unit: unit.publish(acct.number, seg, 1, staged, 0.0, Retention(), {})) == 2
    with pytest.raises(HeadMoved):
        engine.backend.write(lambda unit: unit.publish(acct.number, seg, 1, staged, 0.0, Retention(), {}))
    with engine.backend.snapshot() as snap:
        assert snap.head(acct.number, seg) == 2 and list(snap.version(acct.number, seg, 2)) == [1]


def test_concurrent_appends_lose_no_member(account):
    """Appends racing from threads: each one's member is in the final version."""
    n = 6
    account.profiles.upsert(people(n + 1))
    upload(account, b"Type,Identity\ng,g0\n", name="s")
    errors = []

    def append(k):
        try:
            rec = upload(account, f"Type,Identity\ng,g{k}\n".encode(), "append", segment="s")
            if rec["state"] != "succeeded":
                errors.append(rec["reason"])
        except Exception as e:            # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=append, args=(k,)) for k in range(1, n + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = len(errors)
    assert all("other commits changed the segment" in e for e in errors), errors
    members = set(account.segments.members("s")[1])
    assert len(members) == n + 1 - failed and 0 in members       # a failed append is whole, not lost
