"""Issue 13, acceptance 3: two certificate rotations under load, zero failed calls.

An :class:`RpcServer` (in-process :class:`Authorizer`) serves over mutual TLS from certificates a
:class:`CertificateRenewer` keeps in a kubelet-style directory; a client asks for decisions
continuously through :class:`AuthzClient` on a :class:`ReloadingChannel`. Rotation 1 renews both
sides from the dev CA; rotation 2 moves both sides to OpenBao's PKI engine (``pki/issue/ROLE``,
a real ``bao server -dev``): first both bundles trust the new CA, then the server's certificate
changes, then the client's, then the old CA is pruned. A raw TLS probe reads the serial the
server presents on a fresh handshake. Every decision must come back allowed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao
from cryptography import x509

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import AuthzClient, ReloadingChannel, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import (
    CertificateFiles,
    CertificateRenewer,
    DevCA,
    DevCASource,
    OpenBaoPKISource,
)

__all__ = ["openbao"]


def _vault(bao: OpenBao, method: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.request(
        method, f"{bao.addr}/v1/{path}", json=body, headers={"X-Vault-Token": bao.token}
    )
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


@pytest.fixture
def pki(openbao: OpenBao) -> OpenBaoPKISource:
    mounts = httpx.get(f"{openbao.addr}/v1/sys/mounts", headers={"X-Vault-Token": openbao.token})
    if "pki/" not in mounts.json():
        _vault(
            openbao,
            "POST",
            "sys/mounts/pki",
            {"type": "pki", "config": {"max_lease_ttl": "87600h"}},
        )
        _vault(
            openbao,
            "POST",
            "pki/root/generate/internal",
            {"common_name": "Stockade OpenBao CA", "ttl": "8760h", "key_type": "ec"},
        )
        _vault(
            openbao,
            "POST",
            "pki/roles/stockade",
            {
                "allow_any_name": True,
                "allow_ip_sans": True,
                "server_flag": True,
                "client_flag": True,
                "key_type": "ec",
                "max_ttl": "72h",
            },
        )
    return OpenBaoPKISource(openbao.addr, role="stockade", token=lambda: openbao.token)


@dataclass
class Load:
    client: AuthzClient
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        doc = build_input(
            "ssh.shell",
            Resource(kind="workspace", name="alice", owner="alice"),
            Context(user=Subject(name="alice", roles=("developer",)), source_ip="127.0.0.1"),
        )
        while not self.stop.is_set():
            decision = await self.client.decide_async(doc)
            self.calls += 1
            if not decision.allow:
                self.failures.append("; ".join(decision.reasons))
            await asyncio.sleep(0.002)


@dataclass
class Env:
    server: RpcServer
    server_certs: CertificateRenewer
    client_certs: CertificateRenewer
    server_files: CertificateFiles
    channel: ReloadingChannel
    load: Load


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    source = DevCASource(DevCA(tmp_path / "dev-ca"))
    lifetime = timedelta(hours=6)
    server_certs = CertificateRenewer(
        source, tmp_path / "server", common_name="localhost", lifetime=lifetime
    )
    client_certs = CertificateRenewer(
        source, tmp_path / "client", common_name="gateway", lifetime=lifetime
    )
    await server_certs.ensure()
    await client_certs.ensure()
    server_files = CertificateFiles(
        server_certs.cert_path, server_certs.key_path, server_certs.ca_path
    )
    server = RpcServer(
        identity=identity, authorizer=Authorizer(settings=AuthzSettings()), tls=server_files
    )
    await server.start()
    client_files = CertificateFiles(
        client_certs.cert_path, client_certs.key_path, client_certs.ca_path
    )
    channel = mtls_channel("127.0.0.1", server.port, client_files)
    assert isinstance(channel, ReloadingChannel)
    load = Load(AuthzClient(channel, target="rotation-test", timeout=10))
    try:
        yield Env(server, server_certs, client_certs, server_files, channel, load)
    finally:
        await channel.close(None)
        await server.stop(0)
        await store.close()


def _probe(port: int, client: CertificateRenewer) -> x509.Certificate:
    """The certificate the server presents on a fresh handshake (as a client of its CA bundle)."""
    ctx = ssl.create_default_context(cafile=str(client.ca_path))
    ctx.load_cert_chain(client.cert_path, client.key_path)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def _served(env: Env) -> x509.Certificate:
    return await asyncio.to_thread(_probe, env.server.port, env.client_certs)


async def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 15.0
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_two_rotations_zero_failed_calls(env: Env, pki: OpenBaoPKISource) -> None:
    load = env.load
    runner = asyncio.create_task(load.run())
    try:
        await _until(lambda: _true(load.calls > 20), "the first decisions")
        first = await _served(env)

        # Rotation 1: the dev CA renews both sides.
        await env.server_certs.renew()
        await env.client_certs.renew()

        async def served_changed() -> bool:
            return (await _served(env)).serial_number != first.serial_number

        await _until(served_changed, "the server to present its renewed certificate")
        await _until(lambda: _true(env.channel.rotations >= 1), "the client to reload")
        second = await _served(env)
        calls_after_first = load.calls

        # Rotation 2: OpenBao PKI. Both bundles trust the new CA before anyone uses it.
        probe = await pki.issue("probe", sans=["localhost"], ttl=timedelta(minutes=5))
        env.server_certs.trust(probe.ca)
        env.client_certs.trust(probe.ca)
        await _until(lambda: _true(env.channel.rotations >= 2), "the client to trust the new CA")
        await env.server_certs.renew(pki)

        async def served_by_openbao() -> bool:
            return "OpenBao" in (await _served(env)).issuer.rfc4514_string()

        await _until(served_by_openbao, "the server to present its OpenBao certificate")
        await env.client_certs.renew(pki)
        await _until(lambda: _true(env.channel.rotations >= 3), "the client's OpenBao certificate")
        env.server_certs.prune()
        env.client_certs.prune()
        await _until(lambda: _true(env.channel.rotations >= 4), "the pruned bundle")
        third = await _served(env)
        calls_before_end = load.calls
        await _until(lambda: _true(load.calls > calls_before_end + 50), "decisions after pruning")
    finally:
        load.stop.set()
        await runner

    assert load.failures == []
    assert len({first.serial_number, second.serial_number, third.serial_number}) == 3
    assert "dev CA" in first.issuer.rfc4514_string()
    assert "OpenBao" in third.issuer.rfc4514_string()
    assert calls_after_first > 20
    assert load.calls > calls_before_end + 50
    assert env.server_files.reloads >= 4
    assert env.server_files.error is None
    assert env.server.tls_error is None


async def _true(value: bool) -> bool:
    return value


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _https_probe(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 200")
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_broker_https_rotates_without_restart(tmp_path: Path, pki: OpenBaoPKISource) -> None:
    """The broker's uvicorn serves a renewed certificate on the next handshake, then OpenBao's."""
    from stockade.broker import BrokerServer
    from stockade.tls import IssuedCert

    certs = CertificateRenewer(
        DevCASource(DevCA(tmp_path / "dev-ca")), tmp_path / "broker", common_name="localhost"
    )
    await certs.ensure()
    server = BrokerServer(
        _asgi_ok, tls=IssuedCert(cert=certs.cert_path, key=certs.key_path, ca=certs.ca_path)
    )
    await server.start()
    failures: list[str] = []
    serials: set[int] = set()
    stop = asyncio.Event()

    async def requests() -> None:
        while not stop.is_set():
            try:
                serials.add(await asyncio.to_thread(_https_probe, server.port, certs.ca_path))
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.01)

    runner = asyncio.create_task(requests())
    try:
        await _until(lambda: _true(len(serials) == 1), "the first request")
        await certs.renew()
        await _until(lambda: _true(len(serials) == 2), "the renewed certificate")
        probe = await pki.issue("probe", sans=["localhost"], ttl=timedelta(minutes=5))
        certs.trust(probe.ca)
        await certs.renew(pki)
        await _until(lambda: _true(len(serials) == 3), "the OpenBao certificate")
        # Garbage in the certificate file: the OpenBao certificate keeps serving, flagged.
        certs.cert_path.resolve().write_bytes(b"not a certificate")
        before = len(serials)
        await asyncio.sleep(0.3)
        assert len(serials) == before
        assert server.tls_error is not None
        assert "previous" in server.tls_error
    finally:
        stop.set()
        await runner
        await server.stop()
    assert failures == []
