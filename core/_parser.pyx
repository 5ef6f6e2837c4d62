# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The CSV scanner's hot loop in C: bytes in, packed rows out, no Python object per row.

`_parser_py.py` is its pure-Python twin and must give byte-identical batches; `parser.py` is the API.
The state machine is written out once here and once in the twin, in the same order, so a reader can
compare them line by line.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize

from _batch cimport Buf, buf_add, buf_bytes

from listseg.core._parser_py import (
    R_UNTERMINATED, R_BAD_QUOTING, R_COLUMNS, R_NUL, R_BAD_TYPE, R_EMPTY, R_TOO_LONG, R_UTF8,
)

# C copies of the reason codes: the scanning loop runs without the GIL
cdef int E_UNTERMINATED = R_UNTERMINATED
cdef int E_BAD_QUOTING = R_BAD_QUOTING
cdef int E_COLUMNS = R_COLUMNS
cdef int E_NUL = R_NUL
cdef int E_BAD_TYPE = R_BAD_TYPE
cdef int E_EMPTY = R_EMPTY
cdef int E_TOO_LONG = R_TOO_LONG
cdef int E_UTF8 = R_UTF8

cdef enum:
    FIELD_START = 0
    UNQUOTED = 1
    QUOTED = 2
    QUOTE_IN_QUOTED = 3
    AFTER_QUOTE = 4
    MAX_COLS = 8

cdef inline bint is_ws(uint8_t c) noexcept nogil:
    return c == 32 or c == 9

cdef bint valid_utf8(const uint8_t *s, size_t n) noexcept nogil:
    """Strict UTF-8 (Unicode table 3-7): no overlongs, no surrogates, nothing past U+10FFFF."""
    cdef size_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if i + 1 >= n:
            return False
        c1 = s[i + 1]
        if c < 0xF0:
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F) or (c1 & 0xC0) != 0x80:
                return False
            if i + 2 >= n or (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
            continue
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F) or (c1 & 0xC0) != 0x80:
            return False
        if i + 3 >= n or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
            return False
        i += 4
    return True


