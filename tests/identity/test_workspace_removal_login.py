"""A login racing a workspace removal: decided (authenticated) before the removal committed,
its session opened after. The removal found no session of it to end and its gateway kill went
out before the connection was registered, so the session must not open at all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stockade.core import InvalidInput
from stockade.core.events import Event
from stockade.core.settings import IdentitySettings
from stockade.identity import IdentityService, KeyRing, Principal, SessionRequest
from stockade.store import Store


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> Any:
        self.events.append(event)


@pytest.fixture
async def service(
    database_url: str, keyring: KeyRing, new_key_line: Callable[[], str]
) -> AsyncIterator[IdentityService]:
    store = Store(database_url)
    await store.migrate()
    service = IdentityService(
        store=store, settings=IdentitySettings(), keyring=keyring, publisher=Recorder()
    )
    await service.add_user("ada", ssh_keys=[new_key_line()])
    await service.add_user("bob", ssh_keys=[new_key_line()])
    await service.add_workspace("lab", owner="ada")
    assert (await service.heartbeat("gw", "boot", stale_after=30)).alive
    try:
        yield service
    finally:
        await store.close()


async def _decide(service: IdentityService) -> Principal:
    user = await service.get_user("ada")
    principal = await service.authenticate_key("ada+lab", user.keys[0].fingerprint)
    assert isinstance(principal, Principal), principal
    assert principal.workspace.name == "lab"
    return principal


def _request() -> SessionRequest:
    return SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="gw", boot_id="boot")


async def test_a_login_decided_before_the_removal_opens_no_session(
    service: IdentityService,
) -> None:
    principal = await _decide(service)
    await service.remove_workspace("lab")
    with pytest.raises(InvalidInput, match="workspace"):
        await service.open_session(principal, _request())
    assert [s for s in await service.list_sessions() if s.workspace == "lab"] == []


async def test_a_login_decided_before_a_re_creation_opens_no_session_in_the_new_one(
    service: IdentityService,
) -> None:
    principal = await _decide(service)
    await service.remove_workspace("lab")
    await service.add_workspace("lab", owner="bob", backend="local")
    with pytest.raises(InvalidInput, match="workspace"):
        await service.open_session(principal, _request())


async def test_a_login_with_its_workspace_in_place_opens(service: IdentityService) -> None:
    principal = await _decide(service)
    opened = await service.open_session(principal, _request())
    assert opened.session_id.startswith("s-")
