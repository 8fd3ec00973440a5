"""kill -9 of the shield in the middle of a burst: no event unaccounted for, no ban lost.

The shield acknowledges cumulatively, once per chunk, after the chunk's ban writes are
confirmed; the kill lands while bans are being decided and written (the last quarter of the
burst crosses the threshold), so some chunks are decided and not acknowledged, some writes sent
and not confirmed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from stockade.bus import Bus, EmbeddedNats
from stockade.core.events import SUBJECT_AUTH_FAILED, AuthFailed
from stockade.shield import BanStore

SOURCES = 1000
THRESHOLD = 4

SHIELD = textwrap.dedent(
    f"""
    import asyncio, sys
    from stockade.bus import Bus
    from stockade.core.settings import ShieldSettings
    from stockade.shield import Shield

    async def main():
        bus = await Bus.connect(sys.argv[1], name="shield-under-test")
        settings = ShieldSettings(threshold={THRESHOLD}, ban_schedule=["1h"])
        shield = Shield(bus, settings, enforcers=[], batch=64)
        await shield.start()
        print("started", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def start_shield(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SHIELD, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = ""
    while "started" not in line:
        line = proc.stdout.readline()
        assert line, "shield exited during start"
    return proc


def failure(ip: str, n: int) -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=30000 + n,
        username=f"user{n}",
        method="password",
        reason="bad_password",
        gateway_id="burst",
    )


async def test_kill_9_mid_burst(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "data") as url:
        bus = await Bus.connect(url, name="burst")
        await bus.ensure_streams()
        store = await BanStore.open(bus, strike_memory=3600)
        events = [
            failure(f"203.0.{i // 250}.{i % 250 + 1}", n)
            for n in range(THRESHOLD)
            for i in range(SOURCES)
        ]
        banning = SOURCES * (THRESHOLD - 1)  # the first threshold-crossing failure
        cut = banning + SOURCES // 2
        proc = start_shield(url)
        try:
            await bus.publish_many(events[:cut])
            deadline = time.monotonic() + 30
            consumer = bus.consumer(stream="STOCKADE_AUTH", durable="shield")
            while (await consumer.state()).ack_floor < banning + 20:  # bans being written
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            await bus.publish_many(events[cut : cut + 100])
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        killed_at = (await consumer.state()).ack_floor
        await bus.publish_many(events[cut + 100 :])
        last = await bus.last_sequence("STOCKADE_AUTH", SUBJECT_AUTH_FAILED)
        proc = start_shield(url)
        try:
            deadline = time.monotonic() + 60
            while True:
                state = await consumer.state()
                if state.ack_floor >= last and state.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        assert state.num_pending == 0
        bans = await store.all()
        await bus.close()
    assert killed_at < last  # the kill left work undone
    assert len(bans) == SOURCES  # every source crossed the threshold: every ban is there
    assert {b.strikes for b in bans} == {1}  # and none was banned twice
