"""The shield page's SVG chart: minutes bucketed right, markup safe for a strict CSP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from stockade.console import bucket_minutes, failures_svg

NOW = datetime(2026, 5, 1, 12, 30, 40, tzinfo=UTC)


def test_events_land_in_their_minute_and_old_or_future_ones_are_dropped() -> None:
    counts = bucket_minutes(
        [
            (NOW, 2),
            (NOW - timedelta(seconds=39), 1),  # same minute as NOW
            (NOW - timedelta(minutes=1), 5),
            (NOW - timedelta(hours=24), 7),  # just outside the window
            (NOW + timedelta(minutes=2), 9),  # clock skew: not shown
            (NOW.replace(tzinfo=None) - timedelta(minutes=3), 4),  # naive means UTC
        ],
        now=NOW,
    )
    assert len(counts) == 1440
    assert counts[-1] == 3
    assert counts[-2] == 5
    assert counts[-4] == 4
    assert sum(counts) == 12


def test_svg_is_well_formed_accessible_and_has_no_style_or_script() -> None:
    counts = [0] * 1440
    counts[100] = 10
    counts[-1] = 3
    svg = failures_svg(counts, now=NOW)
    root = ElementTree.fromstring(svg)  # noqa: S314 - our own markup
    assert root.get("role") == "img"
    title = root.find("{http://www.w3.org/2000/svg}title")
    assert title is not None
    assert "13 in all, peak 10" in (title.text or "")
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 2
    assert re.search(r"style=|<script|on[a-z]+=", svg) is None


def test_an_empty_day_draws_no_bar() -> None:
    svg = failures_svg([0] * 1440, now=NOW)
    assert "<rect" not in svg
    assert "peak 0/min" in svg
