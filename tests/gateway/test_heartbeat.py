"""The gateway's heartbeat loop and default name, against a real identity service (SQLite)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from stockade.core.settings import IdentitySettings
from stockade.gateway._heartbeat import HeartbeatLoop, default_gateway_id
from stockade.identity import IdentityService, KeyRing
from stockade.store import GatewayRow, Store


def test_default_gateway_ids_are_unique_per_data_dir_and_stable(tmp_path: Path) -> None:
    a, b = default_gateway_id(tmp_path / "a"), default_gateway_id(tmp_path / "b")
    assert a != b  # two gateways on one host never end each other's sessions
    assert a == default_gateway_id(tmp_path / "a")  # a restart ends what its last boot left
    assert a.startswith(socket.gethostname()[:100] + "-")
    assert len(a) <= 128  # the registry's column


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[tuple[IdentityService, Store]]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    try:
        yield (
            IdentityService(
                store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
            ),
            store,
        )
    finally:
        await store.close()


async def test_a_boot_declared_dead_learns_it_and_stopping_ends_the_row(
    identity: tuple[IdentityService, Store],
) -> None:
    service, store = identity
    dead: list[str] = []
    boot = ["boot-1"]

    async def on_dead() -> None:
        dead.append(boot[0])
        boot[0] = "boot-2"  # what Gateway._declared_dead does: carry on as a new boot

    loop_a = HeartbeatLoop(service, gateway_id="gw-a", boot_id=lambda: boot[0], interval=1,
                           timeout=3, on_dead=on_dead)  # fmt: skip
    loop_b = HeartbeatLoop(service, gateway_id="gw-b", boot_id=lambda: "boot-b", interval=1,
                           timeout=3, on_dead=on_dead)  # fmt: skip
    assert await loop_a.beat()
    assert await loop_b.beat()
    async with store.transaction() as session:  # A paused for 10 s
        await session.execute(
            update(GatewayRow)
            .where(GatewayRow.boot_id == "boot-1")
            .values(seen_at=datetime.now(UTC) - timedelta(seconds=10))
        )
    assert await loop_b.beat()
    assert not await loop_a.beat()
    assert dead == ["boot-1"]
    assert await loop_a.beat()  # the new boot is alive
    await loop_a.stop()
    async with store.transaction(readonly=True) as session:
        row = await session.scalar(select(GatewayRow).where(GatewayRow.boot_id == "boot-2"))
    assert row is not None
    assert row.ended_at is not None
    assert row.end_reason == "stopped"


async def test_a_gateway_cut_off_from_identity_closes_its_sessions_itself(
    identity: tuple[IdentityService, Store], tmp_path: Path
) -> None:
    """ATTACK (partition): gateway A cannot reach identity. The others declare it dead and end
    its sessions in the registry, but A, which only learns that from a beat, would go on
    serving its users' shells for as long as the partition lasts (a disabled user included).
    Once its beats have failed for longer than its own timeout, A knows it is declared dead
    and closes its sessions itself."""
    import asyncio

    from stockade.rpc import IdentityClient, RpcServer, mtls_channel
    from stockade.tls import CertificateFiles, DevCA, gateway_uri

    service, _ = identity
    ca = DevCA(tmp_path / "tls")
    served = ca.issue("identity")
    server = RpcServer(
        identity=service,
        authorizer=None,
        tls=CertificateFiles(served.cert, served.key, served.ca),
    )
    await server.start()
    gw = ca.issue("gateway", sans=["localhost", gateway_uri("gw-a")])
    channel = mtls_channel("127.0.0.1", server.port, CertificateFiles(gw.cert, gw.key, gw.ca))
    dead = asyncio.Event()

    async def on_dead() -> None:
        dead.set()

    loop = HeartbeatLoop(
        IdentityClient(channel, target="identity", timeout=0.5),
        gateway_id="gw-a", boot_id=lambda: "boot-a", interval=0.1, timeout=1.0, on_dead=on_dead,
    )  # fmt: skip
    try:
        assert await loop.beat()
        loop.start()
        await server.stop(0)  # the partition
        await asyncio.wait_for(dead.wait(), timeout=10)
        assert loop.failures >= 1
    finally:
        await loop.stop()
        await channel.close()


async def test_a_busy_store_is_no_partition(identity: tuple[IdentityService, Store]) -> None:
    """A beat that waits for SQLite's writers (200 logins at once through one `stockade up`)
    is slow, not lost: it must not make the gateway close every session as if it were cut off
    (seen under load: `gateway_cut_off` after 4.8 s, 26 live sessions ended)."""
    import asyncio

    service, store = identity
    dead: list[str] = []

    async def on_dead() -> None:
        dead.append("cut off")

    loop = HeartbeatLoop(
        service, gateway_id="gw-a", boot_id=lambda: "boot-a", interval=0.1, timeout=1.0,
        on_dead=on_dead,
    )  # fmt: skip
    try:
        assert await loop.beat()
        loop.start()
        async with store.transaction():  # holds the write lock: every beat queues behind it
            await asyncio.sleep(3.5)
        await asyncio.sleep(0.5)  # the queued beat lands, and the next ones
        assert dead == []
        assert loop.failures == 0
        assert loop.beats >= 2
    finally:
        await loop.stop()


async def test_an_identity_that_accepts_and_never_answers_cuts_the_gateway_off(
    tmp_path: Path,
) -> None:
    """ATTACK (black hole): the identity address accepts the TCP connection and says nothing
    (no TLS handshake, no answer). No beat lands, none is refused at once: the client's
    deadline must end each, count it, and cut the gateway off (a slow beat is not waited for
    forever)."""
    import asyncio

    from stockade.rpc import IdentityClient, mtls_channel
    from stockade.tls import CertificateFiles, DevCA, gateway_uri

    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never written to

    hole = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    ca = DevCA(tmp_path / "tls")
    gw = ca.issue("gateway", sans=["localhost", gateway_uri("gw-a")])
    channel = mtls_channel("127.0.0.1", port, CertificateFiles(gw.cert, gw.key, gw.ca))
    dead = asyncio.Event()

    async def on_dead() -> None:
        dead.set()

    loop = HeartbeatLoop(
        IdentityClient(channel, target="identity", timeout=0.3),
        gateway_id="gw-a", boot_id=lambda: "boot-a", interval=0.1, timeout=1.0, on_dead=on_dead,
    )  # fmt: skip
    try:
        loop.start()
        await asyncio.wait_for(dead.wait(), timeout=15)
        assert loop.failures >= 1
        assert loop.beats == 0
    finally:
        await loop.stop()
        await channel.close()
        for writer in held:
            writer.close()
        hole.close()
        await hole.wait_closed()


async def test_an_error_closing_the_sessions_does_not_stop_the_heartbeat(
    identity: tuple[IdentityService, Store],
) -> None:
    """ATTACK: ``on_dead`` (closing this boot's sessions) fails once with an error that is no
    StockadeError. The loop died of it: no beat, no cut-off, ever again, while the gateway went
    on serving the sessions the registry had ended (fail open), and ``stop()`` raised it. It
    counts as a failed beat; the next beat is told again and closes them."""
    import asyncio

    service, store = identity
    boot = ["boot-1"]
    calls: list[str] = []

    async def on_dead() -> None:
        calls.append(boot[0])
        if len(calls) == 1:
            raise RuntimeError("closing the sessions failed")
        boot[0] = "boot-2"

    loop = HeartbeatLoop(service, gateway_id="gw-a", boot_id=lambda: boot[0], interval=0.1,
                         timeout=1.0, on_dead=on_dead)  # fmt: skip
    other = HeartbeatLoop(service, gateway_id="gw-b", boot_id=lambda: "boot-b", interval=1,
                          timeout=1.0, on_dead=on_dead)  # fmt: skip
    try:
        assert await loop.beat()
        loop.start()
        async with store.transaction() as session:  # A looks silent for 10 s
            await session.execute(
                update(GatewayRow)
                .where(GatewayRow.boot_id == "boot-1")
                .values(seen_at=datetime.now(UTC) - timedelta(seconds=10))
            )
        assert await other.beat()  # B declares boot-1 dead
        for _ in range(300):  # bounded
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.02)
        assert calls == ["boot-1", "boot-1"]
        assert loop.failures >= 1
        beats = loop.beats
        for _ in range(300):
            if loop.beats > beats:
                break
            await asyncio.sleep(0.02)
        assert loop.beats > beats  # boot-2 beats on
    finally:
        await loop.stop()


async def test_a_stop_cancelled_while_it_ends_the_loop_still_ends_the_beat_in_flight(
    identity: tuple[IdentityService, Store],
) -> None:
    """ATTACK (a stop that is itself cancelled: a second SIGTERM, an outer cancel_and_wait's
    next attempt): the stop waited for the loop to end, the cancellation ended that wait,
    and the beat in flight was never cancelled: it ran on after the stop, and could still
    declare this gateway dead (``on_dead``) after it had stopped."""
    import asyncio

    service, store = identity
    loop = HeartbeatLoop(
        service, gateway_id="gw-a", boot_id=lambda: "boot-a", interval=0.05, timeout=30.0,
        on_dead=lambda: asyncio.sleep(0),
    )  # fmt: skip
    assert await loop.beat()
    async with store.transaction():  # holds the write lock: the next beat waits behind it
        loop.start()
        for _ in range(1000):  # the first beat leaves after one interval and waits
            if loop._pending is not None:
                break
            await asyncio.sleep(0.01)
        pending = loop._pending
        assert pending is not None
        stopping = asyncio.create_task(loop.stop())
        await asyncio.sleep(0)  # the stop now waits for the loop to end
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await asyncio.sleep(0.05)
        try:
            assert pending.done()  # cancelled, not left waiting for the store
        finally:
            pending.cancel()
