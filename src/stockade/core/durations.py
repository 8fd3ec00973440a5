"""Human durations (``90s``, ``15m``, ``1h30m``, ``7d``) as used in flags and settings."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .errors import InvalidInput

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

#: The longest duration accepted anywhere (100 years): a ban, a token lifetime or a setting past
#: it is a typo, and far larger values overflow dates (``timedelta`` ends at 999999999 days).
MAX_DURATION = timedelta(days=36500)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(value: str | int | float | timedelta, *, field: str = "duration") -> timedelta:
    """Parse ``value`` into a positive :class:`timedelta`.

    Accepts a timedelta, a number of seconds, or a string of ``<int><unit>`` parts with units
    s, m, h, d, w (``1h30m``), up to :data:`MAX_DURATION`. Raises :class:`InvalidInput` naming
    ``field`` otherwise.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidInput(field, f"expected a duration such as 15m, got {value!r}")
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif not isinstance(value, str):
        raise InvalidInput(field, f"expected a duration such as 15m, got {value!r}")
    else:
        text = value.strip().lower()
        if len(text) > 64:
            raise InvalidInput(field, f"{value[:64]!r}... is too long for a duration")
        if text.isascii() and text.isdigit():
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
    if math.isnan(seconds) or seconds <= 0:
        raise InvalidInput(field, f"duration must be positive, got {value!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(
            field, f"{value!r} is longer than the {MAX_DURATION.days}d (100 years) maximum"
        )
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
