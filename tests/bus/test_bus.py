"""The bus against a real nats-server: streams, publish, consumers, KV, embedded server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

import stockade.bus
from stockade.bus import Bus, Delivery, EmbeddedNats, KvEntry, Reject, Retry, subject_matches
from stockade.bus._errors import MAPPED
from stockade.core.errors import BusUnavailable
from stockade.core.events import STREAMS, AuthFailed


def _failed(ip: str = "10.1.2.3", user: str = "root") -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=40000,
        username=user,
        method="publickey",
        reason="unknown_key",
        gateway_id="gw-test",
    )


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="test")
    await bus.ensure_streams()
    yield bus
    await bus.close()


def test_exported_members() -> None:
    assert len(set(stockade.bus.__all__)) == len(stockade.bus.__all__)
    for name in stockade.bus.__all__:
        assert hasattr(stockade.bus, name)


def test_nats_exceptions_are_mapped() -> None:
    """Every nats-py error family has a mapping to BusUnavailable."""
    for exc in (
        nats.errors.NoServersError(),
        nats.errors.TimeoutError(),
        nats.js.errors.NotFoundError(),
        ConnectionRefusedError(),
        TimeoutError(),
    ):
        assert isinstance(exc, MAPPED)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.c", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


async def test_connect_unreachable_maps_error() -> None:
    with pytest.raises(BusUnavailable, match="connect"):
        await Bus.connect("nats://127.0.0.1:1", name="x", connect_timeout=0.5)


async def test_ensure_streams_idempotent_and_updates(bus: Bus) -> None:
    await bus.ensure_streams()
    await bus.ensure_streams()
    name = f"T_{uuid.uuid4().hex[:8]}"
    await bus.ensure_streams({name: ["t1.>"]})
    await bus.ensure_streams({name: ["t1.>", "t2.>"]})
    info = await bus.js.stream_info(name)
    assert sorted(info.config.subjects or []) == ["t1.>", "t2.>"]
    for stream in STREAMS:
        assert (await bus.js.stream_info(stream)).config.name == stream


async def test_publish_returns_sequence(bus: Bus) -> None:
    first = await bus.publish(_failed())
    second = await bus.publish(_failed())
    assert second > first


async def test_publish_without_stream_says_so(bus: Bus) -> None:
    with pytest.raises(BusUnavailable, match="ensure_streams"):
        await bus.publish_bytes("nostream.here", b"x", ack_timeout=1.0)


async def test_consumer_acks_retries_and_dead_letters(bus: Bus) -> None:
    durable = f"c{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    consumer = bus.consumer(stream="STOCKADE_AUTH", durable=durable, batch=10, retry_delay=0.1)
    seen: list[str] = []
    attempts: dict[int, int] = {}

    @consumer.on("stockade.auth.failed")
    async def handle(delivery: Delivery) -> None:
        event = AuthFailed.from_bytes(delivery.data)
        if event.gateway_id != tag:
            return
        attempts[delivery.stream_seq] = delivery.attempt
        if event.username == "flaky" and delivery.attempt == 1:
            raise Retry("not yet", delay=0.1)
        if event.username == "poison":
            raise Reject("cannot handle")
        seen.append(event.username)

    assert handle.__name__ == "handle"  # the decorator returns the function unchanged
    dlq = await bus.js.pull_subscribe(consumer.dead_letter_subject, stream="STOCKADE_DEADLETTER")
    for user in ("ok", "flaky", "poison"):
        await bus.publish(_failed(user=user).model_copy(update={"gateway_id": tag}))
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        await consumer.poll(0.5)
    assert sorted(seen) == ["flaky", "ok"]
    assert max(attempts.values()) == 2
    dead = await dlq.fetch(1, timeout=5)
    assert dead[0].headers is not None
    assert dead[0].headers["Stockade-Reason"] == "cannot handle"
    assert b"poison" in dead[0].data
    state = await consumer.state()
    assert state.num_ack_pending == 0
    assert state.num_pending == 0


async def test_consumer_resumes_after_reconnect(nats_url: str) -> None:
    """A durable consumer continues where the previous connection stopped; no message is lost."""
    durable = f"r{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    got: list[int] = []

    async def run_once(expect: int) -> None:
        bus = await Bus.connect(nats_url, name="resume")
        consumer = bus.consumer(stream="STOCKADE_AUTH", durable=durable, batch=3)

        @consumer.on("stockade.auth.*")
        async def handle(delivery: Delivery) -> None:
            if AuthFailed.from_bytes(delivery.data).gateway_id == tag:
                got.append(delivery.stream_seq)

        deadline = time.monotonic() + 10
        while len(got) < expect and time.monotonic() < deadline:
            await consumer.poll(0.5)
        await bus.close()

    publisher = await Bus.connect(nats_url, name="pub")
    await publisher.ensure_streams()
    await publisher.publish_many(
        _failed(user=f"u{i}").model_copy(update={"gateway_id": tag}) for i in range(3)
    )
    await run_once(3)
    await publisher.publish_many(
        _failed(user=f"v{i}").model_copy(update={"gateway_id": tag}) for i in range(3)
    )
    await run_once(6)
    await publisher.close()
    assert len(got) == len(set(got)) == 6


async def test_kv_put_get_delete_and_ttl(bus: Bus) -> None:
    kv = await bus.key_value(f"b{uuid.uuid4().hex[:8]}")
    await bus.key_value(kv.bucket)  # idempotent
    assert await kv.get("missing") is None
    await kv.put("a", b"1")
    await kv.put("short", b"2", ttl=1)
    entry = await kv.get("a")
    assert entry is not None
    assert entry.value == b"1"
    await kv.delete("a")
    assert await kv.get("a") is None
    for _ in range(50):
        if await kv.get("short") is None:
            break
        await asyncio.sleep(0.2)
    assert await kv.get("short") is None


async def test_kv_rejects_bad_keys(bus: Bus) -> None:
    kv = await bus.key_value(f"b{uuid.uuid4().hex[:8]}")
    with pytest.raises(Exception, match="not a valid key"):
        await kv.put("a:b", b"x")


async def test_kv_watch_sees_initial_changes_and_expiry(bus: Bus) -> None:
    kv = await bus.key_value(f"w{uuid.uuid4().hex[:8]}", marker_ttl=5)
    await kv.put("old", b"0")
    events: list[KvEntry | None] = []
    changed = asyncio.Event()

    async def on_entry(entry: KvEntry | None) -> None:
        events.append(entry)
        changed.set()

    watch = await kv.watch(on_entry)
    await asyncio.wait_for(watch.ready.wait(), 5)
    assert events[0] is not None
    assert events[0].key == "old"
    assert events[1] is None
    await kv.put("new", b"1", ttl=1)
    await kv.delete("old")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = {e.key: e for e in events if e is not None}
        if live.get("new") is not None and live["new"].deleted and live["old"].deleted:
            break
        changed.clear()
        await asyncio.wait_for(changed.wait(), 10)
    live = {e.key: e for e in events if e is not None}
    assert live["old"].deleted
    assert live["new"].deleted  # the TTL expiry reached the watcher
    assert [e.key for e in await kv.entries()] == []


async def test_close_with_watch_does_not_stall(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, name="closer")
    kv = await bus.key_value(f"c{uuid.uuid4().hex[:8]}")

    async def ignore(_entry: KvEntry | None) -> None:
        return None

    await kv.watch(ignore)
    await bus.close(drain_timeout=5)
    assert bus.closed


async def test_embedded_nats_start_stop_and_persist(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as url:
        bus = await Bus.connect(url, name="e")
        await bus.ensure_streams()
        kv = await bus.key_value("persist")
        await kv.put("k", b"v")
        await bus.close()
    async with EmbeddedNats(tmp_path) as url:
        bus = await Bus.connect(url, name="e")
        entry = await (await bus.key_value("persist")).get("k")
        await bus.close()
    assert entry is not None
    assert entry.value == b"v"


def test_embedded_nats_dies_with_its_parent(tmp_path: Path) -> None:
    """kill -9 of the process that started the server takes the server down too."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from stockade.bus import EmbeddedNats
        async def main():
            server = EmbeddedNats({str(tmp_path)!r})
            await server.start()
            print("PID", server.pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = ""
    while not line.startswith("PID "):
        line = parent.stdout.readline()
        assert line, "the parent exited before starting the server"
    child = int(line.split()[1])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            with Path(f"/proc/{child}/stat").open() as stat:
                alive = stat.read().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        time.sleep(0.05)
    assert not alive


async def test_a_password_in_the_bus_url_is_never_shown() -> None:
    """ATTACK (secrets in logs): ``stockade serve`` needs ``bus.url``; an operator puts
    ``nats://user:password@host`` there. When the server cannot be reached, the error that the
    CLI prints (and every log collector keeps) must not carry the password."""
    import socket

    from stockade.core.errors import BusUnavailable

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BusUnavailable) as info:
        await Bus.connect(
            f"nats://stockade:hunter2-secret@127.0.0.1:{port}", name="t", connect_timeout=0.3
        )
    assert "hunter2-secret" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)  # still says where
