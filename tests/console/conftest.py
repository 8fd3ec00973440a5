"""The console app in process against real services (SQLite store, NATS KV, the shipped policy),
for the tests of this directory."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from stockade.authz import Authorizer
from stockade.bus import Bus
from stockade.console import LOGIN_BUCKET, PREFIX, Sessions, create_console, issue_login_code
from stockade.core.settings import AuthzSettings, IdentitySettings, ShieldSettings
from stockade.identity import IdentityService, KeyRing, Principal
from stockade.shield import BanStore
from stockade.store import Store

BASE = "https://console.test"


@dataclass
class Env:
    client: httpx.AsyncClient
    identity: IdentityService
    codes: object
    store: Store
    recordings: Path
    bans: BanStore
    app: Starlette

    async def sign_in(self, user: str) -> str:
        code = await issue_login_code(self.codes, user)  # type: ignore[arg-type]
        answer = await self.client.post(
            f"{PREFIX}/login", json={"code": code}, headers={"Origin": BASE}
        )
        assert answer.status_code == 200, answer.text
        page = await self.client.get(f"{PREFIX}/shield")
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match, page.text
        return match.group(1)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[Env]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    await identity.add_user("ada", roles=["admin"])
    await identity.add_user("otto", roles=["auditor"])
    await identity.add_user("dev", roles=["developer"])
    bus = await Bus.connect(nats_url, name="console-test")
    bucket = f"{LOGIN_BUCKET}_{tmp_path.name[-20:].replace('.', '_')}"
    codes = await bus.key_value(bucket)
    bans = await BanStore.open(bus, strike_memory=3600)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    app = create_console(
        identity=identity,
        authz=Authorizer(settings=AuthzSettings()),
        store=store,
        sessions=Sessions(codes),
        recordings=recordings,
        bans=bans,
        shield_settings=ShieldSettings(),
    )
    mounted = Starlette(routes=[Mount(PREFIX, app=app)])  # as the broker mounts it
    transport = httpx.ASGITransport(app=mounted, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Env(client, identity, codes, store, recordings, bans, mounted)
    for ban in await bans.all():
        await bans.remove(ban.source)
    await bus.close()
    await store.close()


async def _principal(env: Env, name: str) -> Principal:
    user = await env.identity.get_user(name)
    workspace = await env.identity.default_workspace(name)
    return Principal(
        username=user.name, roles=user.roles, groups=user.groups, auth_methods=(),
        workspace=workspace, method="publickey",
    )  # fmt: skip
