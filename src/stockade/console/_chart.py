"""The shield page's chart: failures per minute over the last 24 hours, as server-side SVG.

Pure: counts in, markup out (no script, no inline style: colours come from the stylesheet
through classes, so the chart follows the light or dark scheme).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from html import escape

__all__ = ["MINUTES", "bucket_minutes", "failures_svg"]

#: Minutes in the chart (24 hours).
MINUTES = 24 * 60
_W, _H, _PAD = 720, 160, 28


def bucket_minutes(
    events: Iterable[tuple[datetime, int]], *, now: datetime, minutes: int = MINUTES
) -> list[int]:
    """``(time, count)`` pairs summed per minute, oldest first, ending with ``now``'s minute."""
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    counts = [0] * minutes
    for at, count in events:
        when = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
        index = int((when - start).total_seconds() // 60)
        if 0 <= index < minutes:
            counts[index] += max(0, int(count))
    return counts


def failures_svg(counts: list[int], *, now: datetime) -> str:
    """An accessible SVG bar chart of ``counts`` (one per minute, oldest first)."""
    total = sum(counts)
    peak = max(counts, default=0)
    title = f"Authentication failures per minute, last 24 hours: {total} in all, peak {peak}"
    plot_w, plot_h = _W - 2 * _PAD, _H - 2 * _PAD
    scale = plot_h / peak if peak else 0.0
    step = plot_w / max(1, len(counts))
    bars = []
    for i, value in enumerate(counts):
        if value <= 0:
            continue
        h = max(1.0, value * scale)
        x = _PAD + i * step
        bars.append(
            f'<rect class="bar" x="{x:.2f}" y="{_PAD + plot_h - h:.2f}" '
            f'width="{max(step, 1.0):.2f}" height="{h:.2f}"/>'
        )
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    ticks = []
    for hours_ago in (24, 18, 12, 6, 0):
        x = _PAD + plot_w * (24 - hours_ago) / 24
        label = (end - timedelta(hours=hours_ago)).strftime("%H:%M")
        ticks.append(
            f'<line class="tick" x1="{x:.1f}" y1="{_PAD + plot_h}" x2="{x:.1f}" '
            f'y2="{_PAD + plot_h + 4}"/>'
            f'<text class="label" x="{x:.1f}" y="{_H - 6}" text-anchor="middle">{label}</text>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-title">{escape(title)}</title>'
        f'<line class="axis" x1="{_PAD}" y1="{_PAD + plot_h}" x2="{_PAD + plot_w}" '
        f'y2="{_PAD + plot_h}"/>'
        f'<text class="label" x="{_PAD}" y="{_PAD - 8}">peak {peak}/min</text>'
        + "".join(bars)
        + "".join(ticks)
        + "</svg>"
    )
