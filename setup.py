"""Build listseg: this folder is the `listseg` package (core/, server/, clients/, generated v1/).

Cython extensions are optional at run time (each has a pure-Python twin) but `make install` builds
them. LISTSEG_DEBUG=1 builds them with assertions, line tracing and no optimisation.
"""
import os

from setuptools import Extension, setup

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


setup(
    name="listseg",
    version="0.1.0",
    description="Custom list segments as a service",
    python_requires=">=3.11",
    package_dir={"listseg": "."},
    packages=["listseg", "listseg.core", "listseg.server", "listseg.clients", "listseg.v1", "listseg.dashboard"],
    package_data={"listseg.core": ["*.pyi"], "listseg.dashboard": ["templates/*.jinja", "static/*"]},
    ext_modules=extensions(),
    entry_points={"console_scripts": ["listseg=listseg.clients.cli:main"]},
)
