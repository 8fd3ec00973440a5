"""A real gateway for integration tests: SQLite identity, the default Rego bundle, real NATS.

Failed authentications travel as production sends them: through a FailureBatcher, as
``stockade.auth.failed.batch`` messages; :class:`Events` unpacks each batch into one event per
failure (``failed.batches`` counts the messages).

``ssh_cmd`` builds OpenSSH client command lines that ignore the user's config and known hosts
and run with a clean environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from stockade.authz import Authorizer
from stockade.bus import Bus, FailureBatcher, ReliablePublisher
from stockade.core.settings import AuthzSettings, GatewaySettings, IdentitySettings
from stockade.gateway import Gateway
from stockade.identity import IdentityService, KeyRing, PasswordHasher
from stockade.rpc import AuthzClient, IdentityClient, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA, gateway_uri
from stockade.workspace import UidAllocator, sandbox_netns

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key at ``path`` (and ``path.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        env=CLEAN_ENV,
    )
    return path


def ssh_options(known_hosts: Path) -> list[str]:
    return [
        "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=20",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
    ]  # fmt: skip


@dataclass
class Events:
    """Collects events published on a subject by the gateway (core NATS subscription)."""

    received: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0
    """``stockade.auth.failed.batch`` messages unpacked into ``received``."""

    def add_batch(self, batch: dict[str, Any]) -> None:
        """One event per failure of an AuthFailedBatch, with AuthFailed's field names."""
        self.batches += 1
        columns = ("client_ip", "client_port", "username", "method", "reason")
        for index, at in enumerate(batch["times"]):
            event = {name: batch[name][index] for name in columns}
            self.received.append(
                {**event, "v": batch["v"], "at": at, "gateway_id": batch["gateway_id"]}
            )

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.received if all(e.get(k) == v for k, v in fields.items())]

    async def settle(self, rounds: int = 20) -> None:
        """Give in-flight events a bounded moment to arrive."""
        last = -1
        for _ in range(rounds):
            await asyncio.sleep(0.1)
            if len(self.received) == last:
                return
            last = len(self.received)


@dataclass
class GatewayEnv:
    gateway: Gateway
    identity: IdentityService
    authz: Authorizer
    data_dir: Path
    tmp: Path
    failed: Events
    succeeded: Events
    nats_url: str
    calls: Counter[str] = field(default_factory=Counter)

    @property
    def port(self) -> int:
        return self.gateway.listening[0][1]

    def ssh_cmd(
        self,
        user: str,
        *args: str,
        key: Path | None = None,
        options: Sequence[str] = (),
    ) -> list[str]:
        # the test's own options first: ssh keeps the first value an option is given, so they
        # override these defaults instead of being ignored
        cmd = ["ssh", *options, *ssh_options(self.tmp / "known_hosts"), "-p", str(self.port)]
        cmd += ["-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256"]
        if key is not None:
            cmd += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        cmd += [f"{user}@127.0.0.1", *args]
        return cmd

    async def run(
        self, cmd: Sequence[str], *, stdin: bytes = b"", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env or CLEAN_ENV,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)

    async def add_user(self, name: str, *roles: str, key: bool = True) -> Path | None:
        await self.identity.add_user(name, roles=list(roles))
        if not key:
            return None
        path = keygen(self.tmp / f"id_{name}")
        await self.identity.add_key(name, path.with_suffix(".pub").read_text())
        return path


#: A session command: connects to 127.0.0.1:{port} and prints "reached" if it could; "done".
PORT_PROBE = (
    "python3 -c \"import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])),"
    " 2); print('reached')\" {port} 2>/dev/null; echo done"
)


def one_shot_listener(message: bytes) -> str:
    """A Python program that listens on a free loopback port, prints it, and sends ``message``
    to its first client."""
    return (
        "import socket\n"
        's = socket.create_server(("127.0.0.1", 0))\n'
        "print(s.getsockname()[1], flush=True)\n"
        "c, _ = s.accept()\n"
        f"c.sendall({message!r})\n"
        "c.close()\n"
    )


def workspace_netns(name: str, data_dir: Path) -> str:
    """The sandbox network namespace of workspace ``name`` under ``data_dir`` (its name
    follows the workspace's uid too; -1 while it has none)."""
    uid = UidAllocator(data_dir / "workspace-uids.json").known().get(name, -1)
    return sandbox_netns(name, data_dir, uid=uid)


def remove_workspace_netns(data_dir: Path) -> None:
    """Delete the sandbox network namespaces of every workspace under ``data_dir`` (a test's
    own: their names follow the data dir). A stopped gateway keeps them for its next start,
    so without this each run left its tests' namespaces in /run/netns."""
    for name, uid in UidAllocator(data_dir / "workspace-uids.json").known().items():
        netns = sandbox_netns(name, data_dir, uid=uid)
        if os.path.exists(f"/run/netns/{netns}"):
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)


async def agent_listening(path: Path, *, within: float = 10.0) -> None:
    """Wait until the ssh-agent started on ``path`` accepts connections: its socket file
    appears at bind(), a moment before listen(), and a connection in between is refused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            assert loop.time() < deadline, f"ssh-agent never listened on {path}"
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def eventually(check: Any, *, within: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` (sync or async, truthy when done) until it holds or ``within`` seconds pass;
    returns its last value (a bounded wait for effects that travel as events)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value or loop.time() >= deadline:
            return value
        await asyncio.sleep(interval)


async def ended_sessions(identity: IdentityService, username: str) -> list[Any]:
    """``username``'s sessions once none is live any more (bounded wait)."""

    async def all_ended() -> list[Any]:
        rows = await identity.list_sessions(username=username)
        return rows if rows and not any(row.live for row in rows) else []

    return list(await eventually(all_ended))


