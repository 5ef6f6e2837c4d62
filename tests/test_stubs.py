"""Each extension's .pyi names what its twin defines, with the same parameters, and the built
extension has every name the stub promises (the stubs are what type checkers see of a .so)."""
import ast
import importlib
import inspect
import os

import pytest

CORE = os.path.join(os.path.dirname(__file__), "..", "core")
EXTENSIONS = ["_parser", "_store", "_keyindex"]


def stub_api(name):
    """{qualified name: parameter names or None (an attribute)} of core/<name>.pyi."""
    with open(os.path.join(CORE, name + ".pyi"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    api = {}

    def params(fn):
        a = fn.args
        return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            api[node.name] = params(node)
        elif isinstance(node, ast.ClassDef):
            api[node.name] = None
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    is_property = any(getattr(d, "id", None) == "property" for d in item.decorator_list)
                    api[f"{node.name}.{item.name}"] = None if is_property else params(item)
                elif isinstance(item, ast.AnnAssign):
                    api[f"{node.name}.{item.target.id}"] = None
    return api


def public(module):
    """The twin's public classes and functions, {qualified name: parameter names or None}."""
    api = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            api[name] = list(inspect.signature(obj).parameters)
        elif inspect.isclass(obj):
            api[name] = None
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and (not attr.startswith("_") or attr in DUNDERS):
                    api[f"{name}.{attr}"] = list(inspect.signature(member).parameters)
                elif isinstance(member, property) and not attr.startswith("_"):
                    api[f"{name}.{attr}"] = None
    return api


DUNDERS = {"__init__", "__enter__", "__exit__"}


@pytest.mark.parametrize("name", EXTENSIONS)
def test_stub_matches_the_twin(name):
    stub, twin = stub_api(name), public(importlib.import_module(f"listseg.core.{name}_py"))
    for qual, params in twin.items():
        assert qual in stub, f"{name}.pyi lacks {qual}, which {name}_py defines"
        if params is not None:
            assert stub[qual] == params, f"{name}.pyi: {qual}{stub[qual]} but the twin takes {params}"
    for qual, params in stub.items():
        if params is not None:
            assert qual in twin, f"{name}.pyi promises {qual}, which {name}_py does not define"


@pytest.mark.skipif(bool(os.environ.get("LISTSEG_NO_EXTENSIONS")), reason="twin-only run")
@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_has_what_its_stub_promises(name):
    module = importlib.import_module(f"listseg.core.{name}")
    for qual, params in stub_api(name).items():
        owner, _, attr = qual.rpartition(".")
        if params is None and owner:
            continue                              # an instance attribute: not on the type
        obj = getattr(module, owner) if owner else module
        assert hasattr(obj, attr or qual), f"listseg.core.{name} lacks {qual}"


def test_the_check_can_fail(tmp_path, monkeypatch):
    """A stub that drops a method or renames a parameter is caught."""
    with open(os.path.join(CORE, "_keyindex.pyi"), encoding="utf-8") as f:
        text = f.read()
    for broken in (text.replace("def lookup(self, batch", "def lookup(self, keys"),
                   text.replace("    def lookup(self, batch: Buffer) -> bytes: ...\n", "")):
        (tmp_path / "_keyindex.pyi").write_text(broken)
        monkeypatch.setitem(globals(), "CORE", str(tmp_path))
        with pytest.raises(AssertionError):
            test_stub_matches_the_twin("_keyindex")
