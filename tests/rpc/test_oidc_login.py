"""OIDC logins over the internal API: ``stockade login --oidc`` (the admin socket, or an admin
certificate) hands identity an ID token; the token is the credential, and a refusal comes back
as the same TokenRejected reason. No service certificate may trade one for a Stockade token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
from grpc import aio
from tls.jwks import Issuer, serve_issuer

from stockade.authz import Authorizer
from stockade.core import PermissionDenied, TokenRejected
from stockade.core.settings import AuthzSettings, IdentitySettings, OidcSettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import IdentityClient, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as issuer:
        yield issuer


@pytest.fixture
async def server(tmp_path: Path, issuer: Issuer) -> AsyncIterator[RpcServer]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    settings = IdentitySettings(
        oidc=OidcSettings(
            enabled=True, issuer=issuer.url, client_id="console",
            group_roles={"ops": ["admin"]},
        )
    )  # fmt: skip
    identity = IdentityService(store=store, settings=settings, keyring=KeyRing(tmp_path / "keys"))
    api = DevCA(tmp_path / "tls").issue("api")
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=CertificateFiles(api.cert, api.key, api.ca),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)
        await store.close()


def _channel(server: RpcServer, tmp_path: Path, name: str) -> aio.Channel:
    issued = DevCA(tmp_path / "tls").issue(name)
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    return mtls_channel("127.0.0.1", server.port, tls)


@pytest.fixture
async def client(server: RpcServer, tmp_path: Path) -> AsyncIterator[IdentityClient]:
    async with _channel(server, tmp_path, "admin") as channel:
        yield IdentityClient(channel, target="identity")


def _token(issuer: Issuer, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": issuer.url, "sub": "u1", "aud": "console", "iat": now, "exp": now + 60,
            "nonce": "n1", "preferred_username": "ines", "groups": ["ops"], **claims}  # fmt: skip
    kid = issuer.published[0]
    return jwt.encode(body, issuer.keys[kid], algorithm="ES256", headers={"kid": kid})


async def test_oidc_login_over_grpc(client: IdentityClient, issuer: Issuer) -> None:
    login = await client.login_oidc(_token(issuer), nonce="n1")
    assert login.user.name == "ines"
    assert login.user.roles == ("admin",)
    assert login.claims.roles == ("admin",)


async def test_oidc_refusal_over_grpc_keeps_its_reason(
    client: IdentityClient, issuer: Issuer
) -> None:
    with pytest.raises(TokenRejected) as info:
        await client.login_oidc(_token(issuer, aud="someone-else"), nonce="n1")
    assert info.value.reason == "bad_audience"
    with pytest.raises(TokenRejected) as info:
        await client.login_oidc(_token(issuer), nonce="n2")
    assert info.value.reason == "bad_nonce"


@pytest.mark.parametrize("name", ["broker", "gateway", "shield", "console"])
async def test_a_service_certificate_cannot_trade_an_id_token_for_a_token(
    server: RpcServer, tmp_path: Path, issuer: Issuer, name: str
) -> None:
    """ATTACK: a service that sees an ID token (a log line, a proxy) trades it at identity
    for a Stockade token with the roles of the user's groups (admin here). Only the CLI's
    admin socket (or an admin certificate) logs in; nothing is created."""
    async with _channel(server, tmp_path, name) as channel:
        with pytest.raises(PermissionDenied, match="LoginOidc needs an admin certificate"):
            await IdentityClient(channel, target="identity").login_oidc(_token(issuer), nonce="n1")
    async with _channel(server, tmp_path, "admin") as channel:
        assert await IdentityClient(channel, target="identity").list_users() == []
