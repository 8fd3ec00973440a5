"""Two Stockade instances on one host (acceptance 3): each keeps its own bans in its own nft table.

Two data dirs, two embedded NATS servers (so two ban stores), two shields whose nftables
enforcers manage the same network namespace, exactly as two `stockade up` on one host would
(`Runtime` builds the shield the same way: table and owner from the data dir). Each ban lands in
its own instance's table only; stopping and restarting one rebuilds only its own table; an
instance configured with a table another instance made refuses to touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.bus import Bus, EmbeddedNats
from stockade.core import load_settings
from stockade.core.settings import Settings
from stockade.shield import BanStore, NftablesEnforcer, Shield, manual_ban

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="needs root (ip netns, nft)"),
]

PORT = 2222
LISTENER = """
import socket, sys, select
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    ready, _, _ = select.select([s], [], [], 60)
    if not ready:
        break
    conn, _ = s.accept()
    conn.close()
"""


@dataclass(frozen=True)
class Net:
    ns: str
    first4: str  # banned by instance A
    second4: str  # banned by instance B
    bystander4: str
    server4: str


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Net]:
    x = random.randint(1, 250)
    tag = f"{os.getpid() % 100000}{x}"
    ns, host_if, ns_if = f"stk-2i-{tag}", f"v2h{tag}"[:15], f"v2n{tag}"[:15]
    net = Net(ns, f"10.201.{x}.1", f"10.201.{x}.3", f"10.201.{x}.4", f"10.201.{x}.2")
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        for addr in (net.first4, net.second4, net.bystander4):
            sh("ip", "addr", "add", f"{addr}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", ns, "ip")
        sh(*inside, "addr", "add", f"{net.server4}/24", "dev", ns_if)
        sh(*inside, "link", "set", ns_if, "up")
        sh(*inside, "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, str(PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        try:
            yield net
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@dataclass
class Instance:
    settings: Settings
    nats: EmbeddedNats
    bus: Bus
    shield: Shield | None = None

    async def start_shield(self, *, nft_table: str | None = None) -> NftablesEnforcer:
        shield_settings = self.settings.shield.model_copy(
            update={"nft_table": nft_table or self.settings.nft_table}
        )
        self.shield = Shield(
            self.bus, shield_settings, ports=[PORT], owner=self.settings.instance_id
        )
        await self.shield.start()
        return next(e for e in self.shield.enforcers if isinstance(e, NftablesEnforcer))

    async def stop_shield(self) -> None:
        if self.shield is not None:
            await self.shield.stop()
            self.shield = None

    async def ban(self, source: str) -> None:
        assert self.shield is not None
        store = await BanStore.open(self.bus, strike_memory=3600)
        await manual_ban(store, self.settings.shield, source, duration=3600, reason="test")


@contextlib.asynccontextmanager
async def instance(data_dir: Path, netns: Net) -> AsyncIterator[Instance]:
    settings = load_settings(
        data_dir=data_dir,
        shield={"nft_netns": netns.ns, "ports": [PORT], "enforcers": ["denylist", "nftables"]},
    )
    nats = EmbeddedNats(data_dir, auth=True)
    url = await nats.start()
    bus = await Bus.connect(url, name="two-instances", token=nats.token)
    await bus.ensure_streams()
    inst = Instance(settings, nats, bus)
    try:
        yield inst
    finally:
        await inst.stop_shield()
        await bus.close()
        await nats.stop()


async def connects(source: str, target: str) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target, PORT, local_addr=(source, 0)), timeout=1.0
        )
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def until(check: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def tables(ns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "tables"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.startswith("table inet")}


async def test_two_instances_keep_their_own_bans(netns: Net, tmp_path: Path) -> None:
    async with (
        instance(tmp_path / "a", netns) as a,
        instance(tmp_path / "b", netns) as b,
    ):
        assert a.settings.nft_table != b.settings.nft_table
        nft_a = await a.start_shield()
        nft_b = await b.start_shield()
        assert nft_a.available, nft_a.problem
        assert nft_b.available, nft_b.problem
        assert tables(netns.ns) == {a.settings.nft_table, b.settings.nft_table}

        await a.ban(netns.first4)
        await b.ban(netns.second4)

        async def both_in() -> bool:
            return (
                netns.first4 in await nft_a.elements() and netns.second4 in await nft_b.elements()
            )

        await until(both_in)
        assert netns.second4 not in await nft_a.elements()
        assert netns.first4 not in await nft_b.elements()
        assert not await connects(netns.first4, netns.server4)
        assert not await connects(netns.second4, netns.server4)
        assert await connects(netns.bystander4, netns.server4)

        # B stops and starts again: it rebuilds its own table only; A's set is untouched.
        await b.stop_shield()
        assert netns.first4 in await nft_a.elements()
        nft_b = await b.start_shield()
        assert nft_b.available, nft_b.problem
        assert netns.first4 in await nft_a.elements()
        assert set(await nft_b.elements()) == {netns.second4}

        # B configured with A's table name refuses to rebuild (and so wipe) it.
        await b.stop_shield()
        thief = await b.start_shield(nft_table=a.settings.nft_table)
        assert not thief.available
        assert "not made by this instance" in (thief.problem or "")
        assert netns.first4 in await nft_a.elements()
        assert not await connects(netns.first4, netns.server4)
        await b.stop_shield()

        # A stops: its bans stay in the kernel until they expire (enforced while it is down).
        await a.stop_shield()
        assert netns.first4 in await nft_a.elements()
