"""Wider fuzzing of the scanner than test_parser.py's property test: any byte, long runs, tiny field
limits, both layouts; and both scanners held against an independent reading of the README
(tests/csv_reference.py). tests/fuzz_parser.py does the same under atheris, by hand."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import csv_reference
from parsing import outcome, split_at
from listseg.core import _parser_py, parser
from listseg.core.parser import PROFILES, UPLOAD

TWIN_ONLY = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))

_structure = [b",", b"\n", b"\r", b"\r\n", b'"', b'""', b" ", b"\t", b"\x00", b"\xef\xbb\xbf", b"g", b"i", b"G",
              b"I", b"Type", b"Identity", b"guid", b"channels", b"identity", b"type", b"g,", b"i,"]
_text = [b"abc", b"user@x.com", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
         b"\xe2\x82", b"\xff", b"\x80", b"\xfe\xff", b"\xff\xfe"]
_runs = [b"a" * 255, b"a" * 256, b"a" * 257, b"\xc3\xa9" * 129, b" " * 300, b"," * 12, b'"' * 7, b"\n" * 5,
         b"\r" * 3, b"x\n" * 40]
piece = st.one_of(st.sampled_from(_structure + _text + _runs), st.binary(min_size=1, max_size=24),
                  st.integers(0, 255).map(lambda b: bytes([b])))
_utf8 = st.text(max_size=6).map(str.encode)
ending = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
row = st.tuples(st.sampled_from([b"g", b"i", b"I", b" g\t", b'"i"', b"x", b""]), st.just(b","),  # two fields
                _utf8, st.sampled_from([b""] + _text), _utf8, ending)    # at most one odd piece per value
line = st.one_of(row, st.tuples(st.lists(piece, max_size=8).map(b"".join), ending))
files = st.one_of(st.lists(line.map(b"".join), min_size=1, max_size=100).map(b"".join),
                  st.lists(piece, max_size=150).map(b"".join), st.binary(max_size=4000))
heads = st.sampled_from([b"", b"Type,Identity\n", b"\xef\xbb\xbfidentity , TYPE\r\n", b"g,a\n",
                         b"guid,identity,channels\n"])


@pytest.mark.skipif(TWIN_ONLY, reason="twin-only run")
@settings(max_examples=500, deadline=None)
@given(head=heads, body=files, cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
       layout=st.sampled_from([UPLOAD, PROFILES]), max_field=st.sampled_from([1, 2, 8, 256]))
def test_compiled_matches_twin_on_any_bytes(head, body, cuts, layout, max_field):
    from listseg.core._parser import Scanner as Compiled
    data = head + body
    expected = outcome(_parser_py.Scanner, [data], layout, max_field)
    assert outcome(Compiled, split_at(data, cuts), layout, max_field) == expected
    assert outcome(Compiled, [data], layout, max_field) == expected


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=heads, body=files, cuts=st.lists(st.integers(0, 1 << 16), max_size=4),
       max_field=st.sampled_from([8, 256]))
def test_scanner_follows_the_readme(scanner, head, body, cuts, max_field):
    """Rows, errors and lines as README "Upload files" says, on the compiled scanner and the twin."""
    data = head + body
    want = csv_reference.parse(data, max_field)
    got = outcome(scanner, split_at(data, cuts), UPLOAD, max_field)
    if want == "bad header":
        assert got == "bad header"
    else:
        kinds, values, errors = got[:3]
        assert ([(chr(k), v) for k, (v,) in zip(kinds, values)], errors) == want


def test_utf8_check_matches_pythons_decoder(scanner):
    """Every lead byte from 0x80 with one or two bytes from the edges of the continuation range after it
    (three after F0-F4): overlongs, surrogates, past U+10FFFF, truncated. The scanner's verdict on each
    identity is Python's strict decoder's."""
    edges = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xFF]
    seqs = []
    for lead in range(0x80, 0x100):
        seqs.append(bytes([lead]))
        seqs += [bytes([lead, a]) for a in edges]
        seqs += [bytes([lead, a, b]) for a in edges for b in edges]
        if 0xF0 <= lead <= 0xF4:
            seqs += [bytes([lead, a, b, c]) for a in edges for b in edges for c in edges]
    data = b"".join(b"i,a" + s + b"z\n" for s in seqs)
    p, batch = parser.parse_all(data, scanner=scanner, chunk_size=1 << 16)
    valid = [(b"a" + s + b"z",) for s in seqs if csv_reference._utf8(s)]
    bad = [(line, "invalid UTF-8") for line, s in enumerate(seqs, 1) if not csv_reference._utf8(s)]
    assert len(valid) > 1000 and len(bad) > 10_000
    assert batch.values() == valid and p.errors(batch) == bad
