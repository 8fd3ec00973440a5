"""Console sign-in with OIDC (issue 14, deliver 3): the authorization-code flow with PKCE and a
nonce, against the loopback provider of ``tests/helpers/oidc_provider.py``, then identity's
``login_oidc`` and the console session of the one-time-code login; and the hostile browsers:
wrong or missing state, no flow cookie (login CSRF), a replayed code, a nonce mismatch, users
whose roles do not open the console.
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.hostile_http import peak_memory, serve_hostile
from helpers.oidc_provider import CLIENT_ID, OidcProvider, serve_provider
from starlette.applications import Starlette
from starlette.routing import Mount

from stockade.authz import Authorizer
from stockade.bus import Bus
from stockade.console import (
    COOKIE,
    CSP,
    FLOW_COOKIE,
    LOGIN_BUCKET,
    PREFIX,
    OidcSignIn,
    Sessions,
    _oidc,
    create_console,
)
from stockade.console._oidc import MAX_PENDING_PER_SOURCE, OidcSignInError
from stockade.core.settings import AuthzSettings, IdentitySettings, OidcSettings
from stockade.identity import IdentityService, KeyRing
from stockade.store import Store

BASE = "https://console.test"
CALLBACK = f"{BASE}{PREFIX}/oidc/callback"


@dataclass
class OidcEnv:
    client: httpx.AsyncClient
    provider: OidcProvider
    identity: IdentityService
    signin: OidcSignIn
    app: Starlette

    async def start(self, client: httpx.AsyncClient | None = None) -> dict[str, str]:
        """``/oidc/start``: the query of the authorization request it redirects to."""
        answer = await (client or self.client).get(f"{PREFIX}/oidc/start")
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        assert location.startswith(self.provider.url + "/authorize?")
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))

    async def approve(self, query: dict[str, str]) -> dict[str, str]:
        """The user approves at the provider: the callback query it redirects back with."""
        async with httpx.AsyncClient(timeout=5.0) as browser:
            answer = await browser.get(self.provider.url + "/authorize", params=query)
        assert answer.status_code == 302
        location = answer.headers["location"]
        assert location.startswith(CALLBACK + "?")
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))

    async def callback(
        self, params: dict[str, str], client: httpx.AsyncClient | None = None
    ) -> httpx.Response:
        return await (client or self.client).get(f"{PREFIX}/oidc/callback", params=params)


def _console_client(app: Any, source: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(source, 5000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


@pytest.fixture
async def oidc_env(tmp_path: Path, nats_url: str) -> AsyncIterator[OidcEnv]:
    with serve_provider(client_id=CLIENT_ID) as provider:
        oidc = OidcSettings(
            enabled=True,
            issuer=provider.url,
            client_id=CLIENT_ID,
            group_roles={"platform-admins": ["admin"], "auditors": ["auditor"],
                         "devs": ["developer"]},
        )  # fmt: skip
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        await store.migrate()
        identity = IdentityService(
            store=store, settings=IdentitySettings(oidc=oidc), keyring=KeyRing(tmp_path / "keys")
        )
        bus = await Bus.connect(nats_url, name="console-oidc-test")
        codes = await bus.key_value(f"{LOGIN_BUCKET}_{tmp_path.name[-20:].replace('.', '_')}")
        recordings = tmp_path / "recordings"
        recordings.mkdir()
        signin = OidcSignIn(oidc, login=identity.login_oidc)
        app = create_console(
            identity=identity,
            authz=Authorizer(settings=AuthzSettings()),
            store=store,
            sessions=Sessions(codes),  # type: ignore[arg-type]
            recordings=recordings,
            oidc=signin,
        )
        mounted = Starlette(routes=[Mount(PREFIX, app=app)])
        async with _console_client(mounted) as client:
            yield OidcEnv(client, provider, identity, signin, mounted)
        await signin.aclose()
        await bus.close()
        await store.close()


async def test_an_admin_signs_in_with_the_code_flow(oidc_env: OidcEnv) -> None:
    login_page = await oidc_env.client.get(f"{PREFIX}/login")
    assert f'href="{PREFIX}/oidc/start"' in login_page.text

    query = await oidc_env.start()
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == CALLBACK
    assert query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256"
    assert "openid" in query["scope"].split()
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    assert query["state"] != query["nonce"]

    answer = await oidc_env.callback(await oidc_env.approve(query))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-security-policy"] == CSP
    assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text)  # no inline script
    assert f'url={PREFIX}/sessions"' in answer.text
    assert oidc_env.client.cookies.get(COOKIE)

    # the verifier sent to the token endpoint is the one the challenge was made of
    (exchange,) = oidc_env.provider.token_requests
    verifier = exchange["code_verifier"]
    digest = hashlib.sha256(verifier.encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == query["code_challenge"]
    assert verifier not in answer.text

    page = await oidc_env.client.get(f"{PREFIX}/sessions")
    assert page.status_code == 200
    assert "olga (admin)" in page.text
    user = await oidc_env.identity.get_user("olga")
    assert user.roles == ("admin",)
    assert "oidc" in user.groups


async def test_an_auditor_signs_in_too(oidc_env: OidcEnv) -> None:
    oidc_env.provider.claims = {"groups": ["auditors"], "preferred_username": "otto"}
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 200, answer.text
    assert (await oidc_env.client.get(f"{PREFIX}/audit")).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: {**q, "state": q["state"][:-2] + "xx"},
        lambda q: {k: v for k, v in q.items() if k != "state"},
        lambda q: {**q, "state": ""},
    ],
    ids=["wrong-state", "missing-state", "empty-state"],
)
async def test_a_callback_with_a_wrong_or_missing_state_is_refused(
    oidc_env: OidcEnv, tamper: object
) -> None:
    back = await oidc_env.approve(await oidc_env.start())
    answer = await oidc_env.callback(tamper(back))  # type: ignore[operator]
    assert answer.status_code == 403
    assert not oidc_env.client.cookies.get(COOKIE)
    assert oidc_env.provider.token_requests == []  # the code was never exchanged
    # the pending sign-in is spent: the right state afterwards does not work either
    again = await oidc_env.callback(back)
    assert again.status_code == 403
    assert not oidc_env.client.cookies.get(COOKIE)


async def test_a_callback_in_another_browser_is_refused(oidc_env: OidcEnv) -> None:
    """ATTACK (login CSRF): the attacker starts a sign-in, approves it as themselves and sends
    the callback link to a victim, whose browser has no flow cookie for it."""
    back = await oidc_env.approve(await oidc_env.start())
    transport = oidc_env.client._transport
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as victim:
        answer = await oidc_env.callback(back, client=victim)
        assert answer.status_code == 403
        assert not victim.cookies.get(COOKIE)
        # the victim's own sign-in does not accept the attacker's code either
        mine = await oidc_env.start(client=victim)
        answer = await oidc_env.callback({**back, "state": "x" * 43}, client=victim)
        assert answer.status_code == 403
        assert mine["state"] != back["state"]
    assert oidc_env.provider.token_requests == []


async def test_a_replayed_code_is_refused(oidc_env: OidcEnv) -> None:
    back = await oidc_env.approve(await oidc_env.start())
    assert (await oidc_env.callback(back)).status_code == 200
    oidc_env.client.cookies.clear()
    # the same callback again: the pending sign-in is gone
    assert (await oidc_env.callback(back)).status_code == 403
    # the old code with a fresh sign-in's state: the provider refuses a used code
    fresh = await oidc_env.start()
    answer = await oidc_env.callback({"code": back["code"], "state": fresh["state"]})
    assert answer.status_code == 403
    assert "did not accept" in answer.text
    assert not oidc_env.client.cookies.get(COOKIE)


async def test_a_nonce_mismatch_is_refused(oidc_env: OidcEnv) -> None:
    """ATTACK: an ID token obtained for another sign-in (another nonce) is injected."""
    oidc_env.provider.forced_claims = {"nonce": "n-someone-elses"}
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 403
    assert "bad_nonce" in answer.text
    assert not oidc_env.client.cookies.get(COOKIE)


async def test_an_id_token_without_nonce_is_refused(oidc_env: OidcEnv) -> None:
    """The code flow always expects its nonce: a token without one (device-flow shaped) fails."""
    oidc_env.provider.forced_claims = {"nonce": None}
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 403
    assert "bad_nonce" in answer.text


async def test_a_developer_is_not_let_into_the_console(oidc_env: OidcEnv) -> None:
    """A provider user whose groups map to a role without console.view is refused by policy."""
    oidc_env.provider.claims = {"groups": ["devs"], "preferred_username": "dev"}
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 403
    assert "console.view denied" in answer.text
    assert not oidc_env.client.cookies.get(COOKIE)
    assert (await oidc_env.client.get(f"{PREFIX}/sessions")).status_code in {303, 307}


async def test_a_user_with_no_mapped_group_is_refused(oidc_env: OidcEnv) -> None:
    oidc_env.provider.claims = {"groups": ["everyone"]}
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 403
    assert "no_role" in answer.text
    assert [u.name for u in await oidc_env.identity.list_users()] == []


async def test_a_disabled_user_is_refused(oidc_env: OidcEnv) -> None:
    assert (await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))).is_success
    await oidc_env.identity.set_disabled("olga", True)
    oidc_env.client.cookies.clear()
    answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
    assert answer.status_code == 403
    assert not oidc_env.client.cookies.get(COOKIE)


async def test_a_provider_error_is_refused(oidc_env: OidcEnv) -> None:
    query = await oidc_env.start()
    answer = await oidc_env.callback({"error": "access_denied\x1b[2J", "state": query["state"]})
    assert answer.status_code == 403
    assert "\x1b" not in answer.text
    answer = await oidc_env.callback({"error": "access_denied", "state": query["state"]})
    assert answer.status_code == 403  # spent by the first callback


async def test_a_duplicated_parameter_is_refused(oidc_env: OidcEnv) -> None:
    back = await oidc_env.approve(await oidc_env.start())
    url = f"{PREFIX}/oidc/callback?code={back['code']}&state={back['state']}&state=other"
    answer = await oidc_env.client.get(url)
    assert answer.status_code == 400
    assert oidc_env.provider.token_requests == []


async def test_the_flow_cookie_is_scoped_and_short_lived(oidc_env: OidcEnv) -> None:
    answer = await oidc_env.client.get(f"{PREFIX}/oidc/start")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{FLOW_COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", f"Path={PREFIX}/oidc", "Max-Age=300"):
        assert attribute.lower() in cookie.lower(), cookie


async def test_without_oidc_there_is_no_link_and_no_route(tmp_path: Path, nats_url: str) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    bus = await Bus.connect(nats_url, name="console-no-oidc")
    codes = await bus.key_value(f"{LOGIN_BUCKET}_{tmp_path.name[-20:].replace('.', '_')}")
    app = create_console(
        identity=identity,
        authz=Authorizer(settings=AuthzSettings()),
        store=store,
        sessions=Sessions(codes),  # type: ignore[arg-type]
        recordings=tmp_path,
    )
    try:
        async with _console_client(Starlette(routes=[Mount(PREFIX, app=app)])) as client:
            assert "oidc/start" not in (await client.get(f"{PREFIX}/login")).text
            assert (await client.get(f"{PREFIX}/oidc/start")).status_code == 404
            assert (await client.get(f"{PREFIX}/oidc/callback")).status_code == 404
    finally:
        await bus.close()
        await store.close()


async def test_a_flood_of_starts_does_not_lock_others_out(oidc_env: OidcEnv) -> None:
    """ATTACK: /oidc/start is open to anyone and keeps state; one client starting sign-ins in a
    loop only pushes out its own oldest ones, never another client's, and memory stays bounded."""
    async with _console_client(oidc_env.app, source="192.0.2.10") as user:
        mine = await oidc_env.start(client=user)
        flood = [await oidc_env.start() for _ in range(MAX_PENDING_PER_SOURCE + 8)]
        assert len(oidc_env.signin._pending) == MAX_PENDING_PER_SOURCE + 1
        answer = await oidc_env.callback(await oidc_env.approve(mine), client=user)
        assert answer.status_code == 200, answer.text
    # the flooder's newest sign-in still works (its oldest were dropped)
    assert (await oidc_env.callback(await oidc_env.approve(flood[-1]))).status_code == 200


