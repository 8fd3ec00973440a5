"""identity and authz over real gRPC: mutual TLS, the admin socket, errors mapped both ways."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core import (
    AlreadyExists,
    BackendError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TokenRejected,
)
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing, PasswordHasher
from stockade.rpc import AuthzClient, IdentityClient, RpcServer, admin_channel, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA, gateway_uri


@dataclass
class Served:
    server: RpcServer
    tls: CertificateFiles
    identity: IdentityService
    socket: Path
    ca: DevCA

    def client_tls(self, name: str, *gateway_ids: str) -> CertificateFiles:
        """Client material for a caller whose certificate names it ``name`` (and, for a
        gateway, its gateway ids)."""
        uris = [gateway_uri(g) for g in gateway_ids]
        issued = self.ca.issue(name, sans=["localhost", *uris], force=bool(uris))
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
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=tls,
        admin_socket=tmp_path / "run" / "admin.sock",
    )
    await server.start()
    try:
        yield Served(server, tls, identity, tmp_path / "run" / "admin.sock", ca)
    finally:
        await server.stop(0)
        await store.close()


def _pubkey(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


async def test_identity_over_mtls_matches_in_process(served: Served, tmp_path: Path) -> None:
    line = _pubkey(tmp_path, "alice")
    admin = served.client_tls("admin")
    async with mtls_channel("127.0.0.1", served.server.port, admin) as channel:
        client = IdentityClient(channel, target="test")
        added = await client.add_user("alice", roles=["developer"], ssh_keys=[line])
        assert added == await served.identity.get_user("alice")
        fingerprint = added.keys[0].fingerprint
        found = await client.lookup_key("alice", fingerprint)
        assert found is not None
        assert found.name == "alice"
        assert await client.lookup_key("bob", fingerprint) is None
        assert await client.key_owner(fingerprint) == "alice"
        assert await client.key_owner("SHA256:none") is None

        session = await client.start_session(
            "s1", username="alice", workspace="alice", client_ip="127.0.0.1", client_port=5000
        )
        assert session.live
        token = await client.issue_token("alice", session_id="s1", ttl="5m")
        claims = await client.verify_token(token)
        assert (claims.sub, claims.sid, claims.roles) == ("alice", "s1", ("developer",))
        ended = await client.end_session("s1", exit_status=0, bytes_in=3, bytes_out=4)
        assert not ended.live
        assert ended.exit_status == 0
        with pytest.raises(TokenRejected) as rejected:
            await client.verify_token(token)
        assert rejected.value.reason == "session_ended"


async def test_service_certificates_cannot_manage_identity(served: Served, tmp_path: Path) -> None:
    await served.identity.add_user("alice", ssh_keys=[_pubkey(tmp_path, "alice")])
    fingerprint = (await served.identity.get_user("alice")).keys[0].fingerprint
    gateway = served.client_tls("gateway", "gw-a")
    async with mtls_channel("127.0.0.1", served.server.port, gateway) as channel:
        client = IdentityClient(channel, target="gateway")
        await client.start_session(
            "s9", username="alice", workspace="alice", client_ip="127.0.0.1", client_port=1
        )
        assert await client.issue_token("alice", session_id="s9")  # a session token is fine
        for attempt in (
            client.add_user("mallory"),
            client.add_key("alice", _pubkey(tmp_path, "extra")),
            client.set_disabled("alice", True),
            client.issue_token("alice"),  # a free-standing token is an admin's
            client.lookup_key("alice", fingerprint),  # lookups are the CLI's
            client.key_owner(fingerprint),
        ):
            with pytest.raises(PermissionDenied) as denied:
                await attempt
            assert "admin certificate" in str(denied.value)
    assert [u.name for u in await served.identity.list_users()] == ["alice"]


async def test_errors_keep_their_class_and_fields(served: Served, tmp_path: Path) -> None:
    async with admin_channel(served.socket) as channel:
        client = IdentityClient(channel, target="admin")
        with pytest.raises(NotFound) as missing:
            await client.get_user("nobody")
        assert (missing.value.kind, missing.value.name) == ("user", "nobody")
        await client.add_user("carol")
        with pytest.raises(AlreadyExists):
            await client.add_user("carol")
        with pytest.raises(InvalidInput) as bad:
            await client.add_key("carol", "ssh-ed25519 not-base64!")
        assert bad.value.field
        assert bad.value.problem


async def test_admin_socket_is_private(served: Served) -> None:
    assert stat.S_IMODE(os.stat(served.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(served.socket.parent).st_mode) == 0o700


async def test_client_without_certificate_is_refused(served: Served) -> None:
    ca = served.tls.material.ca
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    async with aio.secure_channel(
        f"127.0.0.1:{served.server.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        client = IdentityClient(channel, target="no-cert", timeout=5)
        with pytest.raises(BackendError) as failure:
            await client.list_users()
        assert "identity service" in str(failure.value)


def _input(roles: tuple[str, ...] = ("developer",)) -> dict[str, object]:
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name="alice", roles=roles)),
    )


async def test_authz_client_matches_authorizer(served: Served) -> None:
    local = Authorizer(settings=AuthzSettings())
    gateway = served.client_tls("gateway")
    async with mtls_channel("127.0.0.1", served.server.port, gateway) as channel:
        client = AuthzClient(channel, target="test")
        for roles in [("developer",), ("contractor",), ("sudoer",)]:
            remote = await client.decide_async(_input(roles))
            assert remote == local.decide(_input(roles))


async def test_unreachable_authz_denies(served: Served) -> None:
    await served.server.stop(0)
    async with mtls_channel("127.0.0.1", served.server.port, served.tls) as channel:
        decision = await AuthzClient(channel, target="gone", timeout=1).decide_async(_input())
    assert not decision.allow
    assert "gone" in decision.reasons[0]
