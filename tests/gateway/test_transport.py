"""CoalescingTransport: one write per loop turn, order kept, nothing lost on close or abort."""

from __future__ import annotations

import asyncio
from typing import Any

from stockade.gateway._transport import FLUSH_BYTES, CoalescingTransport, coalesce_writes


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_turn_become_one_write_in_order() -> None:
    inner = FakeTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    for part in (b"a", b"bc", b"def"):
        outer.write(part)
    assert inner.calls == []
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"abcdef")]
    outer.write(b"g")
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"abcdef"), ("write", b"g")]


async def test_large_pending_output_is_sent_without_waiting_for_the_turn() -> None:
    inner = FakeTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"x" * (FLUSH_BYTES - 1))
    assert inner.calls == []
    outer.write(b"y")
    assert [len(data) for _, data in inner.calls] == [FLUSH_BYTES]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert len(inner.calls) == 1


async def test_close_and_abort_send_pending_bytes_first() -> None:
    loop = asyncio.get_running_loop()
    inner = FakeTransport()
    outer = CoalescingTransport(inner, loop)
    outer.write(b"bye")
    outer.close()
    assert inner.calls == [("write", b"bye"), ("close", b"")]
    inner2 = FakeTransport()
    outer2 = CoalescingTransport(inner2, loop)
    outer2.write(b"disconnect")
    outer2.abort()
    assert inner2.calls == [("write", b"disconnect"), ("abort", b"")]
    await asyncio.sleep(0)
    assert len(inner2.calls) == 2


async def test_nothing_is_written_to_a_closing_transport() -> None:
    inner = FakeTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"late")
    inner.closing = True
    await asyncio.sleep(0)
    assert inner.calls == []


async def test_other_attributes_are_the_wrapped_transports() -> None:
    inner = FakeTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    assert outer.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_coalesce_writes_wraps_once_and_skips_unknown_shapes() -> None:
    class Conn:
        _transport: Any = None

    conn = Conn()
    conn._transport = FakeTransport()
    coalesce_writes(conn)
    wrapped = conn._transport
    assert isinstance(wrapped, CoalescingTransport)
    coalesce_writes(conn)
    assert conn._transport is wrapped
    other = Conn()
    other._transport = object()
    coalesce_writes(other)
    assert not isinstance(other._transport, CoalescingTransport)
