"""Connection admission: a cap on open connections in total and per source address.

Pure bookkeeping without I/O; the accept loop asks :meth:`ConnectionLimits.admit` before any SSH
byte is exchanged and calls :meth:`ConnectionLimits.release` exactly once per admitted connection.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum

__all__ = ["Admission", "ConnectionLimits"]


class Admission(Enum):
    """Why a connection was or was not admitted (the value is the failure event's reason)."""

    ADMITTED = "admitted"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_FROM_SOURCE = "too_many_from_source"


class ConnectionLimits:
    """Counts open connections; ``max_total`` and ``max_per_source`` must be positive."""

    def __init__(self, *, max_total: int, max_per_source: int) -> None:
        if max_total < 1 or max_per_source < 1:
            raise ValueError("connection limits must be at least 1")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._per_source: Counter[str] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        """Connections admitted and not yet released."""
        return self._total

    def count(self, source: str) -> int:
        """Open connections from ``source``."""
        return self._per_source[source]

    def admit(self, source: str) -> Admission:
        """Admit one connection from ``source`` if both caps allow it (and count it)."""
        if self._total >= self.max_total:
            return Admission.TOO_MANY_CONNECTIONS
        if self._per_source[source] >= self.max_per_source:
            return Admission.TOO_MANY_FROM_SOURCE
        self._total += 1
        self._per_source[source] += 1
        return Admission.ADMITTED

    def release(self, source: str) -> None:
        """Forget one admitted connection from ``source``."""
        if self._per_source[source] <= 0:
            raise ValueError(f"release of {source!r} without a matching admit")
        self._per_source[source] -= 1
        if not self._per_source[source]:
            del self._per_source[source]
        self._total -= 1
