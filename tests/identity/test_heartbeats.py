"""Gateway heartbeats: a live gateway's beat ends a silent gateway's sessions (and revokes their
tokens), never a live one's; a boot declared dead learns it at its next beat.

A silent gateway is made by moving its last beat into the past in the store (what ``kill -9``
leaves behind), so no test waits on a clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from stockade.core import InvalidInput, TokenRejected
from stockade.core.events import Event, SessionEnded, SessionKill
from stockade.core.settings import IdentitySettings
from stockade.identity import IdentityService, KeyRing, Principal, SessionRequest
from stockade.store import GatewayRow, Store


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> Any:
        self.events.append(event)


@pytest.fixture
async def env(
    database_url: str, keyring: KeyRing, new_key_line: Callable[[], str]
) -> AsyncIterator[tuple[IdentityService, Store, Recorder]]:
    store = Store(database_url)
    await store.migrate()
    events = Recorder()
    service = IdentityService(
        store=store, settings=IdentitySettings(), keyring=keyring, publisher=events
    )
    await service.add_user("ada", ssh_keys=[new_key_line()])
    try:
        yield service, store, events
    finally:
        await store.close()


async def _open(service: IdentityService, gateway: str, boot: str) -> tuple[str, str]:
    user = await service.get_user("ada")
    principal = await service.authenticate_key("ada", user.keys[0].fingerprint)
    assert isinstance(principal, Principal), principal
    opened = await service.open_session(
        principal,
        SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id=gateway, boot_id=boot),
    )
    return opened.session_id, opened.token


async def _silence(store: Store, boot: str, seconds: float) -> None:
    async with store.transaction() as session:
        await session.execute(
            update(GatewayRow)
            .where(GatewayRow.boot_id == boot)
            .values(seen_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


async def test_a_live_gateway_ends_the_sessions_of_a_silent_one(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    service, store, events = env
    assert (await service.heartbeat("gw-a", "boot-a", stale_after=3)).alive
    assert (await service.heartbeat("gw-b", "boot-b", stale_after=3)).alive
    sid_a, token_a = await _open(service, "gw-a", "boot-a")
    sid_b, token_b = await _open(service, "gw-b", "boot-b")
    await service.verify_token(token_a)

    await _silence(store, "boot-a", 10)  # gateway A was killed 10 s ago
    beat = await service.heartbeat("gw-b", "boot-b", stale_after=3)

    assert beat.alive
    assert [s.session_id for s in beat.ended] == [sid_a]
    info = await service.get_session(sid_a)
    assert info.ended_at is not None
    assert info.end_reason == "gateway_lost"
    with pytest.raises(TokenRejected, match="session_ended"):
        await service.verify_token(token_a)
    await service.verify_token(token_b)  # B's own session lives on
    assert await service.is_session_live(sid_b)
    ended = [e for e in events.events if isinstance(e, SessionEnded)]
    kills = [e for e in events.events if isinstance(e, SessionKill)]
    assert [(e.session_id, e.reason) for e in ended] == [(sid_a, "gateway_lost")]
    assert [(e.session_id, e.reason) for e in kills] == [(sid_a, "gateway_lost")]

    # A comes back from a long pause: it learns it was declared dead, and stays dead
    assert not (await service.heartbeat("gw-a", "boot-a", stale_after=3)).alive
    assert not (await service.heartbeat("gw-a", "boot-a", stale_after=3)).alive
    # a second reaper finds nothing left to end
    assert (await service.heartbeat("gw-b", "boot-b", stale_after=3)).ended == ()


async def test_a_gateway_that_beats_keeps_its_sessions(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=3)
    sid_a, _token = await _open(service, "gw-a", "boot-a")
    await _silence(store, "boot-a", 2)  # late, but within the timeout
    for _ in range(3):
        assert (await service.heartbeat("gw-b", "boot-b", stale_after=3)).ended == ()
    assert await service.is_session_live(sid_a)


async def test_a_gateway_that_stopped_cleanly_is_never_declared_dead(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=3)
    sid_a, _token = await _open(service, "gw-a", "boot-a")
    assert (await service.heartbeat("gw-a", "boot-a", stale_after=3, stopping=True)).alive
    await _silence(store, "boot-a", 60)
    assert (await service.heartbeat("gw-b", "boot-b", stale_after=3)).ended == ()
    assert await service.is_session_live(sid_a)  # not ours to end: its gateway ends its own


async def test_sessions_of_another_boot_of_the_dead_gateway_are_left_alone(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """Only the silent boot's sessions end: the same gateway restarted (a new boot) keeps its."""
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-1", stale_after=3)
    await service.heartbeat("gw-a", "boot-2", stale_after=3)
    sid_new, _token = await _open(service, "gw-a", "boot-2")
    await _silence(store, "boot-1", 30)
    beat = await service.heartbeat("gw-a", "boot-2", stale_after=3)
    assert beat.ended == ()
    assert await service.is_session_live(sid_new)


