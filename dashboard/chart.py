"""The trend chart: the segment's size over time as inline SVG, drawn on the server (no script, no CDN).

Each version holds its size until the next one, so the line is drawn as steps, carried on to now.
"""
import datetime as dt
import math
from html import escape

from markupsafe import Markup

W, H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 16, 44
MAX_POINTS = 500             # the most recent versions drawn


def compact(n):
    """1234 -> '1.2K', 5_600_000 -> '5.6M'."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            value = n / limit
            return f"{value:.1f}".rstrip("0").rstrip(".") + suffix
    return str(int(n)) if n == int(n) else f"{n:.1f}"


def nice_ceiling(n):
    """A round number at or above n (1, 2, 2.5, 5 times a power of ten)."""
    if n <= 0:
        return 1
    power = 10 ** math.floor(math.log10(n))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= n:
            return step * power
    return 10 * power


def when(t, span_s):
    return t.strftime("%Y-%m-%d %H:%M:%S" if span_s < 3600 else "%Y-%m-%d %H:%M") + " UTC"


def trend_svg(points, now=None, title_id="trend-title", marks=()):
    """points: [(datetime (UTC), size)] in time order; marks: [(datetime, label)], each drawn as a dashed
    line (the versions a rollback made). Returns Markup of an <svg>."""
    points = list(points)[-MAX_POINTS:]
    if not points:
        return Markup('<p class="muted">No version yet: the trend starts with the first successful upload.</p>')
    now = max(now or dt.datetime.now(dt.timezone.utc), points[-1][0])
    t0 = points[0][0]
    span = max((now - t0).total_seconds(), 1.0)
    top = nice_ceiling(max(size for _, size in points) * 1.1 or 1)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t):
        return LEFT + plot_w * (t - t0).total_seconds() / span

    def y(size):
        return TOP + plot_h * (1 - size / top)

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" '
           f'aria-labelledby="{title_id} {title_id}-desc" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{title_id}">Segment size over time</title>',
           f'<desc id="{title_id}-desc">{len(points)} version{"s" if len(points) != 1 else ""}: '
           f'{points[0][1]:,} users on {escape(when(points[0][0], span))}, now {points[-1][1]:,} users.</desc>']
    for frac in (0, 0.5, 1):                                     # gridlines and y labels
        yy = y(top * frac)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{compact(top * frac)}</text>')
    out.append(f'<text class="axis" x="{LEFT}" y="{H - 14}" text-anchor="start">{escape(when(t0, span))}</text>')
    out.append(f'<text class="axis" x="{W - RIGHT}" y="{H - 14}" text-anchor="end">{escape(when(now, span))}</text>')
    steps = []
    for i, (t, size) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else now
        steps += [(x(t), y(size)), (x(end), y(size))]
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in steps)
    base = y(0)
    out.append(f'<polygon class="area" points="{steps[0][0]:.1f},{base:.1f} {line} {steps[-1][0]:.1f},{base:.1f}"/>')
    out.append(f'<polyline class="line" points="{line}"/>')
    for t, label in marks:
        if t is not None and t0 <= t <= now:
            out.append(f'<line class="mark" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{base:.1f}">'
                       f'<title>{escape(when(t, span))}: {escape(label)}</title></line>')
    for t, size in points:
        out.append(f'<circle class="dot" cx="{x(t):.1f}" cy="{y(size):.1f}" r="4">'
                   f'<title>{escape(when(t, span))}: {size:,} users</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))
