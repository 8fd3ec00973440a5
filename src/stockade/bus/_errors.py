"""Mapping of nats-py exceptions to :class:`~stockade.core.errors.BusUnavailable`.

Everything nats-py raises (its ``nats.errors.Error`` tree, JetStream API errors, socket errors and
timeouts) is mapped here, at the package boundary; callers of :mod:`stockade.bus` only ever see
Stockade's errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from stockade.core.errors import BusUnavailable

__all__ = ["MAPPED", "mapped"]

#: Exception types translated into :class:`BusUnavailable` at the boundary.
MAPPED: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)


@contextmanager
def mapped(action: str) -> Iterator[None]:
    """Run the block, turning any nats-py or socket error into ``BusUnavailable(action: ...)``."""
    try:
        yield
    except MAPPED as exc:
        detail = str(exc) or type(exc).__name__
        raise BusUnavailable(f"NATS {action}: {detail}") from exc
