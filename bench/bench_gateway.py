"""SSH gateway vs OpenSSH sshd on loopback: login+exec latency, bulk throughput, idle memory.

Same client for both (``ssh -F /dev/null``, BatchMode, no ControlMaster,
``KexAlgorithms=curve25519-sha256``), clean environments (``env -i PATH=/usr/bin:/bin``). The
gateway runs with real identity (SQLite), the default Rego bundle, an embedded NATS and
recording on for the login bench (a contractor); the bulk user is a developer (not recorded).
Bulk rounds alternate sshd and gateway (the machine is shared) and ``wc -c`` counts the bytes,
so the bench's own event loop (which also runs the gateway) reads nothing.

``STOCKADE_BENCH_GATEWAY=bulk`` runs only the throughput part; ``STOCKADE_BENCH_BULK_ROUNDS=N``
sets the number of rounds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench._report import record
from stockade.authz import Authorizer
from stockade.bus import Bus, EmbeddedNats
from stockade.core.settings import AuthzSettings, GatewaySettings, IdentitySettings
from stockade.gateway import Gateway
from stockade.identity import IdentityService, KeyRing
from stockade.store import Store

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
LOGINS = 40
BULK_MB = 256
BULK_ROUNDS = int(os.environ.get("STOCKADE_BENCH_BULK_ROUNDS", "5"))
#: Which parts to run (``STOCKADE_BENCH_GATEWAY=bulk`` for throughput alone).
PARTS = os.environ.get("STOCKADE_BENCH_GATEWAY", "latency,bulk,idle").split(",")
IDLE = 500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ssh(tmp: Path, key: Path, port: int, user: str, *command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={tmp / 'kh'}",
        "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-o", "KexAlgorithms=curve25519-sha256", "-o", "ControlMaster=no",
        "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", str(port), f"{user}@127.0.0.1",
        *command,
    ]  # fmt: skip


async def _latency(cmd: list[str]) -> list[float]:
    times = []
    for _ in range(LOGINS):
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*cmd, env=ENV)
        if await proc.wait() != 0:
            raise RuntimeError(f"{cmd} failed")
        times.append(time.perf_counter() - start)
    return times


async def _bulk(cmd: list[str]) -> float:
    """MB/s of ``cmd``'s stdout, counted by ``wc -c`` so no reading happens in the gateway's
    event loop (the gateway runs in this process)."""
    read_fd, write_fd = os.pipe()
    try:
        counter = await asyncio.create_subprocess_exec(
            "wc", "-c", stdin=read_fd, stdout=asyncio.subprocess.PIPE, env=ENV
        )
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*cmd, env=ENV, stdout=write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    await proc.wait()
    out, _ = await counter.communicate()
    elapsed = time.perf_counter() - start
    total = int(out.split()[0])
    if proc.returncode != 0 or total != BULK_MB << 20:
        raise RuntimeError(f"bulk read {total} bytes, ssh exited {proc.returncode}")
    return total / elapsed / 1e6


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _prepare(tmp: Path) -> tuple[Path, Path, int]:
    """Keys and an sshd config: (client key, sshd config, sshd port)."""
    Path("/run/sshd").mkdir(exist_ok=True)
    key = tmp / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    bulk = tmp / "id_bulk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bulk)], check=True)
    (tmp / "data").mkdir()
    sshd_port = _free_port()
    host_key = tmp / "hk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    auth = tmp / "authorized_keys"
    auth.write_text(key.with_suffix(".pub").read_text())
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {auth}\nUsePAM no\nPermitRootLogin yes\nStrictModes no\n"
        "PidFile none\nLogLevel ERROR\nMaxStartups 1000\n"
    )
    return key, config, sshd_port


async def _latency_part(tmp: Path, key: Path, sshd_port: int, gw_port: int) -> None:
    direct = await _latency(_ssh(tmp, key, sshd_port, "root", "true"))
    through = await _latency(_ssh(tmp, key, gw_port, "bench", "true"))
    p50d, p99d, p50g, p99g = (_pct(direct, 0.5), _pct(direct, 0.99),
                              _pct(through, 0.5), _pct(through, 0.99))  # fmt: skip
    for cut, ours, theirs in (("p50", p50g, p50d), ("p99", p99g, p99d)):
        record(f"ssh login+exec true ({cut})", value=f"gateway {ours:.1f} ms",
               anchor=f"sshd {theirs:.1f} ms", ratio=ours / theirs)  # fmt: skip


async def _bulk_part(tmp: Path, key: Path, bulk_key: Path, sshd_port: int, gw_port: int) -> None:
    # interleaved rounds: the machine is shared, so both see the same background load
    command = f"head -c {BULK_MB << 20} /dev/zero"
    ratios = []
    for round_no in range(1, BULK_ROUNDS + 1):
        direct = await _bulk(_ssh(tmp, key, sshd_port, "root", command))
        through = await _bulk(_ssh(tmp, bulk_key, gw_port, "bulk", command))
        ratios.append(through / direct)
        print(f"bulk {BULK_MB} MB stream, round {round_no}: gateway {through:.0f} MB/s, "
              f"sshd {direct:.0f} MB/s ({through / direct:.0%} of sshd)", flush=True)  # fmt: skip
    ratios.sort()
    record(f"bulk {BULK_MB} MB stream, {BULK_ROUNDS} interleaved rounds (median)",
           value=f"gateway {ratios[0]:.0%}..{ratios[-1]:.0%} of sshd",
           anchor="sshd (same client, same round)", ratio=ratios[len(ratios) // 2])  # fmt: skip


async def _idle_part(tmp: Path, key: Path, gw_port: int, gateway: Gateway) -> None:
    before = _rss_kb()
    idle = [
        await asyncio.create_subprocess_exec(
            *_ssh(tmp, key, gw_port, "bench", "-N"), env=ENV, stdin=subprocess.DEVNULL
        )
        for _ in range(IDLE)
    ]
    for _ in range(600):
        if len(gateway._conns) >= IDLE:
            break
        await asyncio.sleep(0.1)
    after = _rss_kb()
    count = len(gateway._conns)
    growth = (after - before) / max(1, count)
    record(f"idle sessions ({count})", value=f"{growth:.0f} KiB RSS per idle session")
    for proc in idle:
        proc.terminate()
    for proc in idle:
        await proc.wait()


async def _run(tmp: Path, key: Path, sshd_port: int) -> None:
    data = tmp / "data"
    async with EmbeddedNats(tmp / "nats") as nats_url:
        store = Store(f"sqlite:///{data / 'stockade.db'}")
        await store.migrate()
        identity = IdentityService(
            store=store, settings=IdentitySettings(), keyring=KeyRing(data / "keys")
        )
        await identity.add_user("bench", roles=["contractor"])
        await identity.add_key("bench", key.with_suffix(".pub").read_text())
        await identity.add_user("bulk")  # a developer: not recorded
        await identity.add_key("bulk", (tmp / "id_bulk.pub").read_text())
        bus = await Bus.connect(nats_url, name="bench")
        await bus.ensure_streams()
        gateway = Gateway(
            settings=GatewaySettings(port=0, max_connections_per_source=IDLE + 50,
                                     max_connections=IDLE + 100, gateway_id="bench"),
            identity=identity, authz=Authorizer(settings=AuthzSettings()), publisher=bus,
            data_dir=data,
        )  # fmt: skip
        await gateway.start()
        gw_port = gateway.listening[0][1]
        try:
            await asyncio.sleep(0.5)
            if "latency" in PARTS:
                await _latency_part(tmp, key, sshd_port, gw_port)
            if "bulk" in PARTS:
                await _bulk_part(tmp, key, tmp / "id_bulk", sshd_port, gw_port)
            if "idle" in PARTS:
                await _idle_part(tmp, key, gw_port, gateway)
        finally:
            await gateway.stop(grace=5)  # sessions end and return their connections first
            await bus.close()
            await store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        path.chmod(0o755)
        key, config, sshd_port = _prepare(path)
        sshd = subprocess.Popen(
            ["env", "-i", "PATH=/usr/bin:/bin", "/usr/sbin/sshd", "-D", "-f", str(config)]
        )
        try:
            asyncio.run(_run(path, key, sshd_port))
        finally:
            sshd.terminate()
            sshd.wait()
