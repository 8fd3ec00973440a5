"""Human durations (``90s``, ``15m``, ``1h30m``, ``7d``) as used in flags and settings."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidInput

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(value: str | int | float | timedelta, *, field: str = "duration") -> timedelta:
    """Parse ``value`` into a positive :class:`timedelta`.

    Accepts a timedelta, a number of seconds, or a string of ``<int><unit>`` parts with units
    s, m, h, d, w (``1h30m``). Raises :class:`InvalidInput` naming ``field`` otherwise.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidInput(field, f"expected a duration such as 15m, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if text.isdigit():
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += int(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise InvalidInput(
                    field, f"{value!r} is not a duration; use forms like 30s, 15m, 1h30m, 7d"
                )
    if seconds <= 0:
        raise InvalidInput(field, f"duration must be positive, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render ``delta`` compactly (``1h30m``); the inverse of :func:`parse_duration`."""
    remaining = int(delta.total_seconds())
    if remaining <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
