"""ReliablePublisher against a real nats-server: order, stored once, bounded while the bus is
down, retried until stored once it is back."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from stockade.bus import Bus, EmbeddedNats, ReliablePublisher
from stockade.core.errors import BusUnavailable
from stockade.core.events import SUBJECT_SESSION_ENDED, SessionEnded


def _ended(tag: str, n: int) -> SessionEnded:
    return SessionEnded(session_id=f"{tag}-{n}", username="u", reason="killed")


async def test_events_arrive_in_order_each_once(nats_url: str) -> None:
    tag = secrets.token_hex(4)
    bus = await Bus.connect(nats_url, name="reliable-test")
    await bus.ensure_streams()
    seen: list[str] = []

    async def on(_subject: str, data: bytes) -> None:
        event = SessionEnded.from_bytes(data)
        if event.session_id.startswith(tag):
            seen.append(event.session_id)

    await bus.subscribe(SUBJECT_SESSION_ENDED, on)
    await bus.flush()
    publisher = ReliablePublisher(bus)
    try:
        for n in range(20):
            await publisher.publish(_ended(tag, n))
        assert await publisher.flush(seconds=10)
        for _ in range(200):  # bounded: through the server
            if len(seen) == 20:
                break
            await asyncio.sleep(0.01)
        assert seen == [f"{tag}-{n}" for n in range(20)]
        assert (publisher.published, publisher.dropped) == (20, 0)
    finally:
        await publisher.aclose()
        await bus.close()


async def test_bounded_while_the_bus_is_down_and_counted_at_close(tmp_path: Path) -> None:
    """The server stops: events queue, the oldest past ``max_pending`` dropped and counted, each
    attempt refused and retried (bounded backoff), and what is left at close counted too. (Back
    on the bus, what is queued is stored: tests/gateway/test_session_end_delivery.py.)"""
    server = EmbeddedNats(tmp_path / "nats", connect_timeout=10.0)
    url = await server.start()
    bus = await Bus.connect(url, name="reliable-test")
    await bus.ensure_streams()
    publisher = ReliablePublisher(bus, ack_timeout=0.2, max_delay=0.1, max_pending=3)
    try:
        await server.stop()
        for n in range(5):
            await publisher.publish(_ended("down", n))
        assert (publisher.pending, publisher.dropped) == (3, 2)
        assert not await publisher.flush(seconds=0.6)  # nothing can be stored now
        assert publisher.retries >= 1
        assert publisher.published == 0
        await publisher.aclose(seconds=0.2)
        assert (publisher.pending, publisher.dropped) == (0, 5)
        with pytest.raises(BusUnavailable):
            await publisher.publish(_ended("down", 9))
    finally:
        await bus.close(drain_timeout=0.5)
        await server.stop()


async def test_an_event_that_cannot_be_sent_does_not_stop_the_ones_after_it(
    nats_url: str,
) -> None:
    """BROKE: any error but BusUnavailable (an event that does not serialise: a lone surrogate
    in a name) ended the publisher's task for good, silently; every later session end stayed
    queued and never reached the broker. That event is dropped (counted, logged), the rest go."""
    tag = secrets.token_hex(4)
    bus = await Bus.connect(nats_url, name="reliable-poison")
    await bus.ensure_streams()
    seen: list[str] = []

    async def on(_subject: str, data: bytes) -> None:
        event = SessionEnded.from_bytes(data)
        if event.session_id.startswith(tag):
            seen.append(event.session_id)

    await bus.subscribe(SUBJECT_SESSION_ENDED, on)
    await bus.flush()
    publisher = ReliablePublisher(bus)
    try:
        bad = SessionEnded(session_id=f"{tag}-bad", username="u\ud800", reason="killed")
        await publisher.publish(bad)
        await publisher.publish(_ended(tag, 1))
        assert await publisher.flush(seconds=10)
        await publisher.publish(_ended(tag, 2))  # and the publisher still runs afterwards
        assert await publisher.flush(seconds=10)
        for _ in range(200):  # bounded: through the server
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen == [f"{tag}-1", f"{tag}-2"]
        assert (publisher.published, publisher.dropped) == (2, 1)
    finally:
        await publisher.aclose(seconds=1)
        await bus.close()
