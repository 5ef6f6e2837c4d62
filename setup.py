"""Build listseg: this folder is the `listseg` package (core/, server/, clients/, generated v1/);
pyproject.toml has the metadata, this file the package map and the extensions.

Cython extensions are optional at run time (each has a pure-Python twin) but `make install` and
`pip install .` build them. LISTSEG_DEBUG=1 builds them with assertions, line tracing and no
optimisation. The gRPC stubs in v1/ are generated first when missing or older than the .proto.
"""
import os
import sys

from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto"))
import stubs  # noqa: E402  (proto/stubs.py)

debug = os.environ.get("LISTSEG_DEBUG") == "1"


def extensions():
    from Cython.Build import cythonize

    flags = ["-O0", "-g"] if debug else ["-O3"]
    exts = [
        Extension("listseg.core._parser", ["core/_parser.pyx"], extra_compile_args=flags),
        Extension("listseg.core._store", ["core/_store.pyx"], libraries=["lmdb"], extra_compile_args=flags),
        Extension("listseg.core._keyindex", ["core/_keyindex.pyx"], extra_compile_args=flags),
    ]
    directives = {"linetrace": True, "boundscheck": True} if debug else {}
    # core/ on the include path: the extensions cimport _batch.pxd and includes/lmdb.pxd from it
    return cythonize(exts, include_path=["core"], compiler_directives=directives, annotate=debug)


if not stubs.current():
    stubs.generate()

setup(
    package_dir={"listseg": "."},
    packages=["listseg", "listseg.core", "listseg.server", "listseg.clients", "listseg.v1", "listseg.dashboard",
              "listseg.dashboard.views"],
    package_data={"listseg": ["py.typed"], "listseg.core": ["*.pyi"], "listseg.v1": ["*.pyi"],
                  "listseg.dashboard": ["templates/*.jinja", "static/*"]},
    ext_modules=extensions(),
)