def policy_bundle(dest: Path, edits: Mapping[str, str]) -> Path:
    """A copy of the default policy bundle in ``dest`` with each ``old: new`` text edit applied
    (each ``old`` must occur in ``stockade.rego``); the Rego tests are left out."""
    dest.mkdir(parents=True)
    default = Authorizer(settings=AuthzSettings()).bundle_dir
    for source in default.glob("*.rego"):
        if source.name.endswith("_test.rego"):
            continue
        text = source.read_text()
        if source.name == "stockade.rego":
            for old, new in edits.items():
                assert old in text, old
                text = text.replace(old, new)
        (dest / source.name).write_text(text)
    return dest


class Counted:
    """Wraps a client and counts each coroutine method called on it, by name."""

    def __init__(self, inner: Any, calls: Counter[str], prefix: str) -> None:
        self._inner = inner
        self._calls = calls
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(value):
            return value

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[f"{self._prefix}.{name}"] += 1
            return await value(*args, **kwargs)

        return counted


@contextlib.asynccontextmanager
async def gateway_env(
    tmp: Path,
    nats_url: str,
    *,
    bundle_dir: Path | None = None,
    rpc: bool = False,
    extra_backends: Mapping[str, Any] | None = None,
    batch_delay: float | None = 0.005,
    sandbox_network: bool = False,
    session_sockets: Any = None,
    **overrides: Any,
) -> AsyncIterator[GatewayEnv]:
    """A started gateway; ``bundle_dir`` replaces the default policy bundle, ``overrides``
    are GatewaySettings fields. With ``rpc`` the gateway reaches identity and authz through
    their gRPC clients over mutual TLS (as ``stockade serve gateway`` does), and ``env.calls``
    counts every call it makes on them. Failures are batched for ``batch_delay`` seconds (None:
    no batcher, one ``stockade.auth.failed`` each). ``session_sockets`` is the ``local``
    backend's per-session broker socket opener (a broker's ``open_session_socket``)."""
    data_dir = tmp / "data"
    data_dir.mkdir()
    store = Store(f"sqlite:///{data_dir / 'stockade.db'}")
    await store.migrate()
    authz = Authorizer(settings=AuthzSettings(), bundle_dir=bundle_dir)
    bus = await Bus.connect(nats_url, name="gateway-test")
    await bus.ensure_streams()
    identity = IdentityService(
        store=store,
        settings=IdentitySettings(),
        keyring=KeyRing(data_dir / "keys"),
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        publisher=bus,
    )
    listener = await nats.connect(nats_url)
    failed, succeeded = Events(), Events()

    async def on_failed(msg: Any) -> None:
        if msg.subject == "stockade.auth.failed.batch":
            failed.add_batch(json.loads(msg.data))
        else:
            failed.received.append(json.loads(msg.data))

    async def on_succeeded(msg: Any) -> None:
        succeeded.received.append(json.loads(msg.data))

    await listener.subscribe("stockade.auth.failed", cb=on_failed)
    await listener.subscribe("stockade.auth.failed.batch", cb=on_failed)
    await listener.subscribe("stockade.auth.succeeded", cb=on_succeeded)
    defaults: dict[str, Any] = {"port": 0, "max_connections_per_source": 1000}
    settings = GatewaySettings(**{**defaults, "gateway_id": "gw-test", **overrides})
    calls: Counter[str] = Counter()
    served: list[Any] = []
    identity_api: Any = identity
    authz_api: Any = authz
    if rpc:
        ca = DevCA(data_dir / "tls")
        api = ca.issue("api")
        # the gateway's certificate names its gateway id: identity refuses any other
        caller = ca.issue("gateway", sans=["localhost", gateway_uri(settings.gateway_id or "")])
        server = RpcServer(
            identity=identity, authorizer=authz,
            tls=CertificateFiles(api.cert, api.key, api.ca),
        )  # fmt: skip
        await server.start()
        channel = mtls_channel(
            "127.0.0.1", server.port, CertificateFiles(caller.cert, caller.key, caller.ca)
        )
        served += [server, channel]
        target = f"127.0.0.1:{server.port}"
        identity_api = Counted(IdentityClient(channel, target=target), calls, "identity")
        authz_api = Counted(AuthzClient(channel, target=target), calls, "authz")
    gateway = Gateway(
        settings=settings,
        identity=identity_api,
        authz=authz_api,
        publisher=bus,
        events=bus,
        data_dir=data_dir,
        extra_backends=extra_backends,
        failures=None if batch_delay is None else FailureBatcher(bus, max_delay=batch_delay),
        sandbox_network=sandbox_network,
        session_sockets=session_sockets,
        session_ends=ReliablePublisher(bus),  # as the composition root wires it
    )
    await gateway.start()
    try:
        yield GatewayEnv(
            gateway, identity, authz, data_dir, tmp, failed, succeeded, nats_url, calls
        )
    finally:
        await gateway.stop(grace=0)
        remove_workspace_netns(data_dir)
        if served:
            await served[1].close()
            await served[0].stop()
        await listener.close()
        await bus.close()
        await store.close()
