"""FailureBatcher against a real NATS JetStream: full batches, the delay, order, close."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from stockade.bus import Bus, FailureBatcher
from stockade.core.errors import BusUnavailable
from stockade.core.events import (
    STREAM_AUTH,
    SUBJECT_AUTH_FAILED_BATCH,
    AuthFailed,
    AuthFailedBatch,
)


def _failure(n: int, gateway: str = "gw") -> AuthFailed:
    return AuthFailed(
        client_ip=f"192.0.2.{n % 250 + 1}",
        client_port=n,
        username=f"u{n}",
        method="password",
        reason="bad_password",
        gateway_id=gateway,
    )


async def _batches(bus: Bus, gateway: str) -> list[AuthFailedBatch]:
    last = await bus.last_sequence(STREAM_AUTH, SUBJECT_AUTH_FAILED_BATCH)
    found = []
    async for delivery in bus.read_stream(
        STREAM_AUTH,
        SUBJECT_AUTH_FAILED_BATCH,
        since=datetime.now(UTC) - timedelta(minutes=5),
        until_seq=last,
        idle=0.5,
    ):
        batch = AuthFailedBatch.from_bytes(delivery.data)
        if batch.gateway_id.startswith(gateway):
            found.append(batch)
    return found


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="batch-test")
    await bus.ensure_streams()
    yield bus
    await bus.close()


async def test_full_batches_in_order(bus: Bus) -> None:
    gateway = "gw-" + secrets.token_hex(4)
    batcher = FailureBatcher(bus, max_items=128, max_delay=10.0)
    for n in range(300):
        batcher.add(_failure(n, gateway))
    assert await batcher.flush(seconds=10)
    assert (batcher.published, batcher.pending, batcher.dropped) == (300, 0, 0)
    batches = await _batches(bus, gateway)
    assert [len(b) for b in batches] == [128, 128, 44]
    ports = [port for b in batches for port in b.client_port]
    assert ports == list(range(300))
    await batcher.aclose()


async def test_a_partial_batch_goes_out_after_the_delay(bus: Bus) -> None:
    gateway = "gw-" + secrets.token_hex(4)
    batcher = FailureBatcher(bus, max_delay=0.01)
    batcher.add(_failure(1, gateway))
    for _ in range(500):  # bounded: about 5 s
        if batcher.published == 1:
            break
        await asyncio.sleep(0.01)
    assert batcher.published == 1
    await batcher.aclose()


async def test_gateways_never_share_a_batch_and_close_flushes(bus: Bus) -> None:
    gateway = "gw-" + secrets.token_hex(4)
    batcher = FailureBatcher(bus, max_delay=10.0)
    batcher.add(_failure(1, gateway + "-a"))
    batcher.add(_failure(2, gateway + "-b"))
    batcher.add(_failure(3, gateway + "-b"))
    await batcher.aclose()
    assert batcher.published == 3
    batches = await _batches(bus, gateway)
    assert sorted((b.gateway_id, len(b)) for b in batches) == [
        (gateway + "-a", 1),
        (gateway + "-b", 2),
    ]
    with pytest.raises(BusUnavailable, match="closed"):
        batcher.add(_failure(4, gateway))


def test_batch_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_items"):
        FailureBatcher(None, max_items=100_000)  # type: ignore[arg-type]
    failures = [_failure(n) for n in range(129)]
    with pytest.raises(ValueError, match="129"):
        AuthFailedBatch.of(failures)
