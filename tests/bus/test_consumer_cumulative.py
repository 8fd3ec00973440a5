"""The consumer's cumulative-acknowledgement mode against a real nats-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js import api

from stockade.bus import Bus, Delivery, Reject, Retry
from stockade.core.events import AuthFailed


def _failed(tag: str, user: str) -> AuthFailed:
    return AuthFailed(
        client_ip="10.9.8.7",
        client_port=40000,
        username=user,
        method="password",
        reason="bad_password",
        gateway_id=tag,
    )


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="test-cumulative")
    await bus.ensure_streams()
    yield bus
    await bus.close()


async def test_cumulative_holds_the_line_dead_letters_and_acks_after_hooks(bus: Bus) -> None:
    durable = f"k{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    consumer = bus.consumer(
        stream="STOCKADE_AUTH", durable=durable, batch=50, retry_delay=0.05, cumulative_ack=True
    )
    seen: list[str] = []
    attempts: dict[str, int] = {}
    handled_seq = 0
    hook_calls = 0
    unacked_at_hook: list[bool] = []

    @consumer.on("stockade.auth.failed")
    async def handle(delivery: Delivery) -> None:
        nonlocal handled_seq
        event = AuthFailed.from_bytes(delivery.data)
        handled_seq = delivery.stream_seq
        if event.gateway_id != tag:
            return
        attempts[event.username] = delivery.attempt
        if event.username == "flaky" and delivery.attempt == 1:
            raise Retry("not yet", delay=0.05)
        if event.username == "boom" and delivery.attempt == 1:
            raise RuntimeError("surprise")
        if event.username == "poison":
            raise Reject("cannot handle")
        seen.append(event.username)

    @consumer.before_ack
    async def hook() -> None:
        nonlocal hook_calls
        hook_calls += 1
        # the chunk's effects come before its acknowledgement
        unacked_at_hook.append((await consumer.state()).ack_floor < handled_seq)
        if hook_calls == 1:
            raise RuntimeError("store not reachable yet")

    dlq = await bus.js.pull_subscribe(consumer.dead_letter_subject, stream="STOCKADE_DEADLETTER")
    await bus.publish_many(_failed(tag, u) for u in ("ok1", "flaky", "poison", "boom", "ok2"))
    deadline = time.monotonic() + 15
    while len(seen) < 4 and time.monotonic() < deadline:
        await consumer.poll(0.5)
    assert seen == ["ok1", "flaky", "boom", "ok2"]  # a retry holds the line: order is kept
    assert attempts["flaky"] == attempts["boom"] == 2
    assert hook_calls >= 2
    assert all(unacked_at_hook)
    dead = await dlq.fetch(1, timeout=5)
    assert dead[0].headers is not None
    assert dead[0].headers["Stockade-Reason"] == "cannot handle"
    state = await consumer.state()
    assert state.num_ack_pending == 0
    assert state.num_pending == 0
    info = await bus.js.consumer_info("STOCKADE_AUTH", durable)
    assert info.config.ack_policy == api.AckPolicy.ALL


async def test_cumulative_replaces_an_explicit_consumer_after_its_floor(bus: Bus) -> None:
    durable = f"m{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    got: list[int] = []

    async def run(cumulative: bool, expect: int) -> None:
        consumer = bus.consumer(
            stream="STOCKADE_AUTH", durable=durable, batch=500, cumulative_ack=cumulative
        )

        @consumer.on("stockade.auth.failed")
        async def handle(delivery: Delivery) -> None:
            if AuthFailed.from_bytes(delivery.data).gateway_id == tag:
                got.append(delivery.stream_seq)

        deadline = time.monotonic() + 10
        while len(set(got)) < expect and time.monotonic() < deadline:
            await consumer.poll(0.3)

    await bus.publish_many(_failed(tag, f"u{i}") for i in range(3))
    await run(False, 3)
    await bus.publish_many(_failed(tag, f"v{i}") for i in range(2))
    await run(True, 5)
    assert len(set(got)) == 5  # nothing lost across the change of ack policy
    info = await bus.js.consumer_info("STOCKADE_AUTH", durable)
    assert info.config.ack_policy == api.AckPolicy.ALL
    assert info.num_ack_pending == 0
