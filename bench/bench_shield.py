"""SSH Shield: failure-to-nft latency, and events/s against Debian's ``fail2ban-regex``.

1. latency: in a network namespace the bench creates, the shield's nftables enforcer manages the
   namespace's ``inet stockade`` table; for each of LATENCY_ROUNDS sources the bench publishes
   the failures below the threshold, then times the threshold-crossing publish until
   ``nft monitor`` inside the namespace reports the element added. p50/p99 (goal p99 <= 100 ms).
   Then a ban wave: NFT_WAVE sources' failures published at once, timed until every ban is in
   the kernel's set (``nft -j list``), with the number of ``nft`` runs it took.
2. throughput, two cases of EVENTS failures each:

   - ``wave`` (the realistic one): a brute-force wave of WAVE_SOURCES sources failing over and
     over, interleaved in a fixed pseudo-random order, with usernames from a short dictionary;
     each source is banned at its THRESHOLD-th failure (WAVE_SOURCES bans) and its later
     failures find it banned (the log of a host that does not drop them yet);
   - ``worst``: every source fails exactly THRESHOLD times in a row, so every THRESHOLD-th event
     is a ban (EVENTS / THRESHOLD KV writes and audit events).

   The failures go through the running shield: JetStream consumer, detector, KV ban store. Another
   process publishes them while the shield consumes, with core publishes that the stream stores
   and that outpace the shield (the publisher is not what is measured). The clock stops when
   every event was handled and every ban is stored; then the consumer must have acknowledged all.
   The same failures, in the same order, as sshd auth-log lines go through ``fail2ban-regex``
   with Debian's sshd filter; every line must match. fail2ban-regex's start-up (timed on a
   one-line log) is taken off its time, as the shield's start is not timed either, so the ratio
   compares steady rates. Ratio printed per case (goal >= 10x).

Needs root for the namespace; without it the latency part is skipped with a note.
``STOCKADE_BENCH_SHIELD=throughput`` runs only the throughput part.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import record
from stockade.bus import Bus, EmbeddedNats
from stockade.core.events import AuthFailed
from stockade.core.logging import configure_logging
from stockade.core.settings import ShieldSettings
from stockade.shield import NftablesEnforcer, Shield

LATENCY_ROUNDS = 200
NFT_WAVE = 2000
EVENTS = 50_000
WAVE_SOURCES = 300
THRESHOLD = 5
USERNAMES = ("root", "admin", "ubuntu", "test", "oracle", "postgres", "git", "user", "pi", "ftp")
FAIL2BAN_FILTER = "/etc/fail2ban/filter.d/sshd.conf"
ROOT = Path(__file__).resolve().parent.parent
#: Which parts run (``STOCKADE_BENCH_SHIELD=throughput`` skips the nftables latency).
PARTS = os.environ.get("STOCKADE_BENCH_SHIELD", "latency,throughput").split(",")


def _failure(ip: str, n: int, username: str | None = None) -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=40000 + n % 20000,
        username=f"user{n % 3}" if username is None else username,
        method="password",
        reason="bad_password",
        gateway_id="bench",
    )


def _workload(case: str) -> list[tuple[str, str]]:
    """(address, username) of each failure, in order."""
    if case == "worst":
        return [(_ip(i // THRESHOLD + 1), f"user{i % 3}") for i in range(EVENTS)]
    rng = random.Random(4)
    return [(_ip(1000 + rng.randrange(WAVE_SOURCES)), rng.choice(USERNAMES)) for _ in range(EVENTS)]


def _expected_bans(workload: list[tuple[str, str]]) -> int:
    counts: dict[str, int] = {}
    for ip, _ in workload:
        counts[ip] = counts.get(ip, 0) + 1
    return sum(1 for n in counts.values() if n >= THRESHOLD)


def _ip(i: int) -> str:
    """A distinct address in 10.0.0.0/8 for each ``i`` below 16 million."""
    return f"10.{i // 62500 % 256}.{i // 250 % 250}.{i % 250 + 1}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _ip_netns(action: str, ns: str) -> None:
    proc = await asyncio.create_subprocess_exec("ip", "netns", action, ns)
    await proc.wait()


async def _latency(tmp: Path) -> None:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        record("failure-to-nft latency (p99)", value="skipped: needs root and nft")
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
            monitor.kill()
            await monitor.wait()
            wave_seconds, wave_runs = await _nft_wave(bus, shield)
            await shield.stop()
            await bus.close()
        p50, p99 = statistics.median(samples), _pct(samples, 0.99)
        record(
            "failure-to-nft latency (p99)",
            value=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(samples)} bans)",
            goal="p99 <= 100 ms",
            met=p99 <= 100,
        )
        record(
            f"ban wave to nft ({NFT_WAVE} sources at once)",
            value=f"{wave_seconds:.2f} s, {wave_runs} nft runs",
        )
    finally:
        if monitor is not None and monitor.returncode is None:
            monitor.kill()
            await monitor.wait()
        await _ip_netns("del", ns)


async def _nft_wave(bus: Bus, shield: Shield) -> tuple[float, str]:
    """Seconds from publishing NFT_WAVE sources' failures at once until every ban is in the
    namespace's nft set, and how many ``nft`` runs that took."""
    enforcer = next(e for e in shield.enforcers if isinstance(e, NftablesEnforcer))
    runs_before = getattr(enforcer, "runs", None)
    before = len(await enforcer.elements())
    wave = [_failure(_ip(500_000 + i), n) for i in range(NFT_WAVE) for n in range(THRESHOLD)]
    started = time.perf_counter()
    await bus.publish_many(wave)
    for _ in range(3000):  # at most ~300 s
        if len(await enforcer.elements()) >= before + NFT_WAVE:
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("ban wave did not reach nftables")
    elapsed = time.perf_counter() - started
    runs = "?" if runs_before is None else str(getattr(enforcer, "runs", 0) - runs_before)
    return elapsed, runs


