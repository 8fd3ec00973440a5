"""``stockade serve`` with ``tls.source = "openbao-pki"`` (issue 13, point 4; acceptance 3's
OpenBao half, through a real process).

``stockade serve authz`` gets its certificate from a real ``bao server -dev``'s PKI engine
(``pki/issue/<role>``) and renews it by itself at two thirds of its lifetime (here a 15 s
lifetime, so the rotation comes within the test). A client with its own OpenBao certificate asks
for decisions continuously over mutual TLS meanwhile: zero failed calls, and the serial the
server presents on a fresh handshake changes. The Vault token reaches the process in its
environment only: never in its argv, its output or its log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker.harness import OpenBao, start_openbao
from cryptography import x509

from integration.test_scale_processes import Service
from stockade.authz import Context, Resource, Subject, build_input
from stockade.rpc import AuthzClient, mtls_channel
from stockade.tls import (
    CertificateFiles,
    CertificateRenewer,
    OpenBaoPKISource,
    gateway_ids,
    gateway_uri,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROLE = "stockade-serve"
LIFETIME = timedelta(seconds=15)


def _vault(bao: OpenBao, method: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.request(
        method, f"{bao.addr}/v1/{path}", json=body, headers={"X-Vault-Token": bao.token}
    )
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    """A ``bao server -dev`` with the PKI engine at ``pki/`` and a role for service
    certificates (URI SANs allowed: a gateway's id; not backdated, so a short lifetime is
    what the renewer sees)."""
    (tmp_path / "openbao").mkdir()
    with start_openbao(tmp_path / "openbao") as server:
        _vault(
            server, "POST", "sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "8760h"}}
        )
        _vault(
            server, "POST", "pki/root/generate/internal",
            {"common_name": "Stockade OpenBao CA", "ttl": "8760h", "key_type": "ec"},
        )  # fmt: skip
        _vault(
            server, "POST", f"pki/roles/{ROLE}",
            {
                "allow_any_name": True, "allow_ip_sans": True,
                "allowed_uri_sans": ["spiffe://stockade/*"], "server_flag": True,
                "client_flag": True, "key_type": "ec", "max_ttl": "72h",
                "not_before_duration": "1s",
            },
        )  # fmt: skip
        yield server


def _served(port: int, client: CertificateRenewer) -> x509.Certificate:
    """The certificate the server presents on a fresh handshake."""
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


async def test_serve_renews_its_openbao_certificate_with_zero_failed_calls(
    bao: OpenBao, tmp_path: Path, nats_url: str
) -> None:
    source = OpenBaoPKISource(bao.addr, role=ROLE, token=lambda: bao.token)
    client_certs = CertificateRenewer(
        source, tmp_path / "client", common_name="gateway", lifetime=timedelta(hours=1)
    )
    await client_certs.ensure()
    # a gateway's certificate from OpenBao names its gateway id (uri_sans), as identity needs
    gateway = await source.issue(
        "gateway", sans=["localhost", gateway_uri("gw-a")], ttl=timedelta(minutes=5)
    )
    assert gateway_ids(gateway.cert) == ["gw-a"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKADE_", "VAULT_"))}
    env.update(
        STOCKADE_BUS__URL=nats_url,
        STOCKADE_API__PORT="0",
        STOCKADE_AUTHZ__DECISION_LOG="false",
        STOCKADE_LOG__JSON_OUTPUT="true",
        STOCKADE_TLS__SOURCE="openbao-pki",
        STOCKADE_TLS__PKI_ROLE=ROLE,
        STOCKADE_TLS__LIFETIME_HOURS=str(LIFETIME.total_seconds() / 3600),
        VAULT_ADDR=bao.addr,
        VAULT_TOKEN=bao.token,
    )
    authz = Service("authz", tmp_path / "authz", env).launch()
    failures: list[str] = []
    calls = 0
    try:
        authz.wait_ready()
        assert authz.proc is not None
        argv = await asyncio.to_thread(Path(f"/proc/{authz.proc.pid}/cmdline").read_bytes)
        assert bao.token.encode() not in argv
        port = authz.port("internal API")
        first = await asyncio.to_thread(_served, port, client_certs)
        assert "OpenBao" in first.issuer.rfc4514_string()
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime <= LIFETIME + timedelta(seconds=2)  # what serve asked for

        files = CertificateFiles(
            client_certs.cert_path, client_certs.key_path, client_certs.ca_path
        )
        doc = build_input(
            "ssh.shell",
            Resource(kind="workspace", name="alice", owner="alice"),
            Context(user=Subject(name="alice", roles=("developer",)), source_ip="127.0.0.1"),
        )
        async with mtls_channel("127.0.0.1", port, files) as channel:
            client = AuthzClient(channel, target="authz", timeout=10, max_batch=1)
            deadline = time.monotonic() + 60  # renewal due after 10 s of the 15
            serials = {first.serial_number}
            after_rotation = 0
            while after_rotation < 50:
                assert time.monotonic() < deadline, f"no rotation seen; serials {serials}"
                try:
                    decision = await client.decide_async(doc)
                except Exception as exc:  # a failed call is what this test counts
                    failures.append(repr(exc))
                else:
                    if not decision.allow:
                        failures.append("; ".join(decision.reasons))
                calls += 1
                if calls % 25 == 0:
                    served = await asyncio.to_thread(_served, port, client_certs)
                    serials.add(served.serial_number)
                if len(serials) > 1:
                    after_rotation += 1
                await asyncio.sleep(0.01)
        code = authz.stop(signal.SIGTERM)
    finally:
        authz.stop(signal.SIGKILL)
    assert failures == []
    assert len(serials) >= 2, serials  # the served certificate's serial changed
    assert code == 0
    log = (tmp_path / "authz.log").read_text()
    assert "tls.renewed" in log
    assert bao.token not in log
    assert bao.token not in "".join(authz.banner)


def test_a_restart_over_a_broken_key_on_disk_issues_again(
    bao: OpenBao, tmp_path: Path, nats_url: str
) -> None:
    """A key on disk that no longer matches its certificate (a disk error, a hand edit, a
    renewer of an older version that wrote whatever OpenBao answered): the restart issues a
    new pair and serves it, instead of dying on a traceback."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKADE_", "VAULT_"))}
    env.update(
        STOCKADE_BUS__URL=nats_url, STOCKADE_API__PORT="0", STOCKADE_TLS__SOURCE="openbao-pki",
        STOCKADE_TLS__PKI_ROLE=ROLE, VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token,
    )  # fmt: skip
    authz = Service("authz", tmp_path / "authz", env).launch()
    try:
        authz.wait_ready()
        assert authz.stop(signal.SIGTERM) == 0
    finally:
        authz.stop(signal.SIGKILL)
    key = tmp_path / "authz" / "tls" / "openbao" / "tls.key"
    first = CertificateRenewer(
        OpenBaoPKISource(bao.addr, role=ROLE, token=lambda: bao.token),
        key.parent,
        common_name="authz",
    ).current()
    assert first is not None
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key.resolve().write_bytes(other)
    again = Service("authz", tmp_path / "authz", env).launch()
    try:
        again.wait_ready()
        files = CertificateFiles(key.parent / "tls.crt", key, key.parent / "ca.crt")
        assert files.serial != first.serial_number
        assert again.stop(signal.SIGTERM) == 0
    finally:
        again.stop(signal.SIGKILL)
