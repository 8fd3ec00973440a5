"""Credential broker: ``git credential fill`` through git-credential-stockade vs git's own
``credential-store`` (goal <= 3x), and broker requests/s and p99 with the Vault (OpenBao) backend
vs the same KV reads sent straight to OpenBao by the same load generator at the same concurrency
(goals: >= 50% of its throughput, p99 <= 2x its p99).

Everything real and on loopback: ``bao server -dev``, the embedded nats-server, a SQLite identity
store, the shipped Rego bundle, the broker over TLS and a per-session unix socket. The broker
runs in its own thread and event loop; ``git`` runs as a subprocess per fill; the load generator
is another process. Loops are bounded by count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from bench._report import record
from stockade.authz import Authorizer
from stockade.broker import BrokerServer, workspace_config
from stockade.bus import Bus, EmbeddedNats
from stockade.core.settings import (
    AuthzSettings,
    BrokerSettings,
    IdentitySettings,
    Settings,
    VaultSettings,
)
from stockade.helpers import static_helper
from stockade.identity import IdentityService, KeyRing, PasswordHasher
from stockade.store import Store
from stockade.tls import DevCA

BIN = Path(sys.executable).parent
FILLS = 40
FILL_SECONDS = 20.0
REQUESTS = 2000
LOAD_SECONDS = 15.0
CONCURRENCY = 16
HOST = "git.example.com"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def openbao(tmp: Path) -> Iterator[tuple[str, str, int]]:
    port, token = _free_port(), "root-" + secrets.token_hex(8)
    with (tmp / "bao.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "bao"), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
             f"-dev-root-token-id={token}"],
            stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), "BAO_DISABLE_MLOCK": "true"},
        )  # fmt: skip
        addr = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1):  # noqa: S310
                        break
                except OSError:
                    time.sleep(0.1)
            yield addr, token, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def kv_put(addr: str, token: str, path: str, data: dict[str, str]) -> None:
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{addr}/v1/secret/data/{path}",
        data=json.dumps({"data": data}).encode(),
        headers={"X-Vault-Token": token},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


@dataclass
class Running:
    url: str
    ca: Path
    token: str
    socket: Path


@contextlib.asynccontextmanager
async def broker(tmp: Path, addr: str, vault_token: str) -> AsyncIterator[Running]:
    async with EmbeddedNats(tmp) as nats_url:
        store = Store(f"sqlite:///{tmp / 'stockade.db'}")
        await store.migrate()
        identity = IdentityService(
            store=store,
            settings=IdentitySettings(),
            keyring=KeyRing(tmp / "keys"),
            password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        )
        bus = await Bus.connect(nats_url, name="bench-broker")
        await bus.ensure_streams()
        settings = Settings(
            vault=VaultSettings(addr=addr, token=SecretStr(vault_token)),
            broker=BrokerSettings(port=0),
        )
        server = BrokerServer.from_settings(
            settings,
            identity=identity,
            authz=Authorizer(settings=AuthzSettings(decision_log=False)),
            publisher=bus,
            ca=DevCA(tmp / "ca"),
        )
        await server.start()
        try:
            await identity.add_user("bench")
            await identity.start_session(
                "s-bench", username="bench", workspace="bench", client_ip="127.0.0.1", client_port=1
            )
            token = await identity.issue_token("bench", session_id="s-bench", ttl=3600)
            handle = await server.open_session_socket(
                "s-bench", token, tmp / "session.sock", os.getuid()
            )
            yield Running(url=server.url, ca=server.ca_path, token=token, socket=handle.path)
        finally:
            await server.stop()
            await bus.close()
            await store.close()


def in_thread(
    tmp: Path, addr: str, vault_token: str
) -> tuple[Running, threading.Event, threading.Thread]:
    """Run the broker in its own event loop; returns once it serves."""
    ready: Future[Running] = Future()
    stop = threading.Event()
    loop = asyncio.new_event_loop()
    stopped = asyncio.Event()

    async def main() -> None:
        async with broker(tmp, addr, vault_token) as running:
            ready.set_result(running)
            await stopped.wait()

    def run() -> None:
        loop.run_until_complete(main())
        loop.close()

    def on_stop() -> None:
        stop.wait()
        loop.call_soon_threadsafe(stopped.set)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    threading.Thread(target=on_stop, daemon=True).start()
    return ready.result(timeout=60), stop, thread


def time_fills(env: dict[str, str], cwd: Path) -> list[float]:
    """Wall times of ``git credential fill`` (bounded by FILLS and FILL_SECONDS)."""
    times: list[float] = []
    deadline = time.monotonic() + FILL_SECONDS
    stdin = f"protocol=https\nhost={HOST}\n\n".encode()
    for _ in range(FILLS):
        started = time.perf_counter()
        out = subprocess.run(
            ["git", "credential", "fill"], input=stdin, env=env, cwd=cwd,
            capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        times.append(time.perf_counter() - started)
        if b"password=" not in out:
            raise RuntimeError(f"git credential fill returned no password: {out!r}")
        if time.monotonic() > deadline:
            break
    return times


async def load(mode: str, url: str, ca: str, token: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms) with CONCURRENCY clients: ``broker`` POSTs
    /v1/credentials/git over HTTPS; ``direct`` GETs the same KV secret from OpenBao."""
    latencies: list[float] = []
    errors = 0
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else False
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    deadline = time.monotonic() + LOAD_SECONDS
    remaining = REQUESTS
    async with httpx.AsyncClient(base_url=url, verify=verify, limits=limits) as client:
        if mode == "broker":
            headers = {"Authorization": f"Bearer {token}"}
            body = {"protocol": "https", "host": HOST}

            async def call() -> httpx.Response:
                return await client.post("/v1/credentials/git", json=body, headers=headers)
        else:
            vault_headers = {"X-Vault-Token": token}
            path = f"/v1/secret/data/stockade/bench/git/{HOST}"

            async def call() -> httpx.Response:
                return await client.get(path, headers=vault_headers)

        await call()  # warm up

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                started = time.perf_counter()
                response = await call()
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "count": len(latencies),
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
    }


