"""Several gateways, one state (issue 13): ``stockade serve`` processes on loopback.

identity (SQLite store in its data dir), authz and two gateways, each ``stockade serve`` in its
own process, one external NATS, one dev CA. Two figures, each against its anchor in this run:

- **logins/s through two gateways vs one**: the same number of concurrent OpenSSH clients
  (``ssh ... true``, one login each) sent all to gateway A, then split over A and B. Identity and
  authz are shared, so the ratio shows whether the gateway was the bottleneck (~2x) or the
  shared services are (~1x).
- **kill -9 to sessions ended**: a live session on gateway A, ``kill -9`` of A, then the time until
  the store shows the session ended (``gateway_lost``), ended by gateway B's heartbeat with the
  default settings (beat every 1 s, dead after 3 s). Goal: <= 5 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import record
from stockade.bus import EmbeddedNats
from stockade.tls import DevCA

STOCKADE = str(Path(sys.executable).parent / "stockade")
CLIENTS = int(os.environ.get("STOCKADE_BENCH_SCALE_CLIENTS", "8"))
LOGINS = int(os.environ.get("STOCKADE_BENCH_SCALE_LOGINS", "48"))
KILLS = int(os.environ.get("STOCKADE_BENCH_SCALE_KILLS", "2"))


class Serve:
    def __init__(self, service: str, data_dir: Path, env: dict[str, str]) -> None:
        self.service, self.data_dir, self.env = service, data_dir, env
        self.proc: subprocess.Popen[str] | None = None
        self.banner: list[str] = []

    def launch(self) -> Serve:
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("a")
        self.proc = subprocess.Popen(
            [STOCKADE, "serve", self.service, "--data-dir", str(self.data_dir)],
            env=self.env, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        log.close()
        return self

    def ready(self) -> Serve:
        assert self.proc is not None
        assert self.proc.stdout is not None
        self.banner = []
        for line in self.proc.stdout:
            self.banner.append(line)
            if "ready" in line:
                return self
        raise RuntimeError(f"stockade serve {self.service} exited: {''.join(self.banner)}")

    def port(self, what: str) -> int:
        for line in self.banner:
            match = re.search(r"127\.0\.0\.1:(\d+)", line) if what in line else None
            if match:
                return int(match.group(1))
        raise RuntimeError(f"{what} not in {self.banner}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _ssh(key: Path, port: int, known: Path, command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={known}",
        "-o", "KexAlgorithms=curve25519-sha256", "bench@127.0.0.1", command,
    ]  # fmt: skip


async def _logins(key: Path, known: Path, ports: list[int]) -> tuple[float, int]:
    """LOGINS logins by CLIENTS concurrent workers, round-robin over ``ports``: (logins/s,
    failures)."""
    counter = iter(range(LOGINS))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for i in counter:
            proc = await asyncio.create_subprocess_exec(
                *_ssh(key, ports[i % len(ports)], known, "true"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            if proc.returncode != 0:
                failures += 1
                print(f"login {i} failed: {err.decode(errors='replace').strip()[:300]}")

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return LOGINS / (time.perf_counter() - begin), failures


def _ended(db: Path, session_id: str) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(
            "SELECT ended_at, end_reason FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
    return row is not None and row[0] is not None


def _live_session(db: Path) -> str | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(
            "SELECT id FROM sessions WHERE ended_at IS NULL ORDER BY started_at DESC"
        ).fetchone()
    return None if row is None else str(row[0])


def _kill_to_ended(gw_a: Serve, key: Path, known: Path, db: Path) -> float:
    live = subprocess.Popen(
        _ssh(key, gw_a.port("SSH gateway"), known, "echo up; exec sleep 300"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert live.stdout is not None
        if live.stdout.readline().strip() != "up":
            raise RuntimeError("the session through gateway A did not start")
        session_id = _live_session(db)
        if session_id is None:
            raise RuntimeError("no live session in the store")
        assert gw_a.proc is not None
        killed = time.perf_counter()
        gw_a.proc.kill()
        gw_a.proc.wait(timeout=30)
        deadline = killed + 60
        while not _ended(db, session_id):
            if time.perf_counter() > deadline:
                raise RuntimeError("the dead gateway's session was not ended within 60 s")
            time.sleep(0.02)
        return time.perf_counter() - killed
    finally:
        live.kill()
        live.wait(timeout=10)
        if live.stdout is not None:
            live.stdout.close()
        if gw_a.proc is not None and gw_a.proc.stdout is not None:
            gw_a.proc.stdout.close()
        gw_a.proc = None


def _print_warnings(tmp: Path) -> None:
    """The services' last warnings, to explain failed logins in ``bench/logs/scale.log``."""
    for name in ("gateway-a", "gateway-b", "identity", "authz"):
        log = tmp / f"{name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        for line in [x for x in lines if '"warning"' in x or '"error"' in x][-8:]:
            print(f"{name}: {line[:400]}")


