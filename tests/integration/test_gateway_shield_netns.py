"""The whole ban path through real processes: `stockade up` listens inside a network namespace
the test creates; real `ssh` logins fail from the attacker's address; the gateway publishes
`stockade.auth.failed`; Shield bans; nftables inside the namespace drops the attacker's SYNs
while a second address still connects; the ban expires by itself (issue 4, acceptance 1)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway.harness import remove_workspace_netns

from .test_shield_netns import IN_CI, IS_ROOT, Net, connects, netns  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="needs root (ip netns, nft)"),
]

STOCKADE = str(Path(sys.executable).parent / "stockade")
PORT = 2222  # what connects() dials


@pytest.fixture
def mallory_key(tmp_path: Path) -> Path:
    key = tmp_path / "mallory"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def stockade_in_netns(netns: Net, tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update(
        STOCKADE_DATA_DIR=str(data),
        STOCKADE_API__PORT="0",
        STOCKADE_GATEWAY__HOST="0.0.0.0",
        STOCKADE_GATEWAY__EXTRA_HOSTS='["::"]',
        STOCKADE_GATEWAY__PORT=str(PORT),
        STOCKADE_SHIELD__THRESHOLD="3",
        STOCKADE_SHIELD__BAN_SCHEDULE='["4s"]',
        STOCKADE_SHIELD__ENFORCERS='["denylist", "nftables"]',
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.ns, STOCKADE, "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "ready" in line:
            break
    else:
        raise AssertionError(f"stockade up did not start: {banner}")
    assert any("nftables" in line for line in banner), banner
    try:
        yield data
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        remove_workspace_netns(data)  # its gateway's sandboxes' own


def failed_login(source: str, target: str, key: Path, known_hosts: Path) -> int:
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-b", source, "-p", str(PORT), "-i", str(key),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=3",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={known_hosts}",
            f"mallory@{target}", "true",
        ],
        capture_output=True, timeout=30, check=False,
    ).returncode  # fmt: skip


async def eventually(check: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("family", [4, 6])
async def test_failed_ssh_logins_become_a_kernel_drop_then_expire(
    netns: Net,  # noqa: F811 - the fixture imported above
    stockade_in_netns: Path,
    mallory_key: Path,
    tmp_path: Path,
    family: int,
) -> None:
    key = mallory_key
    if family == 4:
        attacker, bystander, target_a, target_b = (
            netns.attacker4, netns.bystander4, netns.server4, netns.server4,
        )  # fmt: skip
    else:
        attacker, bystander, target_a, target_b = (
            netns.attacker6, netns.bystander6, netns.server6_a, netns.server6_b,
        )  # fmt: skip
    assert await connects(attacker, target_a)

    for _ in range(3):
        assert failed_login(attacker, target_a, key, tmp_path / "known_hosts") == 255

    async def attacker_dropped() -> bool:
        return not await connects(attacker, target_a)

    await eventually(attacker_dropped)
    assert await connects(bystander, target_b)

    async def attacker_back() -> bool:
        return await connects(attacker, target_a)

    await eventually(attacker_back)  # the 4 s ban lifts by itself