def load_in_child(mode: str, url: str, ca: str, token: str) -> dict[str, float]:
    """Run :func:`load` in a child process (its own GIL); the token travels in the environment."""
    result = subprocess.run(
        [sys.executable, __file__, "load", mode, url, ca],
        env={**os.environ, "STOCKADE_TOKEN": token},
        capture_output=True, check=True, timeout=LOAD_SECONDS + 60,
    )  # fmt: skip
    doc: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return doc


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as name, openbao(Path(name)) as bao:
        tmp = Path(name)
        addr, vault_token, bao_pid = bao
        password = secrets.token_urlsafe(24)
        kv_put(
            addr, vault_token, f"stockade/bench/git/{HOST}", {"username": "u", "password": password}
        )
        running, stop, thread = in_thread(tmp, addr, vault_token)
        try:
            base = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "GIT_TERMINAL_PROMPT": "0"}
            store_home = tmp / "store-home"
            store_home.mkdir()
            (store_home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
            (store_home / ".git-credentials").write_text(f"https://u:{password}@{HOST}\n")
            os.chmod(store_home / ".git-credentials", 0o600)
            stockade_home = tmp / "stockade-home"
            stockade_home.mkdir()
            workspace_config(stockade_home, running.url, running.ca)
            store_env = {**base, "HOME": str(store_home)}
            python_env = {
                **base,
                "HOME": str(stockade_home),
                "STOCKADE_TOKEN": running.token,
                "STOCKADE_API": running.url,
            }
            static_home = tmp / "static-home"
            static_home.mkdir()
            binary = static_helper()
            if binary is None:
                raise RuntimeError("the static helper is not built: run make helpers")
            (static_home / ".gitconfig").write_text(f"[credential]\n\thelper = {binary} git\n")
            static_env = {
                **base,
                "HOME": str(static_home),
                "STOCKADE_CREDENTIAL_SOCKET": str(running.socket),
            }
            store_times: list[float] = []
            static_times: list[float] = []
            python_times: list[float] = []
            for _ in range(2):  # interleaved rounds: all see the same machine load
                store_times += time_fills(store_env, store_home)
                static_times += time_fills(static_env, static_home)
                python_times += time_fills(python_env, stockade_home)
            anchor = statistics.median(store_times) * 1000
            for label, times in (
                ("static helper, per-session unix socket", static_times),
                ("Python fallback over TLS", python_times),
            ):
                subject = statistics.median(times) * 1000
                record(
                    f"git credential fill, {label}",
                    value=f"{subject:.1f} ms median",
                    anchor=f"credential-store {anchor:.1f} ms",
                    ratio=subject / anchor,
                    goal="<= 3x",
                    met=subject / anchor <= 3,
                )
            bao_cpu = _cpu_seconds(bao_pid)
            direct = load_in_child("direct", addr, "", vault_token)
            bao_direct_cpu = _cpu_seconds(bao_pid) - bao_cpu
            ours, bao_cpu = time.process_time(), _cpu_seconds(bao_pid)
            stats = load_in_child("broker", running.url, str(running.ca), running.token)
            ours, bao_cpu = time.process_time() - ours, _cpu_seconds(bao_pid) - bao_cpu
            direct2 = load_in_child("direct", addr, "", vault_token)  # before and after: fair
            direct_rps = (direct["rps"] + direct2["rps"]) / 2
            direct_p99 = (direct["p99"] + direct2["p99"]) / 2
            if stats["errors"] or direct["errors"] or direct2["errors"]:
                raise RuntimeError(f"load errors: broker {stats}, direct {direct} / {direct2}")
            record(
                f"broker POST /v1/credentials/git, OpenBao, {CONCURRENCY} clients (throughput)",
                value=f"{stats['rps']:.0f} req/s (p50 {stats['p50']:.1f} ms)",
                anchor=f"OpenBao KV read direct {direct_rps:.0f} req/s",
                ratio=stats["rps"] / direct_rps,
                goal=">= 0.5x",
                met=stats["rps"] / direct_rps >= 0.5,
            )
            requests = stats["count"]
            record(
                "broker CPU per credential request (load-independent)",
                value=f"broker {ours / requests * 1e6:.0f} us + OpenBao "
                f"{bao_cpu / requests * 1e6:.0f} us",
                anchor=f"OpenBao alone {bao_direct_cpu / direct['count'] * 1e6:.0f} us per read",
                ratio=(ours + bao_cpu) / requests / (bao_direct_cpu / direct["count"]),
            )
            record(
                f"broker POST /v1/credentials/git, OpenBao, {CONCURRENCY} clients (p99)",
                value=f"{stats['p99']:.1f} ms",
                anchor=f"OpenBao KV read direct p99 {direct_p99:.1f} ms",
                ratio=stats["p99"] / direct_p99,
                goal="<= 2x",
                met=stats["p99"] / direct_p99 <= 2,
            )
        finally:
            stop.set()
            thread.join(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        token = os.environ["STOCKADE_TOKEN"]
        print(json.dumps(asyncio.run(load(sys.argv[2], sys.argv[3], sys.argv[4], token))))
    else:
        main()
