"""The upload and profile parsers: every case runs on the compiled scanner and on its twin."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listseg.core import _parser_py, parser
from parsing import outcome, split_at
from listseg.core.parser import PROFILES, UPLOAD, BadHeader, parse_all

# (file, expected valid rows [(kind, identity)], expected errors [(line, reason)])
CASES = [
    ("plain header", b"Type,Identity\ng,abc\ni,x@y.com\n", [("g", b"abc"), ("i", b"x@y.com")], []),
    ("no header", b"g,abc\nI,Bob\n", [("g", b"abc"), ("i", b"Bob")], []),
    ("header any case, spaces, order", b"  IDENTITY , type \nabc,G\n", [("g", b"abc")], []),
    ("BOM before header", b"\xef\xbb\xbfType,Identity\ng,a\n", [("g", b"a")], []),
    ("BOM, no header", b"\xef\xbb\xbfg,a\n", [("g", b"a")], []),
    ("CRLF", b"Type,Identity\r\ng,a\r\ni,b\r\n", [("g", b"a"), ("i", b"b")], []),
    ("CR only", b"g,a\ri,b\r", [("g", b"a"), ("i", b"b")], []),
    ("no final newline", b"g,a\ng,b", [("g", b"a"), ("g", b"b")], []),
    ("blank lines skipped, lines still counted", b"g,a\n\n   \n\t\nx,b\n", [("g", b"a")], [(5, "bad type")]),
    ("quoted comma", b'i,"doe, john"\n', [("i", b"doe, john")], []),
    ("doubled quotes", b'i,"say ""hi"""\n', [("i", b'say "hi"')], []),
    ("trimmed", b"  g  ,  abc  \n", [("g", b"abc")], []),
    ("quoted and trimmed", b'g, " abc " \n', [("g", b"abc")], []),
    ("quoted type", b'"g",abc\n', [("g", b"abc")], []),
    ("quote inside unquoted is literal", b'i,o"brien\n', [("i", b'o"brien')], []),
    ("quoted newline: row keeps its first line", b'g,a\ni,"two\nlines"\nx,b\n',
     [("g", b"a"), ("i", b"two\nlines")], [(4, "bad type")]),
    ("bad type", b"Type,Identity\nx,abc\ngg,abc\n,abc\n", [], [(2, "bad type"), (3, "bad type"), (4, "bad type")]),
    ("empty identity", b"g,\ng,  \ni,\"\"\n", [], [(1, "empty identity"), (2, "empty identity"), (3, "empty identity")]),
    ("column count", b"g\ng,a,b\ng,a,\n", [], [(1, "wrong column count"), (2, "wrong column count"), (3, "wrong column count")]),
    ("too long", b"g," + b"a" * 257 + b"\ng," + b"a" * 256 + b"\n", [("g", b"a" * 256)], [(1, "identity too long")]),
    ("too long, trailing blanks do not count", b"g," + b"a" * 256 + b"     \n", [("g", b"a" * 256)], []),
    ("bad utf-8", b"g,\xff\xfe\ni,caf\xc3\xa9\ni,\xed\xa0\x80\n", [("i", "café".encode())],
     [(1, "invalid UTF-8"), (3, "invalid UTF-8")]),
    ("NUL byte", b"g,a\x00b\ng,ok\n", [("g", b"ok")], [(1, "NUL byte")]),
    ("text after closing quote", b'g,"ab"c\n', [], [(1, "text after closing quote")]),
    ("unterminated quote runs to the end", b'g,a\ng,"open\ng,b\n', [("g", b"a")], [(2, "unterminated quote")]),
    ("only a header", b"Type,Identity\n", [], []),
    ("only blank lines", b"\n\n\r\n  \n", [], []),
    ("empty file", b"", [], []),
]


def _run(scanner, data, chunk=None):
    p, batch = parse_all(data, scanner=scanner, chunk_size=chunk)
    rows = [(chr(k), v) for k, (v,) in zip(batch.kinds, batch.values())]
    return rows, p.errors(batch)