cdef class Scanner:
    """Streaming scanner. See `_parser_py.Scanner` for the contract; both must agree exactly."""

    cdef int ncols, type_col, max_field
    cdef uint64_t required_mask
    cdef list names
    # stream state
    cdef int state
    cdef bint prev_cr, row_active, first_row_done, quoted
    cdef bint bad_quoting, has_nul
    cdef public bint header_error
    cdef public bint header_seen
    cdef uint64_t line, row_line
    cdef int cf                                  # current physical field index
    cdef size_t flen[MAX_COLS]                   # content bytes after leading trim (uncapped)
    cdef size_t flast[MAX_COLS]                  # content length up to the last non-blank byte
    cdef bint fquoted[MAX_COLS]
    cdef int perm[MAX_COLS]                      # logical column -> physical column
    cdef char *rowbuf                            # MAX_COLS fields of max_field bytes each
    # output
    cdef Buf out_fields, out_ends, out_kinds, err_lines, err_codes

    def __cinit__(self, int ncols, int type_col, int max_field, required, names):
        if ncols < 1 or ncols > MAX_COLS:
            raise ValueError("ncols out of range")
        self.ncols = ncols
        self.type_col = type_col
        self.max_field = max_field
        self.required_mask = 0
        for i, r in enumerate(required):
            if r:
                self.required_mask |= (<uint64_t>1) << i
        self.names = [n.encode() if isinstance(n, str) else n for n in names]
        self.rowbuf = <char *>malloc(MAX_COLS * max_field + 1)
        if self.rowbuf == NULL:
            raise MemoryError()
        for i in range(MAX_COLS):
            self.perm[i] = i
        self.line = 1
        self._reset_row()

    def __dealloc__(self):
        free(self.rowbuf)
        free(self.out_fields.data)
        free(self.out_ends.data)
        free(self.out_kinds.data)
        free(self.err_lines.data)
        free(self.err_codes.data)

    cdef inline void _reset_row(self) noexcept nogil:
        cdef int i
        self.state = FIELD_START
        self.row_active = False
        self.cf = 0
        self.quoted = False
        self.bad_quoting = False
        self.has_nul = False
        for i in range(MAX_COLS):
            self.flen[i] = 0
            self.flast[i] = 0
            self.fquoted[i] = False

    cdef inline void _content(self, uint8_t c) noexcept nogil:
        cdef int f = self.cf
        if c == 0:
            self.has_nul = True
        if f >= MAX_COLS:
            return
        if self.flen[f] == 0 and is_ws(c):
            return                                  # leading blanks are trimmed
        if self.flen[f] < <size_t>self.max_field:
            self.rowbuf[f * self.max_field + self.flen[f]] = <char>c
        self.flen[f] += 1
        if not is_ws(c):
            self.flast[f] = self.flen[f]

    cdef inline void _next_field(self) noexcept nogil:
        # cf stops at MAX_COLS ("one field too many" is all that matters past it): counting on, an int
        # wrapped negative after 2**31 commas in one row and the writes below went out of bounds.
        if self.cf < MAX_COLS:
            self.fquoted[self.cf] = self.quoted
            self.cf += 1
        self.quoted = False
        self.state = FIELD_START

    cdef inline bint _is_type_code(self, int phys) noexcept nogil:
        cdef uint8_t c
        if phys >= MAX_COLS or self.flast[phys] != 1:
            return False
        c = <uint8_t>self.rowbuf[phys * self.max_field] | 0x20
        return c == 103 or c == 105                 # 'g' or 'i'

    cdef int _header(self, int nfields) except -1:
        """Match the header's names to columns; set header_error when they do not match."""
        cdef int p, l
        cdef size_t n
        cdef bytes name
        seen = set()
        if nfields != self.ncols:
            self.header_error = True
            return 0
        for p in range(nfields):
            n = self.flast[p]
            if n > <size_t>self.max_field:
                self.header_error = True
                return 0
            name = PyBytes_FromStringAndSize(self.rowbuf + p * self.max_field, n).lower()
            if name not in self.names or name in seen:
                self.header_error = True
                return 0
            seen.add(name)
            self.perm[self.names.index(name)] = p
        self.header_seen = True
        return 0

    cdef int _header_names_match(self, int nfields) except -1:
        cdef int p
        if nfields != self.ncols:
            return False
        got = set()
        for p in range(nfields):
            if self.flast[p] > <size_t>self.max_field:
                return False
            got.add(PyBytes_FromStringAndSize(self.rowbuf + p * self.max_field, self.flast[p]).lower())
        return got == set(self.names)

    cdef int _error(self, int reason, int col) except -1 nogil:
        cdef uint8_t code = <uint8_t>(reason * 16 + col)
        buf_add(&self.err_lines, <const char *>&self.row_line, sizeof(uint64_t))
        buf_add(&self.err_codes, <const char *>&code, 1)
        return 0

    cdef int _end_row(self, bint unterminated) except -1 nogil:
        cdef int nfields, l, p
        cdef bint header
        cdef size_t n
        cdef uint8_t kind
        cdef uint64_t end
        if self.cf < MAX_COLS:
            self.fquoted[self.cf] = self.quoted
        nfields = self.cf + 1
        if (not unterminated and nfields == 1 and self.flen[0] == 0 and not self.fquoted[0]
                and not self.bad_quoting):
            self._reset_row()                       # a blank line: skipped, not counted
            return 0
        if not self.first_row_done:                 # the header, once: it needs Python objects
            self.first_row_done = True
            with gil:
                if self.type_col >= 0:
                    header = not self._is_type_code(0)
                else:
                    header = self._header_names_match(nfields)
                if header:
                    self._header(nfields)
            if header:
                self._reset_row()
                return 0
        if unterminated:
            self._error(E_UNTERMINATED, 0)
        elif self.bad_quoting:
            self._error(E_BAD_QUOTING, 0)
        elif nfields != self.ncols:
            self._error(E_COLUMNS, 0)
        elif self.has_nul:
            self._error(E_NUL, 0)
        else:
            for l in range(self.ncols):
                p = self.perm[l]
                n = self.flast[p]
                if l == self.type_col:
                    if not self._is_type_code(p):
                        self._error(E_BAD_TYPE, l)
                        break
                elif n == 0:
                    if (self.required_mask >> l) & 1:
                        self._error(E_EMPTY, l)
                        break
                elif n > <size_t>self.max_field:
                    self._error(E_TOO_LONG, l)
                    break
                elif not valid_utf8(<const uint8_t *>self.rowbuf + p * self.max_field, n):
                    self._error(E_UTF8, l)
                    break
            else:
                for l in range(self.ncols):
                    p = self.perm[l]
                    if l == self.type_col:
                        kind = <uint8_t>self.rowbuf[p * self.max_field] | 0x20
                        buf_add(&self.out_kinds, <const char *>&kind, 1)
                    else:
                        buf_add(&self.out_fields, self.rowbuf + p * self.max_field, self.flast[p])
                        end = self.out_fields.len
                        buf_add(&self.out_ends, <const char *>&end, sizeof(uint64_t))
        self._reset_row()
        return 0

    cdef int _line_end(self, uint8_t c) except -1 nogil:
        self._end_row(False)
        self.line += 1
        self.prev_cr = c == 13
        return 0

    cdef size_t _plain_run(self, const uint8_t *p, size_t avail) noexcept nogil:
        """Append the run of ordinary bytes at p to the current (unquoted, started) field; return
        its length. The fast path: most of a file is such runs."""
        cdef size_t k = 0, q, room
        cdef int f = self.cf
        cdef uint8_t c
        while k < avail:
            c = p[k]
            if c == 44 or c == 10 or c == 13 or c == 0:
                break
            k += 1
        if f < MAX_COLS and k:
            room = <size_t>self.max_field - self.flen[f] if self.flen[f] < <size_t>self.max_field else 0
            memcpy(self.rowbuf + f * self.max_field + self.flen[f], p, k if k < room else room)
            q = k
            while q > 0 and is_ws(p[q - 1]):
                q -= 1
            if q:
                self.flast[f] = self.flen[f] + q
            self.flen[f] += k
        return k

    def feed(self, const uint8_t[::1] data):
        with nogil:                 # the server's other threads (IsMember) run while a chunk scans
            self._scan(data)

    cdef int _scan(self, const uint8_t[::1] data) except -1 nogil:
        cdef size_t i = 0, n = data.shape[0]
        cdef uint8_t c
        cdef int st
        if self.header_error:
            return 0
        while i < n:
            c = data[i]
            i += 1
            if self.prev_cr:
                self.prev_cr = False
                if c == 10:                          # the LF of a CRLF: already counted
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
                elif not is_ws(c):
                    self._content(c)
                    self.state = UNQUOTED
            elif st == UNQUOTED:
                if c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                elif c == 0:
                    self._content(c)
                else:
                    i += self._plain_run(&data[i - 1], n - i + 1) - 1
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
                    if not is_ws(c):
                        self.bad_quoting = True
                    self.state = AFTER_QUOTE
            else:  # AFTER_QUOTE
                if c == 44:
                    self._next_field()
                elif c == 10 or c == 13:
                    self._line_end(c)
                elif not is_ws(c):
                    self.bad_quoting = True
            if self.header_error:
                return 0
        return 0

    def finish(self):
        if self.row_active and not self.header_error:
            self._end_row(self.state == QUOTED)

    @property
    def pending_rows(self):
        cdef int nvals = self.ncols - (1 if self.type_col >= 0 else 0)
        return self.out_ends.len // sizeof(uint64_t) // nvals + self.err_codes.len

    @property
    def perm_tuple(self):
        return tuple(self.perm[l] for l in range(self.ncols))

    def take(self):
        """Return (fields, ends, kinds, error_lines, error_codes) as bytes and start a new batch."""
        out = (
            buf_bytes(&self.out_fields),
            buf_bytes(&self.out_ends),
            buf_bytes(&self.out_kinds),
            buf_bytes(&self.err_lines),
            buf_bytes(&self.err_codes),
        )
        self.out_fields.len = 0
        self.out_ends.len = 0
        self.out_kinds.len = 0
        self.err_lines.len = 0
        self.err_codes.len = 0
        return out
