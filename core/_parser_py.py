"""Pure-Python twin of `_parser.pyx`: the same state machine, byte for byte, and the same output.

Used when the compiled scanner is absent or LISTSEG_NO_EXTENSIONS is set. It is a Python loop over bytes,
so it is slow; tests run every case on both scanners and a property test compares them on random files.

Contract of `Scanner(ncols, type_col, max_field, required, names)`:
- `feed(data)` any number of times, then `finish()`; a row split at any byte parses as if whole.
- Rows end at LF, CR or CRLF outside quotes; blank (or all-blank) lines are skipped and not counted.
- Fields are trimmed of spaces and tabs; RFC 4180 quotes; `""` inside quotes is one quote.
- The first non-blank row is a header when (type_col >= 0) its first field is not a type code
  (g or i, any case), or (type_col < 0) its names match `names`. A header must name every column once
  (any case, any order); otherwise `header_error` is set and the rest of the stream is ignored.
- `take()` returns `(fields, ends, kinds, error_lines, error_codes)` as bytes: the non-type fields of
  each valid row in logical column order, concatenated; their cumulative end offsets (native uint64);
  the lower-cased type code of each valid row; and for each invalid row its first line (uint64) and
  a code `reason * 16 + logical column`.
"""
from array import array

R_UNTERMINATED, R_BAD_QUOTING, R_COLUMNS, R_NUL, R_BAD_TYPE, R_EMPTY, R_TOO_LONG, R_UTF8 = range(1, 9)

FIELD_START, UNQUOTED, QUOTED, QUOTE_IN_QUOTED, AFTER_QUOTE = range(5)
MAX_COLS = 8
_BLANKS = (32, 9)


