"""Choosing between a compiled extension and its pure-Python twin (the yarl convention).

Each chooser (parser.py, store.py, keyindex.py) is written out in yarl's form, so type checkers
follow the `TYPE_CHECKING` branch to the twin's source and see its types:

    if TYPE_CHECKING or NO_EXTENSIONS:
        from listseg.core._x_py import X
    else:
        try:
            from listseg.core._x import X
        except ImportError:
            from listseg.core._x_py import X

The `.pyi` beside each extension describes the same API for tools that open the compiled module.
"""
import os

#: LISTSEG_NO_EXTENSIONS=1 runs the twins even where the extensions are built (`make test-twin`).
NO_EXTENSIONS = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))
