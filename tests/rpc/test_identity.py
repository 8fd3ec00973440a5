"""Who may ask identity the gateway's questions over mutual TLS (issue 9's attack session).

Every service certificate comes from the same CA. The gateway's calls mint sessions and tokens
(``OpenSession``), end sessions (``EndStaleSessions``, ``EndSession``) and answer credential
checks (``AuthenticateKey``/``AuthenticatePassword``/``VerifyTotp``): a certificate of another
service (a shield, a node agent) must not be able to make them. Administration stays an admin's.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.authz import Authorizer
from stockade.core import InvalidInput, PermissionDenied
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing, PasswordHasher, SessionRequest
from stockade.rpc import IdentityClient, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA


@dataclass
class Served:
    server: RpcServer
    identity: IdentityService
    ca: DevCA

    def client(self, name: str) -> CertificateFiles:
        issued = self.ca.issue(name)
        return CertificateFiles(issued.cert, issued.key, issued.ca)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store,
        settings=IdentitySettings(),
        keyring=KeyRing(tmp_path / "keys"),
        password_hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),
    )
    ca = DevCA(tmp_path / "tls")
    issued = ca.issue("api")
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=CertificateFiles(issued.cert, issued.key, issued.ca),
        admin_socket=tmp_path / "run" / "admin.sock",
    )
    await server.start()
    try:
        yield Served(server, identity, ca)
    finally:
        await server.stop(0)
        await store.close()


def _pubkey(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


def _request() -> SessionRequest:
    return SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="gw", boot_id="b1")


async def _admin_principal(served: Served, tmp_path: Path) -> object:
    await served.identity.add_user("root-ish", roles=["admin"], ssh_keys=[_pubkey(tmp_path, "k")])
    fingerprint = (await served.identity.get_user("root-ish")).keys[0].fingerprint
    principal = await served.identity.authenticate_key("root-ish", fingerprint)
    assert not hasattr(principal, "reason"), principal
    return principal


async def test_another_services_certificate_cannot_mint_a_session(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a non-gateway service certificate (``shield``) calls OpenSession with an admin's
    principal (public facts: name, key fingerprint) and gets a token carrying role admin."""
    principal = await _admin_principal(served, tmp_path)
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.open_session(principal, _request())  # type: ignore[arg-type]
    assert await served.identity.list_sessions(active_only=True) == []


async def test_another_services_certificate_cannot_end_a_gateways_sessions(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: end every live session of gateway ``gw`` (their tokens die): claim a new boot."""
    principal = await _admin_principal(served, tmp_path)
    opened = await served.identity.open_session(principal, _request())  # type: ignore[arg-type]
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.end_stale_sessions("gw", "another-boot")
    assert await served.identity.is_session_live(opened.session_id)


async def test_another_services_certificate_is_no_password_oracle(
    served: Served, tmp_path: Path
) -> None:
    await served.identity.add_user("pam", password="correct horse")
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.authenticate_password("pam", "correct horse")


async def test_the_gateway_certificate_opens_sessions_with_the_users_own_roles(
    served: Served, tmp_path: Path
) -> None:
    """A gateway may open sessions; a principal claiming roles the user lacks is refused, the
    token's roles are the user's row's; SetRoles and KillSession stay an admin's."""
    await served.identity.add_user("gil", ssh_keys=[_pubkey(tmp_path, "g")])
    fingerprint = (await served.identity.get_user("gil")).keys[0].fingerprint
    principal = await served.identity.authenticate_key("gil", fingerprint)
    assert not hasattr(principal, "reason")
    inflated = dataclasses.replace(principal, roles=("admin",))  # type: ignore[type-var]
    async with mtls_channel("127.0.0.1", served.server.port, served.client("gateway")) as channel:
        client = IdentityClient(channel, target="gateway")
        with pytest.raises(InvalidInput):  # identity checks the roles against the user's
            await client.open_session(inflated, _request())  # type: ignore[arg-type]
        opened = await client.open_session(principal, _request())  # type: ignore[arg-type]
        claims = await client.verify_token(opened.token)
        assert claims.roles == ()
        for attempt in (
            client.set_roles("gil", ["admin"]),
            client.kill_session(opened.session_id, by="gateway"),
        ):
            with pytest.raises(PermissionDenied):
                await attempt
    assert (await served.identity.get_user("gil")).roles == ()
    assert await served.identity.is_session_live(opened.session_id)


async def test_another_services_certificate_cannot_declare_gateways_dead(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a heartbeat ends the sessions of silent gateways; only a gateway may send one."""
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.heartbeat("gw", "boot", stale_after=1)


async def test_a_gateway_heartbeat_round_trips(served: Served, tmp_path: Path) -> None:
    principal = await _admin_principal(served, tmp_path)
    await served.identity.heartbeat("gw", "b1", stale_after=3)
    opened = await served.identity.open_session(principal, _request())  # type: ignore[arg-type]
    async with mtls_channel("127.0.0.1", served.server.port, served.client("gateway")) as channel:
        client = IdentityClient(channel, target="gateway")
        beat = await client.heartbeat("gw2", "b2", stale_after=3)
        assert beat.alive
        assert beat.ended == ()
        with pytest.raises(InvalidInput):
            await client.heartbeat("gw2", "b2", stale_after=0.001)
    assert await served.identity.is_session_live(opened.session_id)
