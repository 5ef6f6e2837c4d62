"""Coverage-guided fuzzing of the upload scanner with atheris (by hand; `make test` does not run it).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz_parser.py -max_total_time=60            # or -atheris_runs=200000
    .venv/bin/python tests/fuzz_parser.py tests/corpus/*.csv             # replay files, then stop

Each input is split into a few choices (layout, field limit, chunk cuts) and the file's bytes. The
compiled scanner, fed in those chunks and whole, must give exactly what the pure-Python twin gives on
the whole file; for uploads it must also match tests/csv_reference.py (the README's rules). Any
exception other than the parser's BadHeader is a finding: libFuzzer stops and writes the input to
crash-<sha1>. The twin's Python code is instrumented for coverage; the compiled one is not.
"""
import os
import sys

try:
    import atheris
except ImportError:  # pragma: no cover
    sys.exit("atheris is not installed: .venv/bin/pip install atheris")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports():
    import csv_reference
    from parsing import outcome, split_at
    from listseg.core import _parser_py
    from listseg.core.parser import PROFILES, UPLOAD

from listseg.core._parser import Scanner as Compiled  # noqa: E402 - the extension must be built

LAYOUTS = (UPLOAD, PROFILES)
MAX_FIELDS = (1, 2, 8, 256)


def test_one_input(raw):
    fdp = atheris.FuzzedDataProvider(raw)
    layout = LAYOUTS[fdp.ConsumeIntInRange(0, 1)]
    max_field = MAX_FIELDS[fdp.ConsumeIntInRange(0, 3)]
    ncuts = fdp.ConsumeIntInRange(0, 4)
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(ncuts)]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks = split_at(data, cuts)
    where = [len(c) for c in chunks]

    expected = outcome(_parser_py.Scanner, [data], layout, max_field)
    for got, how in ((outcome(Compiled, chunks, layout, max_field), f"compiled in chunks of {where}"),
                     (outcome(Compiled, [data], layout, max_field), "compiled whole"),
                     (outcome(_parser_py.Scanner, chunks, layout, max_field), f"twin in chunks of {where}")):
        if got != expected:
            raise AssertionError(f"{how} differs from the twin on {data!r}:\n{got!r}\n!=\n{expected!r}")
    if layout is UPLOAD and max_field >= 8:
        want = csv_reference.parse(data, max_field)
        got = expected if expected == "bad header" else (
            [(chr(k), v) for k, (v,) in zip(expected[0], expected[1])], expected[2])
        if got != want:
            raise AssertionError(f"the scanners differ from csv_reference on {data!r}:\n{got!r}\n!=\n{want!r}")


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
