"""Running a scanner over a file in pieces, for the tests that compare the compiled scanner, its twin
and tests/csv_reference.py."""
from listseg.core import parser
from listseg.core.parser import BadHeader


def split_at(data, cuts):
    """data in pieces, cut at each position in cuts (taken modulo len(data) + 1)."""
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + bounds, bounds + [len(data)])]


def outcome(scanner, chunks, layout, max_field):
    """Everything a scanner decides about a file fed in these chunks, comparable with ==."""
    p = parser.Parser(layout, max_field=max_field, scanner=scanner)
    batches = []
    try:
        for chunk in chunks:
            p.feed(chunk)
            batches.append(p.take())
        p.finish()
    except BadHeader:
        return "bad header"
    batches.append(p.take())
    m = parser.merge(batches, p.nvals)
    return m.kinds, m.values(), p.errors(m), p.header_seen, p._scanner.perm_tuple
