"""Streaming CSV parsing for uploads (`Type,Identity`) and profile imports (`guid,identity,channels`).

`Parser.feed(chunk)` any number of times, `take()` whenever convenient for a packed `Batch`, then
`finish()` and a last `take()`. The hot loop is the compiled `_parser.Scanner`; its pure-Python twin
`_parser_py.Scanner` is used when the extension is missing or LISTSEG_NO_EXTENSIONS=1.
"""
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from listseg.core import _parser_py
from listseg.core.errors import BadHeader
from listseg.core.twins import NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from listseg.core._parser_py import Scanner
else:
    try:
        from listseg.core._parser import Scanner
    except ImportError:  # pragma: no cover - not built; tests/test_parser.py fails the suite then
        from listseg.core._parser_py import Scanner

COMPILED = Scanner is not _parser_py.Scanner

#: Longest identity, guid or other field, in UTF-8 bytes, after trimming. LMDB keys hold 511 bytes;
#: this leaves room for the account prefix and keeps every identity a valid key.
MAX_FIELD = 256

BOM = b"\xef\xbb\xbf"

REASONS = {
    _parser_py.R_UNTERMINATED: "unterminated quote",
    _parser_py.R_BAD_QUOTING: "text after closing quote",
    _parser_py.R_COLUMNS: "wrong column count",
    _parser_py.R_NUL: "NUL byte",
    _parser_py.R_BAD_TYPE: "bad type",
    _parser_py.R_EMPTY: "empty {column}",
    _parser_py.R_TOO_LONG: "{column} too long",
    _parser_py.R_UTF8: "invalid UTF-8",
}


@dataclass(frozen=True)
class Layout:
    """The columns of a file kind: names, which one holds a type code, which may not be empty."""

    names: tuple
    type_col: int
    required: tuple


UPLOAD = Layout(names=("type", "identity"), type_col=0, required=(True, True))
PROFILES = Layout(names=("guid", "identity", "channels"), type_col=-1, required=(True, False, False))


@dataclass
class Batch:
    """Rows parsed since the last take(): values packed, no object per row."""

    fields: bytes           # the non-type values of every valid row, concatenated
    ends: memoryview        # uint64 cumulative end offset of each value
    kinds: bytes            # b"g" / b"i" per valid row (uploads only)
    error_lines: memoryview  # uint64 first line of each invalid row
    error_codes: bytes      # reason * 16 + column per invalid row
    nvals: int              # values per valid row

    @property
    def valid(self):
        return len(self.ends) // self.nvals

    @property
    def invalid(self):
        return len(self.error_codes)

    def value(self, row, col=0):
        """Value `col` of valid row `row` as bytes (for tests and small batches)."""
        i = row * self.nvals + col
        start = self.ends[i - 1] if i else 0
        return self.fields[start:self.ends[i]]

    def values(self):
        """Every valid row as a tuple of bytes values (for tests and small batches)."""
        return [tuple(self.value(r, c) for c in range(self.nvals)) for r in range(self.valid)]


class Parser:
    def __init__(self, layout=UPLOAD, max_field=MAX_FIELD, scanner=None):
        self.layout = layout
        self._scanner = (scanner or Scanner)(
            len(layout.names), layout.type_col, max_field, list(layout.required), list(layout.names))
        self._head = b""        # the first bytes, held until we know whether they are a BOM
        self._started = False
        self.nvals = len(layout.names) - (1 if layout.type_col >= 0 else 0)

    def feed(self, chunk):
        if not self._started:
            self._head += bytes(chunk)
            if len(self._head) < len(BOM) and BOM.startswith(self._head):
                return
            chunk = self._head[len(BOM):] if self._head.startswith(BOM) else self._head
            self._head = b""
            self._started = True
        self._scanner.feed(chunk)
        self._check_header()

    def finish(self):
        if not self._started:         # fewer than 3 bytes, all a BOM's prefix: they are content
            self._started = True
            self._scanner.feed(self._head)
        self._scanner.finish()
        self._check_header()

    def _check_header(self):
        if self._scanner.header_error:
            raise BadHeader("bad header: the first row must name the columns "
                            + ",".join(n.capitalize() for n in self.layout.names))

    @property
    def header_seen(self):
        return bool(self._scanner.header_seen)

    @property
    def pending_rows(self):
        return self._scanner.pending_rows

    def take(self):
        fields, ends, kinds, err_lines, err_codes = self._scanner.take()
        return Batch(fields, memoryview(ends).cast("Q"), kinds, memoryview(err_lines).cast("Q"),
                     err_codes, self.nvals)

    def reason(self, code):
        """Human reason for an error code, e.g. 'empty identity'."""
        return REASONS[code >> 4].format(column=self.layout.names[code & 15])

    def errors(self, batch, limit=None):
        """[(line, reason)] of a batch's invalid rows (the first `limit` of them, if given)."""
        n = batch.invalid if limit is None else max(0, min(limit, batch.invalid))
        return [(line, self.reason(code)) for line, code in zip(batch.error_lines[:n], batch.error_codes[:n])]


def parse_all(data, layout=UPLOAD, scanner=None, chunk_size=None):
    """Parse a whole bytes object (in chunks of chunk_size, if given): (Parser, merged Batch)."""
    p = Parser(layout, scanner=scanner)
    batches = []
    step = chunk_size or max(len(data), 1)
    for i in range(0, len(data), step):
        p.feed(data[i:i + step])
        batches.append(p.take())
    p.finish()
    batches.append(p.take())
    return p, merge(batches, p.nvals)


def merge(batches, nvals):
    """One Batch from several (offsets rebased)."""
    fields, ends, lines = bytearray(), array("Q"), array("Q")
    kinds, codes = bytearray(), bytearray()
    for b in batches:
        base = len(fields)
        fields += b.fields
        ends.extend(e + base for e in b.ends)
        kinds += b.kinds
        lines.extend(b.error_lines)
        codes += b.error_codes
    return Batch(bytes(fields), memoryview(ends.tobytes()).cast("Q"), bytes(kinds),
                 memoryview(lines.tobytes()).cast("Q"), bytes(codes), nvals)


def value_at(fields, ends, i):
    """Value i of a packed batch (fields concatenated, ends their cumulative end offsets), as bytes."""
    return bytes(fields[ends[i - 1] if i else 0:ends[i]])