PUBLISHER = """
import asyncio, sys
from bench.bench_shield import _failure, _workload
from stockade.bus import Bus
from stockade.core.events import MAX_BATCH_FAILURES, SUBJECT_AUTH_FAILED_BATCH, AuthFailedBatch

async def main():
    bus = await Bus.connect(sys.argv[1], name="bench-publisher")
    subject = SUBJECT_AUTH_FAILED_BATCH  # what the gateway's FailureBatcher publishes
    events = [_failure(ip, n, user) for n, (ip, user) in enumerate(_workload(sys.argv[2]))]
    step = MAX_BATCH_FAILURES
    chunks = [events[i : i + step] for i in range(0, len(events), step)]
    data = [AuthFailedBatch.of(chunk).to_bytes() for chunk in chunks]
    print("ready", flush=True)
    sys.stdin.readline()
    for payload in data:  # core publish: the stream stores them; faster than the shield reads
        await bus.nc.publish(subject, payload)
    await bus.flush()
    await bus.close()

asyncio.run(main())
"""


async def _shield_rate(tmp: Path, case: str) -> float:
    workload = _workload(case)
    expected = _expected_bans(workload)
    server = EmbeddedNats(tmp / f"rate-{case}")
    async with server as url:
        bus = await Bus.connect(url, name="bench-rate")
        shield = Shield(
            bus, ShieldSettings(threshold=THRESHOLD, ban_schedule=["1h"]), enforcers=[], batch=1024
        )
        await shield.start()
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, url, case,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        assert publisher.stdin is not None
        assert publisher.stdout is not None
        await asyncio.wait_for(publisher.stdout.readline(), 60)
        metrics = shield.metrics
        cpu, server_cpu = time.process_time(), _cpu_seconds(server.pid)
        started = time.perf_counter()
        publisher.stdin.write(b"go\n")
        await publisher.stdin.drain()
        for _ in range(180_000):  # at most 180 s
            if metrics.events_consumed >= EVENTS and metrics.bans_issued >= expected:
                break
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        cpu, server_cpu = time.process_time() - cpu, _cpu_seconds(server.pid) - server_cpu
        idle = await shield.wait_idle()
        await publisher.wait()
        consumed, bans = metrics.events_consumed, metrics.bans_issued
        await shield.stop()
        await bus.close()
    if consumed != EVENTS or bans != expected or not idle:
        raise RuntimeError(
            f"shield did not finish: consumed {consumed} of {EVENTS}, {bans} of {expected} bans"
        )
    rate = EVENTS / elapsed
    print(
        f"  shield: {EVENTS} events from {len({ip for ip, _ in workload})} sources consumed, "
        f"decided, {bans} bans stored, all acknowledged: {elapsed:.2f}s = {rate:,.0f} events/s\n"
        f"    CPU per event: shield {cpu / EVENTS * 1e6:.1f} us, "
        f"nats-server {server_cpu / EVENTS * 1e6:.1f} us"
    )
    return rate


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fail2ban_run(log: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and output of one ``fail2ban-regex`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        ["fail2ban-regex", str(log), FAIL2BAN_FILTER], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, result.stdout


def _fail2ban_rate(tmp: Path, case: str) -> float | None:
    if shutil.which("fail2ban-regex") is None or not Path(FAIL2BAN_FILTER).exists():
        print("  fail2ban-regex: not installed (apt-get install fail2ban)")
        return None
    log = tmp / f"auth-{case}.log"
    with log.open("w") as out:
        for i, (ip, user) in enumerate(_workload(case)):
            out.write(
                f"Jan 12 10:{(i // 60) % 60:02d}:{i % 60:02d} bench sshd[{1000 + i}]: "
                f"Failed password for {user} from {ip} port {40000 + i % 20000} ssh2\n"
            )
    one = tmp / "auth-one.log"
    one.write_text(
        "Jan 12 10:00:00 bench sshd[999]: Failed password for root from 10.0.0.1 port 1 ssh2\n"
    )
    startups = [_fail2ban_run(one) for _ in range(3)]
    startup = min(run[0] for run in startups)
    startup_cpu = min(run[1] for run in startups)
    elapsed, cpu, stdout = _fail2ban_run(log)
    found = re.search(r"Lines: (\d+) lines, \d+ ignored, (\d+) matched", stdout)
    if found is None or int(found.group(2)) != EVENTS:
        raise RuntimeError(f"fail2ban-regex did not match every line: {found and found[0]}")
    steady = elapsed - startup
    rate = EVENTS / steady
    print(
        f"  fail2ban-regex: {EVENTS} lines, all matched, in {elapsed:.2f}s, "
        f"{startup:.2f}s of it start-up: {rate:,.0f} lines/s "
        f"({EVENTS / elapsed:,.0f} lines/s with start-up)\n"
        f"    CPU per line (start-up excluded): {(cpu - startup_cpu) / EVENTS * 1e6:.1f} us"
    )
    return rate


async def _main() -> None:
    configure_logging("error")
    with tempfile.TemporaryDirectory(prefix="stockade-bench-shield-") as name:
        tmp = Path(name)
        if "latency" in PARTS:
            await _latency(tmp)
        for case, label in (
            ("wave", f"{WAVE_SOURCES} sources failing repeatedly"),
            ("worst", f"a ban every {THRESHOLD} events"),
        ):
            print(f"throughput, {case} ({label}):")
            shield_rate = await _shield_rate(tmp, case)
            anchor = _fail2ban_rate(tmp, case)
            goal = 10.0 if case == "wave" else 3.0
            record(
                f"shield events/s, {case} ({label})",
                value=f"{shield_rate:,.0f}/s",
                anchor=f"fail2ban-regex {anchor:,.0f}/s" if anchor else "fail2ban-regex missing",
                ratio=shield_rate / anchor if anchor else None,
                goal=f">= {goal:g}x",
                met=(shield_rate / anchor >= goal) if anchor else False,
            )


def main() -> None:
    asyncio.run(_main())