class Scanner:
    def __init__(self, ncols, type_col, max_field, required, names):
        if ncols < 1 or ncols > MAX_COLS:
            raise ValueError("ncols out of range")
        self.ncols = ncols
        self.type_col = type_col
        self.max_field = max_field
        self.required = [bool(r) for r in required] + [False] * (MAX_COLS - len(required))
        self.names = [n.encode() if isinstance(n, str) else n for n in names]
        self.perm = list(range(MAX_COLS))
        self.line = 1
        self.row_line = 1
        self.prev_cr = False
        self.first_row_done = False
        self.header_error = False
        self.header_seen = False
        self._reset_row()
        self._new_batch()

    def _new_batch(self):
        self.out_fields = bytearray()
        self.out_ends = array("Q")
        self.out_kinds = bytearray()
        self.err_lines = array("Q")
        self.err_codes = bytearray()

    def _reset_row(self):
        self.state = FIELD_START
        self.row_active = False
        self.cf = 0
        self.quoted = False
        self.bad_quoting = False
        self.has_nul = False
        self.fields = [bytearray() for _ in range(MAX_COLS)]   # capped at max_field
        self.flen = [0] * MAX_COLS
        self.flast = [0] * MAX_COLS
        self.fquoted = [False] * MAX_COLS

    def _content(self, c):
        f = self.cf
        if c == 0:
            self.has_nul = True
        if f >= MAX_COLS:
            return
        if self.flen[f] == 0 and c in _BLANKS:
            return
        if self.flen[f] < self.max_field:
            self.fields[f].append(c)
        self.flen[f] += 1
        if c not in _BLANKS:
            self.flast[f] = self.flen[f]

    def _next_field(self):
        if self.cf < MAX_COLS:                  # stops at MAX_COLS, as the compiled int must
            self.fquoted[self.cf] = self.quoted
            self.cf += 1
        self.quoted = False
        self.state = FIELD_START

    def _value(self, phys):
        return bytes(self.fields[phys][: self.flast[phys]])

    def _is_type_code(self, phys):
        return phys < MAX_COLS and self.flast[phys] == 1 and (self.fields[phys][0] | 0x20) in (103, 105)

    def _header_names(self, nfields):
        if nfields != self.ncols or any(self.flast[p] > self.max_field for p in range(nfields)):
            return None
        return [self._value(p).lower() for p in range(nfields)]

    def _header(self, nfields):
        names = self._header_names(nfields)
        if names is None or sorted(names) != sorted(self.names) or len(set(names)) != nfields:
            self.header_error = True
            return
        for p, name in enumerate(names):
            self.perm[self.names.index(name)] = p
        self.header_seen = True

    def _error(self, reason, col):
        self.err_lines.append(self.row_line)
        self.err_codes.append(reason * 16 + col)

    def _end_row(self, unterminated):
        if self.cf < MAX_COLS:
            self.fquoted[self.cf] = self.quoted
        nfields = self.cf + 1
        if (not unterminated and nfields == 1 and self.flen[0] == 0 and not self.fquoted[0]
                and not self.bad_quoting):
            self._reset_row()
            return
        if not self.first_row_done:
            self.first_row_done = True
            if self.type_col >= 0:
                if not self._is_type_code(0):
                    self._header(nfields)
                    self._reset_row()
                    return
            else:
                names = self._header_names(nfields)
                if names is not None and set(names) == set(self.names):
                    self._header(nfields)
                    self._reset_row()
                    return
        if unterminated:
            self._error(R_UNTERMINATED, 0)
        elif self.bad_quoting:
            self._error(R_BAD_QUOTING, 0)
        elif nfields != self.ncols:
            self._error(R_COLUMNS, 0)
        elif self.has_nul:
            self._error(R_NUL, 0)
        else:
            for l in range(self.ncols):
                p = self.perm[l]
                n = self.flast[p]
                if l == self.type_col:
                    if not self._is_type_code(p):
                        self._error(R_BAD_TYPE, l)
                        break
                elif n == 0:
                    if self.required[l]:
                        self._error(R_EMPTY, l)
                        break
                elif n > self.max_field:
                    self._error(R_TOO_LONG, l)
                    break
                elif not _valid_utf8(self._value(p)):
                    self._error(R_UTF8, l)
                    break
            else:
                for l in range(self.ncols):
                    p = self.perm[l]
                    if l == self.type_col:
                        self.out_kinds.append(self.fields[p][0] | 0x20)
                    else:
                        self.out_fields += self._value(p)
                        self.out_ends.append(len(self.out_fields))
        self._reset_row()

    def _line_end(self, c):
        self._end_row(False)
        self.line += 1
        self.prev_cr = c == 13

    def feed(self, data):
        if self.header_error:
            return
        for c in bytes(data):
            if self.prev_cr:
                self.prev_cr = False
                if c == 10:
                    if self.state == QUOTED:
                        self._content(c)
                    continue
            if not self.row_active:
                self.row_active = True
                self.row_line = self.line
            st = self.state
            if st == FIELD_START:
                if c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                elif c == 34:
                    self.quoted = True
                    self.state = QUOTED
                elif c not in _BLANKS:
                    self._content(c)
                    self.state = UNQUOTED
            elif st == UNQUOTED:
                if c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                else:
                    self._content(c)
            elif st == QUOTED:
                if c == 34:
                    self.state = QUOTE_IN_QUOTED
                else:
                    self._content(c)
                    if c == 10 or c == 13:
                        self.line += 1
                        self.prev_cr = c == 13
            elif st == QUOTE_IN_QUOTED:
                if c == 34:
                    self._content(c)
                    self.state = QUOTED
                elif c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                else:
                    if c not in _BLANKS:
                        self.bad_quoting = True
                    self.state = AFTER_QUOTE
            else:
                if c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                elif c not in _BLANKS:
                    self.bad_quoting = True
            if self.header_error:
                return

    def finish(self):
        if self.row_active and not self.header_error:
            self._end_row(self.state == QUOTED)

    @property
    def pending_rows(self):
        nvals = self.ncols - (1 if self.type_col >= 0 else 0)
        return len(self.out_ends) // nvals + len(self.err_codes)

    @property
    def perm_tuple(self):
        return tuple(self.perm[: self.ncols])

    def take(self):
        out = (bytes(self.out_fields), self.out_ends.tobytes(), bytes(self.out_kinds),
               self.err_lines.tobytes(), bytes(self.err_codes))
        self._new_batch()
        return out


def _valid_utf8(b):
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
