"""An independent reading of README "Upload files", for fuzz tests to hold the scanners against.

Written from the README's rules, not from the scanners' state machine: a whole file in, the rows and
errors out, by plain recursive-descent over bytes. Slow and simple on purpose.
"""
import re

BOM = b"\xef\xbb\xbf"
BLANKS = b" \t"
TYPES = (b"g", b"i")
_SEPARATOR = re.compile(rb"[,\r\n]")


def records(data):
    """Yield (first line, [(value, quoted)], unterminated, text after a closing quote) per record."""
    i, n, line = 0, len(data), 1
    while i < n:
        first, fields, unterminated, after_quote = line, [], False, False
        while True:                                     # one field
            while i < n and data[i] in BLANKS:
                i += 1
            quoted = i < n and data[i] == 34
            if quoted:
                i += 1
                value = bytearray()
                while True:
                    if i >= n:
                        unterminated = True
                        break
                    c = data[i]
                    if c == 34:
                        if data[i + 1:i + 2] == b'"':  # "" is one quote
                            value.append(34)
                            i += 2
                            continue
                        i += 1
                        break
                    if c == 13 and data[i + 1:i + 2] == b"\n":
                        value += b"\r\n"
                        i += 2
                        line += 1
                        continue
                    if c in (10, 13):
                        line += 1
                    value.append(c)
                    i += 1
                while i < n and data[i] not in b",\r\n":   # only blanks may follow a closing quote
                    after_quote = after_quote or data[i] not in BLANKS
                    i += 1
            else:
                m = _SEPARATOR.search(data, i)
                j = m.start() if m else n
                value, i = data[i:j], j
            fields.append((bytes(value).strip(BLANKS), quoted))
            if unterminated or i >= n:
                break
            sep = data[i]
            i += 1
            if sep == 44:
                continue
            line += 1
            if sep == 13 and data[i:i + 1] == b"\n":
                i += 1
            break
        yield first, fields, unterminated, after_quote


def parse(data, max_field=256):
    """'bad header', or (rows [(kind 'g'|'i', value)], errors [(line, reason)]) of an upload file."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    rows, errors, header_done, order = [], [], False, (0, 1)
    for line, fields, unterminated, after_quote in records(data):
        if fields == [(b"", False)] and not unterminated and not after_quote:
            continue                                    # a blank line
        if not header_done:
            header_done = True
            if fields[0][0].lower() not in TYPES:       # the first row is a header
                names = [v.lower() for v, _ in fields]
                if sorted(names) != [b"identity", b"type"]:
                    return "bad header"
                order = (names.index(b"type"), names.index(b"identity"))
                continue
        values = [v for v, _ in fields]
        if unterminated:
            errors.append((line, "unterminated quote"))
        elif after_quote:
            errors.append((line, "text after closing quote"))
        elif len(values) != 2:
            errors.append((line, "wrong column count"))
        elif any(b"\0" in v for v in values):
            errors.append((line, "NUL byte"))
        else:
            kind, value = values[order[0]].lower(), values[order[1]]
            if kind not in TYPES:
                errors.append((line, "bad type"))
            elif not value:
                errors.append((line, "empty identity"))
            elif len(value) > max_field:
                errors.append((line, "identity too long"))
            elif not _utf8(value):
                errors.append((line, "invalid UTF-8"))
            else:
                rows.append((kind.decode(), value))
    return rows, errors


def _utf8(value):
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def report(data, profiles, strict=False):
    """What an upload of `data` must report, given profiles {(kind, value): uid}:
    (state, counts (rows, qualified, unknown, invalid, duplicates), members set, errors)."""
    parsed = parse(data)
    if parsed == "bad header":
        return "failed", (0, 0, 0, 0, 0), set(), []
    rows, errors = parsed
    members, unknown, duplicates = set(), 0, 0
    for kind, value in rows:
        uid = profiles.get((kind, value))
        if uid is None:
            unknown += 1
        elif uid in members:
            duplicates += 1
        else:
            members.add(uid)
    counts = (len(rows) + len(errors), len(members), unknown, len(errors), duplicates)
    ok = members and not (strict and errors)
    return ("succeeded" if ok else "failed"), counts, members, errors
