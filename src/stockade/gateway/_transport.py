"""Coalesced socket writes for asyncssh connections.

asyncssh hands every SSH packet to the transport on its own, and puts an encrypted
``SSH_MSG_IGNORE`` before each one: a 256 KiB burst of session output becomes 16 ``send()``
calls, half of them tiny segments that wake the client for nothing. :class:`CoalescingTransport`
gathers the packets written during one turn of the event loop and sends them in one call at the
end of it (``loop.call_soon``), or as soon as :data:`FLUSH_BYTES` are pending, in order;
``close()`` and ``abort()`` send what is pending first. Everything else is the wrapped
transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stockade.core.logging import get_logger

__all__ = ["CoalescingTransport", "coalesce_writes"]

_log = get_logger("stockade.gateway.transport")

#: Pending bytes that are sent at once, without waiting for the end of the loop turn (a task
#: that never yields still streams).
FLUSH_BYTES = 256 * 1024


class CoalescingTransport:
    """Wraps an :class:`asyncio.Transport`; ``write`` is deferred to the end of the loop turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is pending now (one ``write`` to the wrapped transport)."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(conn: Any) -> None:
    """Route ``conn``'s (an asyncssh connection's) packet writes through a
    :class:`CoalescingTransport`. Leaves the connection alone (and logs once) if asyncssh's
    internals are not what this was written for: only throughput depends on it."""
    transport = getattr(conn, "_transport", None)
    if isinstance(transport, CoalescingTransport):
        return
    if not isinstance(transport, asyncio.Transport):
        _log.debug("writes_not_coalesced", transport=type(transport).__name__)
        return
    conn._transport = CoalescingTransport(transport, asyncio.get_running_loop())
