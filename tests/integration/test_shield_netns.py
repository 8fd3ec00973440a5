"""SSH Shield end to end at the network layer: bans become nftables drops in a namespace.

The test builds its own network namespace with a veth pair (addresses only on that pair), runs a
TCP listener inside it as the gateway's stand-in, lets the shield (nftables enforcer pointed at
the namespace) ban one peer address, and checks from the host side that the banned address gets
no SYN-ACK while a second address still connects, and that the ban lifts by itself.
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
from stockade.core.events import AuthFailed
from stockade.core.settings import ShieldSettings
from stockade.shield import Nft, NftablesEnforcer, Shield

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
IS_ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="needs root (ip netns, nft)"),
]

PORT = 2222
LISTENER = """
import socket, sys, select
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(sys.argv[1])))
    s.listen(64)
    socks.append(s)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 60)
    if not ready:
        break
    for s in ready:
        conn, _ = s.accept()
        conn.sendall(b"SSH-2.0-standin\\r\\n")
        conn.close()
"""


@dataclass(frozen=True)
class Net:
    ns: str
    attacker4: str
    bystander4: str
    server4: str
    attacker6: str
    bystander6: str
    server6_a: str
    server6_b: str


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Net]:
    x = random.randint(1, 250)
    tag = f"{os.getpid() % 100000}{x}"
    ns, host_if, ns_if = f"stk-sh-{tag}", f"vsh{tag}"[:15], f"vsn{tag}"[:15]
    net = Net(
        ns=ns,
        attacker4=f"10.200.{x}.1",
        bystander4=f"10.200.{x}.3",
        server4=f"10.200.{x}.2",
        attacker6=f"fd00:200:{x:x}::1",
        bystander6=f"fd00:201:{x:x}::1",
        server6_a=f"fd00:200:{x:x}::2",
        server6_b=f"fd00:201:{x:x}::2",
    )
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        for addr in (f"{net.attacker4}/24", f"{net.bystander4}/24"):
            sh("ip", "addr", "add", addr, "dev", host_if)
        for addr in (f"{net.attacker6}/64", f"{net.bystander6}/64"):
            sh("ip", "addr", "add", addr, "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", ns, "ip")
        sh(*inside, "addr", "add", f"{net.server4}/24", "dev", ns_if)
        sh(*inside, "addr", "add", f"{net.server6_a}/64", "dev", ns_if, "nodad")
        sh(*inside, "addr", "add", f"{net.server6_b}/64", "dev", ns_if, "nodad")
        sh(*inside, "link", "set", ns_if, "up")
        sh(*inside, "link", "set", "lo", "up")
        yield net
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def listener(netns: Net) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.ns, sys.executable, "-c", LISTENER, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    try:
        yield
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    async with EmbeddedNats(tmp_path / "data") as url:
        bus = await Bus.connect(url, name="shield-netns")
        await bus.ensure_streams()
        yield bus
        await bus.close()


async def connects(source: str, target: str) -> bool:
    """True when a TCP connection from ``source`` to ``target`` completes (a SYN-ACK came)."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target, PORT, local_addr=(source, 0)), timeout=1.0
        )
    except TimeoutError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def failure(ip: str, n: int) -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=40000 + n,
        username="root",
        method="password",
        reason="bad_password",
        gateway_id="netns-test",
    )


async def until(check_coro: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if await check_coro():  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


@pytest.mark.usefixtures("listener")
@pytest.mark.parametrize("family", [4, 6])
async def test_threshold_drops_syn_then_expires(netns: Net, bus: Bus, family: int) -> None:
    settings = ShieldSettings(
        threshold=3, ban_schedule=["4s"], nft_netns=netns.ns, ports=[PORT], nft_table="stockade"
    )
    shield = Shield(bus, settings)
    await shield.start()
    nft = next(e for e in shield.enforcers if isinstance(e, NftablesEnforcer))
    assert nft.available, nft.problem
    if family == 4:
        attacker, bystander = netns.attacker4, netns.bystander4
        target_a = target_b = netns.server4
        banned = attacker
    else:
        attacker, bystander = netns.attacker6, netns.bystander6
        target_a, target_b = netns.server6_a, netns.server6_b
        banned = f"{attacker.rsplit('::', 1)[0]}::/64"
    try:
        assert await connects(attacker, target_a)
        for n in range(3):
            await bus.publish(failure(attacker, n))

        async def in_set() -> bool:
            return banned in await nft.elements()

        await until(in_set)
        # the ban's clock runs from when it was set: the cheap check first, then the probe
        # that waits a second for a SYN-ACK, well inside the ban even on a loaded machine
        assert shield.deny_list.is_banned(attacker)
        assert not await connects(attacker, target_a)  # no SYN-ACK
        assert await connects(bystander, target_b)

        async def lifted() -> bool:
            return banned not in await nft.elements()

        await until(lifted)
        assert await connects(attacker, target_a)
        assert not shield.deny_list.is_banned(attacker)
    finally:
        await shield.stop()


async def test_nft_reconciled_from_store_at_start(netns: Net, bus: Bus) -> None:
    settings = ShieldSettings(
        threshold=3, ban_schedule=["1h"], nft_netns=netns.ns, ports=[PORT], enforcers=["denylist"]
    )
    first = Shield(bus, settings)
    await first.start()
    for n in range(3):
        await bus.publish(failure(netns.attacker4, n))
    await until(lambda: _true(first.deny_list.is_banned(netns.attacker4)))
    await first.stop()
    nft = NftablesEnforcer(Nft(netns=netns.ns), ports=[PORT])
    second = Shield(bus, settings, enforcers=[nft])
    await second.start()  # nftables was off during the ban: the start reconciles it in
    try:
        elements = await nft.elements()
        assert 3590 < elements[netns.attacker4] <= 3600
    finally:
        await second.stop()


async def test_nft_unavailable_reported_and_denylist_keeps_working(bus: Bus) -> None:
    nft = NftablesEnforcer(Nft(program="nft-not-installed"), ports=[PORT])
    shield = Shield(bus, ShieldSettings(threshold=2), enforcers=[nft])
    await shield.start()
    try:
        assert not nft.available
        assert nft.problem is not None
        assert "not installed" in nft.problem
        for n in range(2):
            await bus.publish(failure("198.51.100.9", n))
        await until(lambda: _true(shield.deny_list.is_banned("198.51.100.9")))
    finally:
        await shield.stop()


async def _true(value: bool) -> bool:
    return value
