"""One list of error reasons (core/errors.py REASONS): every error class takes its reason from it, the
server, the membership front and the client make no other, and the proto's comment and the README's
"Errors" section name exactly these, each with the status the server maps it to."""
import ast
import os
import re

import pytest

import listseg
from listseg.clients.client import CallError
from listseg.core import errors, parser, store
from listseg.core.errors import REASONS
from listseg.server import errors as server_errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def classes(cls=errors.ListsegError):
    out = [cls]
    for sub in cls.__subclasses__():
        out += classes(sub)
    return out


def example(cls):
    if cls is errors.InUse:
        return cls("vip", [{"kind": "campaign", "id": "c1"}])
    if cls is errors.Unauthenticated:
        return cls()
    return cls("an example")


def documented(text, pattern):
    """{reason: status} from the lines of text that match pattern (groups: reason, status)."""
    return {m.group(1): m.group(2) for m in re.finditer(pattern, text, re.M)}


def proto_reasons():
    return documented(source("proto/listseg/v1/listseg.proto"), r"^//   ([A-Z_]+) \(([^)]+)\): ")


def readme_reasons():
    text = source("README.md")
    section = text[text.index("- **Errors**"):]
    section = section[:section.index("\n- **", 1)]
    return documented(section, r"^  \| `([A-Z_]+)` \| ([^|]+?) \|")


def made_in_python(path, callee, position):
    """The constant reasons passed as argument `position` (or reason=) of calls to `callee` in path,
    and the third element of tuples returned by functions there (server/errors.py status_for)."""
    found = set()
    for node in ast.walk(ast.parse(source(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == callee:
            args = node.args[position:position + 1] + [k.value for k in node.keywords if k.arg == "reason"]
            found |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) == 4:
            third = node.value.elts[2]
            if isinstance(third, ast.Constant):
                found.add(third.value)
    return found


def made_by_the_server():
    folder = os.path.join(ROOT, "server")
    found = set()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            found |= made_in_python(f"server/{name}", "abort", 3)
    return found


def made_by_the_front():
    """Every all-capitals string literal of the front's sources: its reasons are its only ones."""
    found = set()
    for name in ("membership_front.cc", "reflection.cc", "status.h", "reflection.h"):
        found |= set(re.findall(r'"([A-Z][A-Z_]{2,})"', source(f"server/native/{name}")))
    return found


def test_every_error_class_takes_an_engine_reason_from_the_table():
    seen = {cls.reason for cls in classes()}
    engine = {r.name for r in REASONS.values() if r.made_by == "engine"}
    assert seen == engine
    assert all(name == r.name for name, r in REASONS.items())
    with pytest.raises(TypeError):
        class Invented(errors.ListsegError):
            reason = "INVENTED"
    with pytest.raises(TypeError):
        class NotOurs(errors.ListsegError):
            reason = "NOT_ON_FRONT"         # the front's, not an engine error


def test_the_engines_errors_are_one_hierarchy():
    assert issubclass(errors.InvalidProfile, errors.InvalidArgument)
    assert issubclass(parser.BadHeader, errors.InvalidArgument)
    assert issubclass(store.MapFullError, errors.StoreError) and issubclass(store.StoreError, errors.ListsegError)
    from listseg.core import _store_py
    assert _store_py.MapFullError is errors.MapFullError
    if store.COMPILED:
        from listseg.core import _store
        assert _store.MapFullError is errors.MapFullError and _store.StoreError is errors.StoreError
    assert server_errors.status_for(errors.MapFullError("MDB_MAP_FULL: Environment mapsize limit reached"))[1:3] == \
        ("storage is full", "STORAGE_FULL")          # LMDB's words stay in the server


def test_the_server_the_front_and_the_client_make_only_reasons_of_the_table():
    made = {"server": made_by_the_server(), "front": made_by_the_front(),
            "client": made_in_python("clients/client.py", "CallError", 2)}
    for maker, found in made.items():
        assert found <= set(REASONS), (maker, found - set(REASONS))
        assert {r.name for r in REASONS.values() if r.made_by == maker} <= found, maker


def test_the_proto_and_the_readme_name_exactly_the_reasons_with_their_status():
    for where, docs in (("proto", proto_reasons()), ("README", readme_reasons())):
        assert list(docs) == list(REASONS), where
        for cls in classes():
            code, _, reason, _ = server_errors.status_for(example(cls))
            assert reason == cls.reason
            assert docs[reason] == code.name, (where, reason)


def test_the_client_error_has_its_own_name():
    assert listseg.CallError is CallError and CallError is not errors.ListsegError
    with pytest.raises(AttributeError, match="listseg.CallError"):
        listseg.ListsegError
