"""SSH Shield: failure-to-nft latency, and events/s against Debian's ``fail2ban-regex``.

1. latency: in a network namespace the bench creates, the shield's nftables enforcer manages the
   namespace's ``inet stockade`` table; for each of LATENCY_ROUNDS sources the bench publishes
   the failures below the threshold, then times the threshold-crossing publish until
   ``nft monitor`` inside the namespace reports the element added. p50/p99 (goal p99 <= 100 ms).
2. throughput: EVENTS failures (EVENTS / 5 sources, threshold 5, so every source is banned) go
   through the running shield (JetStream consumer, detector, KV ban store); the same number of
   failures as an sshd auth log go through ``fail2ban-regex`` with Debian's sshd filter.
   Ratio printed (goal >= 10x).

Needs root for the namespace; without it the latency part is skipped with a note.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stockade.bus import Bus, EmbeddedNats
from stockade.core.events import AuthFailed
from stockade.core.logging import configure_logging
from stockade.core.settings import ShieldSettings
from stockade.shield import Shield

LATENCY_ROUNDS = 200
EVENTS = 30_000
THRESHOLD = 5
FAIL2BAN_FILTER = "/etc/fail2ban/filter.d/sshd.conf"
ROOT = Path(__file__).resolve().parent.parent


def _failure(ip: str, n: int) -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=40000 + n,
        username=f"user{n % 3}",
        method="password",
        reason="bad_password",
        gateway_id="bench",
    )


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _ip_netns(action: str, ns: str) -> None:
    proc = await asyncio.create_subprocess_exec("ip", "netns", action, ns)
    await proc.wait()


async def _latency(tmp: Path) -> None:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        print("latency: skipped (needs root and nft)")
        return
    ns = f"stk-bench-{os.getpid()}"
    await _ip_netns("add", ns)
    monitor: asyncio.subprocess.Process | None = None
    try:
        async with EmbeddedNats(tmp / "lat") as url:
            bus = await Bus.connect(url, name="bench-latency")
            settings = ShieldSettings(
                threshold=THRESHOLD, ban_schedule=["1h"], nft_netns=ns, ports=[2222]
            )
            shield = Shield(bus, settings)
            await shield.start()
            monitor = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, "nft", "monitor", "new", "elements",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert monitor.stdout is not None
            await asyncio.sleep(0.3)  # let the monitor subscribe
            samples: list[float] = []
            for i in range(LATENCY_ROUNDS):
                ip = f"10.99.{i // 250}.{i % 250 + 1}"
                for n in range(THRESHOLD - 1):
                    await bus.publish(_failure(ip, n))
                started = time.perf_counter()
                await bus.publish(_failure(ip, THRESHOLD))
                while True:
                    line = await asyncio.wait_for(monitor.stdout.readline(), 10)
                    if f"{{ {ip} " in line.decode():
                        break
                samples.append((time.perf_counter() - started) * 1000)
            await shield.stop()
            await bus.close()
        p50, p99 = statistics.median(samples), _pct(samples, 0.99)
        verdict = "meets" if p99 <= 100 else "misses"
        print(
            f"failure-to-nft latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(samples)} "
            f"bans ({verdict} goal p99 <= 100 ms)"
        )
    finally:
        if monitor is not None and monitor.returncode is None:
            monitor.kill()
            await monitor.wait()
        await _ip_netns("del", ns)


PUBLISHER = """
import asyncio, sys
from bench.bench_shield import THRESHOLD, _failure, _ip
from stockade.bus import Bus

async def main():
    bus = await Bus.connect(sys.argv[1], name="bench-publisher")
    count = int(sys.argv[2])
    events = [_failure(_ip(i // THRESHOLD + 1), i % THRESHOLD) for i in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    for chunk in range(0, count, 5000):
        await bus.publish_many(events[chunk : chunk + 5000])
    await bus.close()

asyncio.run(main())
"""


async def _shield_rate(tmp: Path) -> float:
    async with EmbeddedNats(tmp / "rate") as url:
        bus = await Bus.connect(url, name="bench-rate")
        shield = Shield(
            bus, ShieldSettings(threshold=THRESHOLD, ban_schedule=["1h"]), enforcers=[], batch=1024
        )
        await shield.start()
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, url, str(EVENTS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        assert publisher.stdin is not None
        assert publisher.stdout is not None
        await asyncio.wait_for(publisher.stdout.readline(), 60)
        started = time.perf_counter()
        publisher.stdin.write(b"go\n")
        await publisher.stdin.drain()
        for _ in range(18_000):  # at most 180 s
            if shield.metrics.events_consumed >= EVENTS:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await publisher.wait()
        consumed, bans = shield.metrics.events_consumed, shield.metrics.bans_issued
        await shield.stop()
        await bus.close()
    if consumed != EVENTS:
        raise RuntimeError(f"shield did not finish: consumed {consumed} of {EVENTS}")
    rate = EVENTS / elapsed
    print(
        f"shield: {EVENTS} events published by another process, consumed, decided and "
        f"{bans} bans stored in {elapsed:.2f}s = {rate:,.0f} events/s"
    )
    return rate


def _fail2ban_rate(tmp: Path) -> float | None:
    if shutil.which("fail2ban-regex") is None or not Path(FAIL2BAN_FILTER).exists():
        print("fail2ban-regex: not installed (apt-get install fail2ban)")
        return None
    log = tmp / "auth.log"
    with log.open("w") as out:
        for i in range(EVENTS):
            ip = _ip(i // THRESHOLD + 1)
            out.write(
                f"Jan 12 10:{(i // 60) % 60:02d}:{i % 60:02d} bench sshd[{1000 + i}]: "
                f"Failed password for user{i % 3} from {ip} port {40000 + i % 20000} ssh2\n"
            )
    started = time.perf_counter()
    result = subprocess.run(
        ["fail2ban-regex", str(log), FAIL2BAN_FILTER], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    matched = f"{EVENTS} matched" in result.stdout
    rate = EVENTS / elapsed
    print(
        f"fail2ban-regex: {EVENTS} lines in {elapsed:.2f}s = {rate:,.0f} lines/s"
        + ("" if matched else " (warning: not every line matched)")
    )
    return rate


async def _main() -> None:
    configure_logging("error")
    with tempfile.TemporaryDirectory(prefix="stockade-bench-shield-") as name:
        tmp = Path(name)
        await _latency(tmp)
        shield_rate = await _shield_rate(tmp)
        anchor = _fail2ban_rate(tmp)
    if anchor:
        ratio = shield_rate / anchor
        verdict = "meets" if ratio >= 10 else "misses"
        print(f"shield vs fail2ban-regex: {ratio:.1f}x ({verdict} goal >= 10x)")


def main() -> None:
    asyncio.run(_main())