@pytest.mark.parametrize(
    ("gateway", "boot", "stale_after", "field"),
    [
        ("gw", "b", 0.01, "stale_after"),  # would reap a gateway for one late packet
        ("gw", "b", 1e9, "stale_after"),
        ("", "b", 3, "boot_id"),
        ("gw", "", 3, "boot_id"),
        ("gw", "x" * 65, 3, "boot_id"),
    ],
)
async def test_bad_heartbeats_are_refused(
    env: tuple[IdentityService, Store, Recorder],
    gateway: str,
    boot: str,
    stale_after: float,
    field: str,
) -> None:
    service, _, _ = env
    with pytest.raises(InvalidInput) as info:
        await service.heartbeat(gateway, boot, stale_after=stale_after)
    assert info.value.field == field


async def test_a_boot_id_cannot_be_taken_over_by_another_gateway(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """ATTACK: gateway B claims A's boot id to stop it, or to keep a dead A alive."""
    service, _, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=3)
    with pytest.raises(InvalidInput, match="another gateway"):
        await service.heartbeat("gw-b", "boot-a", stale_after=3, stopping=True)


async def test_another_gateways_short_timeout_does_not_end_a_live_gateways_sessions(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """ATTACK: gateway B (a typo in its settings, or a hostile B) beats with the shortest
    ``stale_after``; A beats every few seconds under its own 10 s timeout. A boot is judged by
    the timeout it declared itself, never by the caller's, or B ends A's live sessions."""
    service, store, events = env
    await service.heartbeat("gw-a", "boot-a", stale_after=10)
    sid_a, token_a = await _open(service, "gw-a", "boot-a")
    await _silence(store, "boot-a", 2)  # A's last beat 2 s ago: well within its 10 s
    beat = await service.heartbeat("gw-b", "boot-b", stale_after=1)
    assert beat.ended == ()
    assert await service.is_session_live(sid_a)
    await service.verify_token(token_a)
    assert not [e for e in events.events if isinstance(e, SessionKill)]


async def test_another_gateways_long_timeout_does_not_keep_a_dead_gateway_alive(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """A gateway that declared a 2 s timeout and went silent for 30 s is dead, even when the
    gateway that notices runs with a one-hour timeout of its own."""
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=2)
    sid_a, _token = await _open(service, "gw-a", "boot-a")
    await _silence(store, "boot-a", 30)
    beat = await service.heartbeat("gw-b", "boot-b", stale_after=3600)
    assert [s.session_id for s in beat.ended] == [sid_a]
    assert not await service.is_session_live(sid_a)


async def test_a_sweep_at_start_up_spares_the_sessions_of_a_boot_that_still_beats(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """ATTACK: ``end_stale_sessions(gateway_id, boot_id)`` (a gateway's sweep when it starts)
    ended every session of that gateway id but the caller's boot. Any gateway certificate (or
    a second replica given the same ``gateway_id``) could thus end a live gateway's sessions.
    Only boots that no longer beat are swept; a restarted gateway still ends what its dead
    boot left behind."""
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-1", stale_after=3)
    sid_live, token = await _open(service, "gw-a", "boot-1")
    assert await service.end_stale_sessions("gw-a", "boot-intruder") == []
    assert await service.is_session_live(sid_live)
    await service.verify_token(token)

    await _silence(store, "boot-1", 30)  # now boot-1 is dead: the restart sweeps its sessions
    ended = await service.end_stale_sessions("gw-a", "boot-2")
    assert [s.session_id for s in ended] == [sid_live]


async def test_a_boot_declared_dead_opens_no_session(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """ATTACK: a paused gateway resumes; until its next beat tells it that it was declared
    dead, it still logs users in under its old boot. Such a session would outlive everything:
    the boot is ended, so no reaper ever looks at it again. Identity refuses it."""
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=3)
    await _silence(store, "boot-a", 10)
    assert (await service.heartbeat("gw-b", "boot-b", stale_after=3)).alive  # A declared dead
    with pytest.raises(InvalidInput) as info:
        await _open(service, "gw-a", "boot-a")
    assert info.value.field == "boot_id"
    assert [s for s in await service.list_sessions() if s.ended_at is None] == []
    with pytest.raises(InvalidInput):  # nor under a boot of another gateway
        await _open(service, "gw-a", "boot-b")
    await _open(service, "gw-b", "boot-b")  # the live one does


async def test_identity_replicas_with_skewed_clocks_agree_on_who_beats(
    pg_schema_url: str, keyring: KeyRing, new_key_line: Callable[[], str]
) -> None:
    """ATTACK (clock skew): gateway A beats through an identity replica whose clock runs 10 s
    behind, B through one on time. Were the beat stamped with the replica's clock, A's beat
    would look 10 s old to B's replica, which would end A's live sessions at every beat. On
    PostgreSQL the database's clock stamps every beat."""
    from stockade.identity._gateways import record_heartbeat

    store = Store(pg_schema_url)
    await store.migrate()
    service = IdentityService(store=store, settings=IdentitySettings(), keyring=keyring)
    try:
        await service.add_user("ada", ssh_keys=[new_key_line()])

        def nothing_to_end(row: object) -> Any:
            raise AssertionError(f"A's replica ended {row}")

        await record_heartbeat(
            store, "gw-a", "boot-a", stale_after=3, stopping=False, to_info=nothing_to_end,
            clock=lambda: datetime.now(UTC) - timedelta(seconds=10),
        )  # fmt: skip
        sid_a, token_a = await _open(service, "gw-a", "boot-a")
        beat = await service.heartbeat("gw-b", "boot-b", stale_after=3)
        assert beat.ended == ()
        assert await service.is_session_live(sid_a)
        await service.verify_token(token_a)
    finally:
        await store.close()


async def test_the_tokens_of_a_silent_gateway_die_with_no_other_gateway_to_notice(
    env: tuple[IdentityService, Store, Recorder],
) -> None:
    """ATTACK: the only gateway is killed (``kill -9``). Nobody else beats, so nobody reaps it;
    the token in its sessions (a container workspace lives on) would go on fetching
    credentials until the gateway restarts. A token of a session whose boot is silent beyond
    its own timeout no longer verifies."""
    service, store, _ = env
    await service.heartbeat("gw-a", "boot-a", stale_after=3)
    _sid, token = await _open(service, "gw-a", "boot-a")
    await service.verify_token(token)
    await _silence(store, "boot-a", 2)  # late, within its timeout: still good
    await service.verify_token(token)
    await _silence(store, "boot-a", 10)
    with pytest.raises(TokenRejected, match="stopped beating") as info:
        await service.verify_token(token)
    assert info.value.reason == "session_ended"
    assert (await service.heartbeat("gw-a", "boot-a", stale_after=3)).alive  # came back
    await service.verify_token(token)  # never declared dead: its session lives on
