"""Session kills and ends must survive the gateway's bus connection going down.

A workspace-wide kill whose ``stockade.session.ended`` is lost on the way must still reach the
broker: after ``SessionKill(session_id="*", workspace_label=...)`` the broker has nothing but
that event to stop serving the killed session's token from memory (``LiveSessions``).

Real gateway, identity (SQLite), OpenSSH client and nats-server. The gateway reaches NATS through
a loopback proxy that, right after forwarding the kill to the gateway, swallows everything the
gateway sends for a while (the publish of the session's end is written out and lost: no ack),
then drops the connection and lets the gateway reconnect: "the bus is down during the kill, then
comes back". The broker's connection goes straight to the server and stays up (so its epoch
never changes: it has no reason to distrust what it remembers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.broker._liveness import LiveSessions
from stockade.bus import Bus
from stockade.core.errors import TokenRejected
from stockade.core.events import SessionKill
from stockade.workspace import label_value

from .harness import CLEAN_ENV, eventually, gateway_env


class CuttableProxy:
    """TCP proxy to ``upstream``; :meth:`arm` makes it, once ``trigger`` passes from the server to
    the client, discard the client's bytes for ``swallow`` seconds, then close every connection
    (new ones are served again at once)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.trigger: bytes | None = None
        self.swallow = 0.0
        self.swallowing = False
        self.swallowed = 0
        self.blackhole = False
        """Drop what passes either way, closing nothing (a half-open link)."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.fired = asyncio.Event()
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{self.port}"

    def arm(self, trigger: bytes, swallow: float) -> None:
        self.trigger, self.swallow = trigger, swallow

    async def down(self) -> None:
        """Drop every connection and stop listening (connections refused) until :meth:`up`."""
        assert self._server is not None
        self._server.close()
        self._cut()
        await self._server.wait_closed()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if self.blackhole:
                    continue
                if self.swallowing:
                    self.swallowed += len(data)
                    continue
                up_writer.write(data)
                await up_writer.drain()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                if self.blackhole:
                    continue
                writer.write(data)
                await writer.drain()
                if self.trigger is not None and self.trigger in data:
                    self.trigger = None
                    self.swallowing = True
                    self.fired.set()
                    asyncio.get_running_loop().call_later(self.swallow, self._cut)

        tasks = [
            asyncio.ensure_future(client_to_server()),
            asyncio.ensure_future(server_to_client()),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    def _cut(self) -> None:
        self.swallowing = False
        for writer in list(self._writers):
            writer.close()


@contextlib.asynccontextmanager
async def _proxy(nats_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    host, _, port = nats_url.removeprefix("nats://").rpartition(":")
    proxy = CuttableProxy((host, int(port)))
    url = await proxy.start()
    try:
        yield proxy, url
    finally:
        await proxy.stop()


async def test_a_lost_session_end_after_a_workspace_kill_still_reaches_the_broker(
    tmp_path: Path, nats_url: str
) -> None:
    async with (
        _proxy(nats_url) as (proxy, via_proxy),
        gateway_env(tmp_path, via_proxy) as env,
    ):
        key = await env.add_user("wkill")
        assert key is not None
        ssh = await asyncio.create_subprocess_exec(
            *env.ssh_cmd("wkill", "sleep 60", key=key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=CLEAN_ENV,
        )
        broker_bus = await Bus.connect(nats_url, name="broker-test")
        try:
            assert await eventually(lambda: env.gateway._live.values(), within=30)
            (live,) = env.gateway._live.values()
            token, sid = live.token, live.session_id
            workspace = live.principal.workspace.name
            # the broker's view: the token verified once, then answered from memory
            sessions = LiveSessions(env.identity, max_age=300)
            await sessions.attach(broker_bus)
            assert (await sessions.verify_token(token)).sid == sid
            hits = sessions.hits
            assert (await sessions.verify_token(token)).sid == sid
            assert sessions.hits == hits + 1

            proxy.arm(b"stockade.session.kill", swallow=1.5)
            kill = SessionKill(
                session_id="*", workspace_label=label_value(workspace), reason="killed", by="test"
            )
            await broker_bus.publish(kill)
            await asyncio.wait_for(proxy.fired.wait(), 10)
            await asyncio.wait_for(ssh.wait(), 30)  # the gateway carried out the kill

            async def ended() -> bool:
                return not await env.identity.is_session_live(sid)

            assert await eventually(ended)  # recorded in the store (the bus is not needed there)
            assert proxy.swallowed > 0  # what the gateway sent meanwhile was lost

            # the end must reach the broker once the gateway's link is back (bounded wait)
            assert await eventually(lambda: sessions.is_dead(sid), within=20), (
                "the broker never heard that the killed session ended"
            )
            with pytest.raises(TokenRejected):
                await sessions.verify_token(token)
            await sessions.detach()
        finally:
            if ssh.returncode is None:
                ssh.kill()
                await ssh.wait()
            await broker_bus.close()


async def test_a_kill_published_while_the_gateway_is_cut_off_is_applied_once_it_is_back(
    tmp_path: Path, nats_url: str
) -> None:
    """The kill itself goes out while the gateway's bus link is down (core NATS would never
    deliver it): once the gateway reconnects it reads the kills stored meanwhile and ends the
    session. A login after the kill is spared by the replay."""
    async with (
        _proxy(nats_url) as (proxy, via_proxy),
        gateway_env(tmp_path, via_proxy) as env,
    ):
        key = await env.add_user("wcut")
        assert key is not None

        async def start_session() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                *env.ssh_cmd("wcut", "sleep 60", key=key),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=CLEAN_ENV,
            )

        first = await start_session()
        later: asyncio.subprocess.Process | None = None
        bus = await Bus.connect(nats_url, name="killer-test")
        try:
            assert await eventually(lambda: env.gateway._live.values(), within=30)
            (live,) = env.gateway._live.values()
            await proxy.down()
            await asyncio.sleep(0.5)  # the gateway notices (its epoch goes to -1)
            kill = SessionKill(
                session_id="*",
                workspace_label=label_value(live.principal.workspace.name),
                reason="killed",
                by="test",
            )
            await bus.publish(kill)
            await asyncio.sleep(0.3)
            await proxy.up()
            await asyncio.wait_for(first.wait(), 30)  # ended after the reconnect
            # a new login after the kill is not ended by it
            later = await start_session()
            assert await eventually(lambda: env.gateway._live.values(), within=30)
            await asyncio.sleep(1.0)
            assert later.returncode is None
        finally:
            for proc in (first, later):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await bus.close()


async def test_a_kill_lost_on_a_half_open_link_is_applied_after_the_reconnect(
    tmp_path: Path, nats_url: str
) -> None:
    """BROKE: the link goes silent without closing (a partition, a dead NAT entry: no RST), so
    the client still believes itself connected until its pings time out (minutes with nats-py's
    defaults); the kill published meanwhile is lost on the way. The replay after the reconnect
    read the kills stored since two seconds before the client last *believed* itself up -- that
    is, just before it noticed -- and missed this one: the killed session kept running. The
    replay now goes by the audit stream's sequence (every kill stored after the last one the
    gateway read), whatever the clocks say."""
    async with (
        _proxy(nats_url) as (proxy, via_proxy),
        gateway_env(tmp_path, via_proxy) as env,
    ):
        key = await env.add_user("whalf")
        assert key is not None
        ssh = await asyncio.create_subprocess_exec(
            *env.ssh_cmd("whalf", "sleep 60", key=key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=CLEAN_ENV,
        )
        bus = await Bus.connect(nats_url, name="killer-half-open")
        try:
            assert await eventually(lambda: env.gateway._live.values(), within=30)
            (live,) = env.gateway._live.values()
            await asyncio.sleep(3.0)  # let the gateway's replay watcher settle on this link
            proxy.blackhole = True  # both directions silent, nothing closed
            await asyncio.sleep(0.3)
            kill = SessionKill(
                session_id="*",
                workspace_label=label_value(live.principal.workspace.name),
                reason="killed",
                by="test",
            )
            await bus.publish(kill)
            await asyncio.sleep(4.0)  # the client has not noticed (no ping is due yet)
            assert ssh.returncode is None  # the kill was lost on the silent link
            proxy.blackhole = False
            proxy._cut()  # now the connection dies for real and the gateway reconnects
            await asyncio.wait_for(ssh.wait(), 30)
        finally:
            if ssh.returncode is None:
                ssh.kill()
                await ssh.wait()
            await bus.close()