# --- hostile providers (attack review of issue 14) ---


@pytest.mark.parametrize("where", ["discovery", "token_endpoint"])
async def test_a_provider_answering_without_end_is_cut_off(oidc_env: OidcEnv, where: str) -> None:
    """A body larger than the cap is not read whole into memory: the console stops reading
    (and answers 503) after about the cap, whatever Content-Length the provider promised."""
    with serve_hostile("huge", limit=64 * 1024 * 1024) as hostile:
        if where == "discovery":
            signin = OidcSignIn(
                OidcSettings(enabled=True, issuer=hostile.url, client_id=CLIENT_ID),
                login=oidc_env.identity.login_oidc,
            )
            with pytest.raises(OidcSignInError) as refused:
                await signin.start(CALLBACK)
            await signin.aclose()
            assert refused.value.status == 503
        else:
            oidc_env.provider.discovery_extra["token_endpoint"] = hostile.url + "/token"
            answer = await oidc_env.callback(await oidc_env.approve(await oidc_env.start()))
            assert answer.status_code == 503, answer.text
            assert not oidc_env.client.cookies.get(COOKIE)
        assert hostile.sent < 16 * 1024 * 1024


async def test_a_provider_dribbling_its_answer_is_given_up_on(
    oidc_env: OidcEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte at a time, each within the read timeout: the whole answer still has a deadline."""
    monkeypatch.setattr(_oidc, "RESPONSE_DEADLINE", 0.5)
    with serve_hostile("slow", limit=200, pace=0.05) as hostile:
        signin = OidcSignIn(
            OidcSettings(enabled=True, issuer=hostile.url, client_id=CLIENT_ID),
            login=oidc_env.identity.login_oidc,
        )
        with pytest.raises(OidcSignInError) as refused:
            await signin.start(CALLBACK)
        await signin.aclose()
    assert refused.value.status == 503
    assert hostile.sent < 200


async def test_callback_parameters_are_not_echoed_as_html(oidc_env: OidcEnv) -> None:
    """ATTACK: markup in a callback parameter's name (echoed in the duplicate error) or in the
    provider's ``error`` (after a matching state) is never rendered as HTML."""
    payload = "<img src=x onerror=alert(1)>"
    key = urllib.parse.quote(payload)
    answer = await oidc_env.client.get(f"{PREFIX}/oidc/callback?{key}=1&{key}=2")
    assert answer.status_code == 400
    assert payload not in answer.text
    assert "&lt;img" in answer.text
    query = await oidc_env.start()
    answer = await oidc_env.callback({"error": f"x{payload}", "state": query["state"]})
    assert answer.status_code == 403
    assert "<img" not in answer.text
    assert "refused the sign-in: error" in answer.text


@pytest.mark.parametrize(
    "extra",
    [
        {"issuer": "https://evil.example"},
        {"authorization_endpoint": "javascript:alert(1)"},
        {"authorization_endpoint": "http://127.0.0.1.nip.io/authorize"},
        {"token_endpoint": "file:///etc/passwd"},
        {"token_endpoint": "http://evil.example/token"},  # the code and verifier in clear text
        # a fragment would swallow state, nonce and the PKCE challenge appended to it
        {"authorization_endpoint": "https://idp.example/authorize#"},
    ],
)
async def test_hostile_discovery_documents_are_refused(
    oidc_env: OidcEnv, extra: dict[str, Any]
) -> None:
    """ATTACK: the issuer's discovery document names another issuer or endpoints that are not
    https (http only on a loopback address): the console never redirects there."""
    oidc_env.provider.discovery_extra = extra
    signin = OidcSignIn(
        OidcSettings(enabled=True, issuer=oidc_env.provider.url, client_id=CLIENT_ID),
        login=oidc_env.identity.login_oidc,
    )
    with pytest.raises(OidcSignInError) as refused:
        await signin.start(CALLBACK)
    await signin.aclose()
    assert refused.value.status == 503


async def test_a_compressed_answer_is_not_inflated(oidc_env: OidcEnv) -> None:
    """ATTACK: asked for ``identity``, the provider answers a gzip bomb (64 KiB that inflates to
    64 MiB): refused without inflating it."""
    with serve_hostile("gzip", limit=64 * 1024 * 1024) as hostile:
        signin = OidcSignIn(
            OidcSettings(enabled=True, issuer=hostile.url, client_id=CLIENT_ID),
            login=oidc_env.identity.login_oidc,
        )
        with peak_memory() as peak, pytest.raises(OidcSignInError) as refused:
            await signin.start(CALLBACK)
        await signin.aclose()
    assert refused.value.status == 503
    assert peak[0] < 16 * 1024 * 1024


async def test_one_ipv6_prefix_counts_as_one_client(oidc_env: OidcEnv) -> None:
    """ATTACK: a host owning a /64 starts each sign-in from another of its addresses to get
    past the per-client cap (and so push everyone's sign-ins out of the global one)."""
    for n in range(MAX_PENDING_PER_SOURCE + 8):
        await oidc_env.signin.start(CALLBACK, source=f"2001:db8:1:2::{n + 1:x}")
    assert len(oidc_env.signin._pending) == MAX_PENDING_PER_SOURCE
    await oidc_env.signin.start(CALLBACK, source="2001:db8:1:3::1")  # another /64
    await oidc_env.signin.start(CALLBACK, source="192.0.2.7")
    assert len(oidc_env.signin._pending) == MAX_PENDING_PER_SOURCE + 2