def _run(tmp: Path, nats_url: str) -> None:
    DevCA(tmp / "tls").ensure()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKADE_", "VAULT_"))}
    env.update(
        COLUMNS="200", STOCKADE_BUS__URL=nats_url, STOCKADE_TLS__DIRECTORY=str(tmp / "tls"),
        STOCKADE_API__PORT="0", STOCKADE_LOG__LEVEL="warning", STOCKADE_LOG__JSON_OUTPUT="true",
        STOCKADE_SHIELD__ENABLED="false", STOCKADE_AUTHZ__DECISION_LOG="false",
        STOCKADE_GATEWAY__SANDBOX="none",
    )  # fmt: skip
    identity = Serve("identity", tmp / "identity", env).launch()
    authz = Serve("authz", tmp / "authz", env).launch()
    services = [identity.ready(), authz.ready()]
    gw_env = {
        **env,
        "STOCKADE_PEERS__IDENTITY": f"127.0.0.1:{identity.port('internal API')}",
        "STOCKADE_PEERS__AUTHZ": f"127.0.0.1:{authz.port('internal API')}",
        "STOCKADE_GATEWAY__PORT": "0",
    }
    gw_a = Serve("gateway", tmp / "gateway-a", gw_env).launch()
    gw_b = Serve("gateway", tmp / "gateway-b", gw_env).launch()
    services += [gw_a.ready(), gw_b.ready()]
    try:
        key = tmp / "bench_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        added = subprocess.run(
            [STOCKADE, "users", "add", "bench", "--role", "developer", "--ssh-key", f"{key}.pub"],
            env={**env, "STOCKADE_DATA_DIR": str(tmp / "identity")},
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if added.returncode != 0:
            raise RuntimeError(added.stderr)
        known = tmp / "known_hosts"
        port_a, port_b = gw_a.port("SSH gateway"), gw_b.port("SSH gateway")
        asyncio.run(_logins(key, known, [port_a, port_b]))  # warm both gateways and the key cache
        one, fail_one = asyncio.run(_logins(key, known, [port_a]))
        two, fail_two = asyncio.run(_logins(key, known, [port_a, port_b]))
        record(
            f"logins/s through two gateways ({CLIENTS} concurrent OpenSSH clients)",
            value=f"{two:.1f}/s ({fail_two} failed)",
            anchor=f"one gateway {one:.1f}/s ({fail_one} failed)",
            ratio=two / one,
            goal="report (2x: the gateway was the bottleneck)",
        )
        if fail_one or fail_two:
            _print_warnings(tmp)
        times = []
        db = tmp / "identity" / "stockade.db"
        for _ in range(KILLS):
            times.append(_kill_to_ended(gw_a, key, known, db))
            gw_a = Serve("gateway", tmp / "gateway-a", gw_env).launch().ready()
            services[2] = gw_a
        worst = max(times)
        record(
            "kill -9 of a gateway to its sessions ended by the other (heartbeat 1 s, timeout 3 s)",
            value=f"median {statistics.median(times):.2f} s, worst {worst:.2f} s over {KILLS}",
            anchor="goal 5 s",
            ratio=worst / 5.0,
            goal="<= 5 s",
            met=worst <= 5.0,
        )
    finally:
        for service in reversed(services):
            service.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        nats = EmbeddedNats(root / "nats", connect_timeout=30.0)
        url = asyncio.run(nats.start())
        try:
            _run(root, url)
        finally:
            asyncio.run(nats.stop())
