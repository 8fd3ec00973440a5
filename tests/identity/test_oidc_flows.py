"""OIDC logins per flow (issue 14, deliver 3): the device-code flow has no nonce, so identity
accepts a nonce-less token only when the caller expects none, and refuses there a token that
carries one (minted for an authorization-code sign-in: replaying it must not skip the nonce)."""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers.hostile_http import peak_memory, serve_hostile
from helpers.oidc_provider import CLIENT_ID, OidcProvider, serve_provider

from stockade.core import TokenRejected
from stockade.core.settings import IdentitySettings, OidcSettings
from stockade.identity import IdentityService, KeyRing
from stockade.store import Store


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with serve_provider() as provider:
        yield provider


@pytest.fixture
async def service(tmp_path: Path, provider: OidcProvider) -> AsyncIterator[IdentityService]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    oidc = OidcSettings(enabled=True, issuer=provider.url, client_id=CLIENT_ID,
                        group_roles={"platform-admins": ["admin"]})  # fmt: skip
    try:
        yield IdentityService(
            store=store, settings=IdentitySettings(oidc=oidc), keyring=KeyRing(tmp_path / "k")
        )
    finally:
        await store.close()


async def test_the_device_flow_takes_a_token_without_nonce(
    service: IdentityService, provider: OidcProvider
) -> None:
    login = await service.login_oidc(provider.id_token(), nonce=None)
    assert login.user.roles == ("admin",)


async def test_a_code_flow_token_is_refused_on_the_device_path(
    service: IdentityService, provider: OidcProvider
) -> None:
    """ATTACK: an ID token of a console sign-in (it has that sign-in's nonce) sent to the
    nonce-less device-code path."""
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(provider.id_token(nonce="n-console-sign-in"), nonce=None)
    assert info.value.reason == "bad_nonce"
    assert await service.list_users() == []


async def test_the_code_flow_needs_its_nonce(
    service: IdentityService, provider: OidcProvider
) -> None:
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(provider.id_token(), nonce="n-expected")
    assert info.value.reason == "bad_nonce"
    login = await service.login_oidc(provider.id_token(nonce="n-expected"), nonce="n-expected")
    assert login.user.name == "olga"


async def test_a_jwks_uri_in_clear_text_is_not_fetched(
    service: IdentityService, provider: OidcProvider
) -> None:
    """ATTACK: the discovery document points ``jwks_uri`` at plain http off loopback, where
    anyone on the path can swap the keys and so sign ID tokens. This machine's own name
    (resolving to loopback, but not a loopback address as written) stands in for that host."""
    host = socket.gethostname()
    assert ipaddress.ip_address(socket.gethostbyname(host)).is_loopback, "test precondition"
    port = urllib.parse.urlsplit(provider.url).port
    provider.discovery_extra = {"jwks_uri": f"http://{host}:{port}/jwks.json"}
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(provider.id_token(), nonce=None)
    assert info.value.reason == "unknown_kid"
    assert provider.issuer.jwks_fetches == 0
    assert await service.list_users() == []


async def test_a_jwks_without_end_is_cut_off(
    service: IdentityService, provider: OidcProvider
) -> None:
    """ATTACK: a JWKS document without end is not read whole into memory."""
    with serve_hostile("huge", limit=64 * 1024 * 1024) as hostile:
        provider.discovery_extra = {"jwks_uri": hostile.url + "/jwks.json"}
        with pytest.raises(TokenRejected) as info:
            await service.login_oidc(provider.id_token(), nonce=None)
        assert info.value.reason == "unknown_kid"
        assert hostile.sent < 16 * 1024 * 1024


async def test_a_compressed_jwks_is_not_inflated(
    service: IdentityService, provider: OidcProvider
) -> None:
    """ATTACK: a gzip-bomb JWKS (64 KiB that inflates to 64 MiB) is refused without inflating."""
    with serve_hostile("gzip", limit=64 * 1024 * 1024) as hostile:
        provider.discovery_extra = {"jwks_uri": hostile.url + "/jwks.json"}
        with peak_memory() as peak, pytest.raises(TokenRejected) as info:
            await service.login_oidc(provider.id_token(), nonce=None)
    assert info.value.reason == "unknown_kid"
    assert peak[0] < 16 * 1024 * 1024
