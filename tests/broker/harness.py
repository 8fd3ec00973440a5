"""A real broker for tests: OpenBao dev server, SQLite identity, the default Rego bundle, NATS.

``start_openbao`` runs ``bao server -dev`` on a free loopback port; :func:`broker_env` wires a
:class:`~stockade.broker.BrokerServer` (TLS from a dev CA) to a real ``IdentityService``,
``Authorizer`` and ``Bus`` and collects the audit events it publishes. Helpers run as the real
console scripts, with the environment a session gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from pydantic import SecretStr

from stockade.authz import Authorizer
from stockade.broker import BrokerServer
from stockade.bus import Bus
from stockade.core.settings import (
    AuthzSettings,
    BrokerSettings,
    IdentitySettings,
    Settings,
    VaultSettings,
)
from stockade.identity import IdentityService, KeyRing, PasswordHasher
from stockade.store import Store
from stockade.tls import DevCA

BIN = Path(sys.executable).parent
BAO = BIN / "bao"
#: PATH inside test sessions: the venv's bin (the helpers, kubectl) and the system's.
SESSION_PATH = f"{BIN}:/usr/local/bin:/usr/bin:/bin"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class OpenBao:
    """A running ``bao server -dev``: its address and root token."""

    addr: str
    token: str

    def kv_put(self, path: str, data: dict[str, str]) -> None:
        """Write ``data`` at KV v2 ``secret/data/<path>``."""
        self._call("POST", f"/v1/secret/data/{path}", {"data": data})

    def kv_delete(self, path: str) -> None:
        self._call("DELETE", f"/v1/secret/metadata/{path}", None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - loopback http only
            self.addr + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Vault-Token": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            raw = response.read()
        return json.loads(raw) if raw else None


@contextlib.contextmanager
def start_openbao(tmp: Path) -> Iterator[OpenBao]:
    """``bao server -dev`` on a free loopback port, stopped afterwards (bounded waits)."""
    port = _free_port()
    token = "root-" + secrets.token_hex(8)
    log = (tmp / "bao.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BAO),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={token}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), "BAO_DISABLE_MLOCK": "true"},
    )
    bao = OpenBao(addr=f"http://127.0.0.1:{port}", token=token)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{bao.addr}/v1/sys/health", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"bao server -dev did not start: {(tmp / 'bao.log').read_text()}"
                )
            time.sleep(0.1)
        yield bao
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


class MovableClock:
    """Real time plus an offset the test can move (expired-token cases)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Events:
    """Audit events received on ``stockade.credential.request`` (core NATS subscription)."""

    received: list[dict[str, Any]] = field(default_factory=list)

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.received if all(e.get(k) == v for k, v in fields.items())]

    async def wait_for(
        self, count: int = 1, rounds: int = 50, **fields: Any
    ) -> list[dict[str, Any]]:
        """Events matching ``fields`` once at least ``count`` arrived (bounded wait)."""
        for _ in range(rounds):
            found = self.matching(**fields)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        return self.matching(**fields)


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass
class BrokerEnv:
    server: BrokerServer
    identity: IdentityService
    keyring: KeyRing
    clock: MovableClock
    bao: OpenBao | None
    ca: Path
    tmp: Path
    events: Events
    bus: Bus
    _sessions: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    def tls(self) -> ssl.SSLContext:
        """A client context trusting the broker's dev CA."""
        return ssl.create_default_context(cafile=str(self.ca))

    async def add_user(self, name: str) -> None:
        await self.identity.add_user(name)

    async def session_token(
        self, user: str, *, ttl: int = 300, audience: str | None = None
    ) -> tuple[str, str]:
        """A live session of ``user`` and a token bound to it: ``(session_id, token)``."""
        self._sessions += 1
        sid = f"s-{secrets.token_hex(6)}"
        await self.identity.start_session(
            sid, username=user, workspace=user, client_ip="127.0.0.1", client_port=40000
        )
        token = await self.identity.issue_token(user, session_id=sid, ttl=ttl, audience=audience)
        return sid, token

    def session_env(self, token: str, home: Path, **extra: str) -> dict[str, str]:
        """Exactly what a gateway session gets, plus ``extra``."""
        env = {
            "PATH": SESSION_PATH,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "STOCKADE_TOKEN": token,
            "STOCKADE_API": self.url,
        }
        env.update(extra)
        return env

    async def run(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        stdin: bytes = b"",
        cwd: Path | None = None,
        limit: float = 60,
    ) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return Result(proc.returncode, out, err)


def broker_settings(bao: OpenBao | None, **broker: Any) -> Settings:
    vault = VaultSettings(addr=bao.addr, token=SecretStr(bao.token)) if bao else VaultSettings()
    return Settings(vault=vault, broker=BrokerSettings(port=0, **broker))


@contextlib.asynccontextmanager
async def broker_env(
    tmp: Path, nats_url: str, bao: OpenBao | None, **broker: Any
) -> AsyncIterator[BrokerEnv]:
    """A broker on a free loopback port with real identity, authz, bus and (optional) OpenBao."""
    store = Store(f"sqlite:///{tmp / 'stockade.db'}")
    await store.migrate()
    clock = MovableClock()
    keyring = KeyRing(tmp / "keys", clock=clock)
    identity = IdentityService(
        store=store,
        settings=IdentitySettings(),
        keyring=keyring,
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    authz = Authorizer(settings=AuthzSettings(decision_log=False))
    bus = await Bus.connect(nats_url, name="broker-test")
    await bus.ensure_streams()
    events = Events()
    nc = await nats.connect(nats_url)

    async def on_event(msg: Any) -> None:
        events.received.append(json.loads(msg.data))

    sub = await nc.subscribe("stockade.credential.request", cb=on_event)
    ca = DevCA(tmp / "ca")
    settings = broker_settings(bao, **broker)
    server = BrokerServer.from_settings(
        settings, identity=identity, authz=authz, publisher=bus, ca=ca
    )
    await server.start()
    try:
        yield BrokerEnv(
            server=server,
            identity=identity,
            keyring=keyring,
            clock=clock,
            bao=bao,
            ca=ca.ca_cert_path,
            tmp=tmp,
            events=events,
            bus=bus,
        )
    finally:
        await server.stop()
        await sub.unsubscribe()
        await nc.drain()
        await bus.close()
        await store.close()