@pytest.mark.parametrize("name,data,rows,errors", CASES, ids=[c[0] for c in CASES])
def test_cases(scanner, name, data, rows, errors):
    assert _run(scanner, data) == (rows, errors)


@pytest.mark.parametrize("name,data,rows,errors", CASES, ids=[c[0] for c in CASES])
def test_every_split_offset(scanner, name, data, rows, errors):
    """A file fed in two pieces, split at any byte, parses exactly as in one piece."""
    for cut in range(len(data) + 1):
        p = parser.Parser(UPLOAD, scanner=scanner)
        p.feed(data[:cut])
        first = p.take()
        p.feed(data[cut:])
        p.finish()
        merged = parser.merge([first, p.take()], 1)
        got = [(chr(k), v) for k, (v,) in zip(merged.kinds, merged.values())], p.errors(merged)
        assert got == (rows, errors), f"split at {cut}"


def test_byte_at_a_time(scanner):
    data = b"".join(c[1] for c in CASES[9:16])
    assert _run(scanner, data, chunk=1) == _run(scanner, data)


@pytest.mark.parametrize("data", [b"Name,Email\ng,a\n", b"Type\ng,a\n", b"Type,Type\n", b"x,abc\ng,a\n",
                                  b"\xef\xbb\xbfType;Identity\n", b"Type,Identity,Extra\ng,a\n"])
def test_bad_header_fails(scanner, data):
    with pytest.raises(BadHeader):
        parse_all(data, scanner=scanner)


def test_profiles_layout(scanner):
    data = b'guid,channels,identity\nA1,"email;sms",a@x.com\nB2,,\n,push,x\n'
    p, batch = parse_all(data, PROFILES, scanner=scanner)
    assert batch.values() == [(b"A1", b"a@x.com", b"email;sms"), (b"B2", b"", b"")]
    assert p.errors(batch) == [(4, "empty guid")]


def test_profiles_without_header(scanner):
    p, batch = parse_all(b"A1,a@x.com,email\n", PROFILES, scanner=scanner)
    assert batch.values() == [(b"A1", b"a@x.com", b"email")]


def test_pending_rows_counts_valid_and_invalid(scanner):
    p = parser.Parser(UPLOAD, scanner=scanner)
    p.feed(b"g,a\nx,b\ng,c\n")
    assert p.pending_rows == 3
    assert p.take().valid == 2
    assert p.pending_rows == 0


@pytest.mark.skipif(bool(os.environ.get("LISTSEG_NO_EXTENSIONS")), reason="twin-only run")
def test_compiled_scanner_loaded():
    """The build must have produced the extension: the twin is a fallback, not the product."""
    assert parser.COMPILED, "listseg.core._parser did not load; run `make install`"


# -- property test: compiled vs twin on random files in random chunkings -------------------------
_pieces = st.sampled_from([b"g", b"i", b"G", b"x", b",", b"\n", b"\r", b"\r\n", b'"', b'""', b" ", b"\t",
                           b"abc", b"\xc3\xa9", b"\xff", b"\x00", b"Type", b"Identity", b"\xef\xbb\xbf"])


@pytest.mark.skipif(bool(os.environ.get("LISTSEG_NO_EXTENSIONS")), reason="twin-only run")
@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_pieces, max_size=60), cuts=st.lists(st.integers(0, 400), max_size=5),
       layout=st.sampled_from([UPLOAD, PROFILES]))
def test_compiled_matches_twin(pieces, cuts, layout):
    from listseg.core._parser import Scanner as Compiled
    data = b"".join(pieces)
    chunks = split_at(data, cuts)
    expected = outcome(_parser_py.Scanner, [data], layout, 8)
    assert outcome(Compiled, chunks, layout, 8) == expected
    assert outcome(_parser_py.Scanner, chunks, layout, 8) == expected
