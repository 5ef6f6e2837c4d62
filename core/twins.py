"""Choosing between a compiled extension and its pure-Python twin (the yarl convention)."""
import importlib
import os


def pick(compiled_module, twin, name):
    """`name` from the compiled module, or from the twin module when LISTSEG_NO_EXTENSIONS is set
    or the extension was not built."""
    if not os.environ.get("LISTSEG_NO_EXTENSIONS"):
        try:
            return getattr(importlib.import_module(compiled_module), name)
        except ImportError:  # pragma: no cover - exercised by the no-extension test run
            pass
    return getattr(twin, name)
