"""The shield against a real nats-server: consumer, ban store, deny-list sync, exec hook."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.bus import Bus, PendingPut
from stockade.core.errors import BusUnavailable, InvalidInput
from stockade.core.events import SUBJECT_AUTH_FAILED, AuthFailed
from stockade.core.settings import ShieldSettings
from stockade.shield import (
    Ban,
    BanStore,
    BanSync,
    DenyList,
    ExecEnforcer,
    Nft,
    NftablesEnforcer,
    NftError,
    Shield,
    ShieldMetrics,
    manual_ban,
    manual_unban,
)

SETTINGS = ShieldSettings(threshold=3, ban_schedule=["1h"], enforcers=["denylist"])


def failed(ip: str, user: str = "root", reason: str = "bad_key") -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=50000,
        username=user,
        method="publickey",
        reason=reason,
        gateway_id="gw",
    )


async def eventually(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_bans_after_threshold_and_deny_list_follows(bus: Bus) -> None:
    shield = Shield(bus, SETTINGS, enforcers=[])
    await shield.start()
    gateway_view = DenyList()
    sync = await BanSync.start(bus, [gateway_view])
    try:
        for _ in range(3):
            await bus.publish(failed("198.51.100.1"))
        await bus.publish(failed("198.51.100.2"))
        await eventually(lambda: gateway_view.is_banned("198.51.100.1"))
        assert shield.deny_list.is_banned("198.51.100.1")
        assert not gateway_view.is_banned("198.51.100.2")
        assert await shield.wait_idle()
        text = shield.metrics_text()
        assert "stockade_shield_events_consumed_total 4" in text
        assert "stockade_shield_active_bans 1" in text
        assert 'stockade_shield_ban_latency_seconds_bucket{le="+Inf"} 1' in text
    finally:
        await sync.stop()
        await shield.stop()


async def test_malformed_events_counted_and_consumer_keeps_going(bus: Bus) -> None:
    shield = Shield(bus, SETTINGS, enforcers=[])
    await shield.start()
    try:
        await bus.publish_bytes(SUBJECT_AUTH_FAILED, b"not json")
        await bus.publish_bytes(SUBJECT_AUTH_FAILED, b'{"v": 1, "client_ip": "1.2.3.4"}')
        await bus.publish_bytes(SUBJECT_AUTH_FAILED, b"x" * 70000)
        await bus.publish(failed("no-such-address"))
        for _ in range(3):
            await bus.publish(failed("198.51.100.3"))
        await eventually(lambda: shield.deny_list.is_banned("198.51.100.3"))
        assert await shield.wait_idle()
        assert shield.metrics.events_malformed == 4
        assert shield.metrics.events_consumed == 7
    finally:
        await shield.stop()
    dead = await bus.js.pull_subscribe("stockade.deadletter.shield", stream="STOCKADE_DEADLETTER")
    assert len(await dead.fetch(4, timeout=5)) == 4


async def test_allowlisted_never_banned(bus: Bus) -> None:
    settings = SETTINGS.model_copy(update={"allowlist": [*SETTINGS.allowlist]})
    shield = Shield(bus, settings, enforcers=[])
    await shield.start()
    try:
        await bus.publish_many(failed("127.0.0.1") for _ in range(200))
        await bus.publish_many(failed("::1", user=f"u{i}") for i in range(50))
        assert await shield.wait_idle()
        assert shield.metrics.allowlisted == 250
        assert shield.metrics.bans_issued == 0
        assert await shield.store.all() == []
    finally:
        await shield.stop()


async def test_bans_survive_restart(bus: Bus) -> None:
    shield = Shield(bus, SETTINGS, enforcers=[])
    await shield.start()
    for _ in range(3):
        await bus.publish(failed("198.51.100.4"))
    await eventually(lambda: shield.deny_list.is_banned("198.51.100.4"))
    until = shield.deny_list.lookup("198.51.100.4")
    await shield.stop()
    again = Shield(bus, SETTINGS, enforcers=[])
    await again.start()
    try:
        assert again.deny_list.lookup("198.51.100.4") == until
        assert again.deny_list.is_banned("198.51.100.4")
        assert again.metrics.bans_issued == 0  # replay did not ban a second time
    finally:
        await again.stop()


async def test_manual_ban_unban_and_allowlist_refusal(bus: Bus) -> None:
    store = await BanStore.open(bus, strike_memory=60)
    view = DenyList()
    sync = await BanSync.start(bus, [view])
    try:
        ban = await manual_ban(store, SETTINGS, "192.0.2.0/24", duration=60, reason="ops", bus=bus)
        assert ban.source == "192.0.2.0/24"
        await eventually(lambda: view.is_banned("192.0.2.77"))
        with pytest.raises(InvalidInput, match="allowlisted"):
            await manual_ban(store, SETTINGS, "127.0.0.0/8", duration=60, reason="x")
        assert await manual_unban(store, "192.0.2.0/24", bus=bus)
        await eventually(lambda: not view.is_banned("192.0.2.77"))
        assert not await manual_unban(store, "192.0.2.0/24")
        short = await manual_ban(store, SETTINGS, "2001:db8::5", duration=1, reason="short")
        assert short.source == "2001:db8::5"
        await eventually(lambda: view.is_banned("2001:db8::5"))
        await eventually(lambda: not view.is_banned("2001:db8::5"))  # expires by itself
    finally:
        await sync.stop()


async def test_exec_enforcer_runs_command(bus: Bus, tmp_path: Path) -> None:
    out = tmp_path / "hook.log"
    script = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    hook = ExecEnforcer([sys.executable, "-c", script, "{action}", "{source}", "{seconds}"])
    store = await BanStore.open(bus, strike_memory=60)
    sync = await BanSync.start(bus, [hook])
    try:
        await manual_ban(store, SETTINGS, "203.0.113.50", duration=120, reason="x")
        await manual_unban(store, "203.0.113.50")
        await eventually(lambda: out.exists() and len(out.read_text().splitlines()) == 2)
        lines = out.read_text().splitlines()
        assert lines[0].startswith("ban 203.0.113.50 1")
        assert lines[1] == "unban 203.0.113.50 0"
        assert hook.failures == 0
    finally:
        await sync.stop()


def test_metrics_text_format() -> None:
    metrics = ShieldMetrics(active_bans=lambda: 2)
    metrics.observe_latency(0.004)
    metrics.observe_latency(0.3)
    text = metrics.render()
    assert 'stockade_shield_ban_latency_seconds_bucket{le="0.005"} 1' in text
    assert 'stockade_shield_ban_latency_seconds_bucket{le="0.5"} 2' in text
    assert "stockade_shield_ban_latency_seconds_count 2" in text
    assert "stockade_shield_active_bans 2" in text


async def test_ban_write_failure_holds_the_ack_until_stored(bus: Bus) -> None:
    """A ban whose KV write fails is sent again; its events are acknowledged only after."""
    shield = Shield(bus, SETTINGS, enforcers=[])
    await shield.start()
    store = shield.store
    real = store.put_async
    failures = 0

    async def flaky(ban: Ban, *, now: float | None = None) -> PendingPut:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise BusUnavailable("NATS put: connection lost (test)")
        return await real(ban, now=now)

    store.put_async = flaky  # type: ignore[method-assign]
    try:
        for _ in range(3):
            await bus.publish(failed("198.51.100.9"))
        await bus.publish(failed("198.51.100.10"))
        assert await shield.wait_idle()
        assert failures == 2
        stored = await store.get("198.51.100.9")
        assert stored is not None
        assert stored.strikes == 1
        assert shield.metrics.bans_issued == 1
        assert shield.metrics.events_consumed == 4
    finally:
        await shield.stop()


async def test_nft_changes_queued_while_nft_runs_go_in_one_batch() -> None:
    class SlowNft(Nft):
        def __init__(self) -> None:
            super().__init__()
            self.scripts: list[str] = []
            self.release = asyncio.Event()

        async def run(self, *args: str, script: str | None = None) -> str:
            assert script is not None
            await self.release.wait()
            if "203.0.113.66" in script:
                raise NftError("Could not process rule: File exists")  # one bad element
            self.scripts.append(script)
            return ""

    nft = SlowNft()
    enforcer = NftablesEnforcer(nft, ports=[2222])
    now = time.time()

    def ban(source: str) -> Ban:
        return Ban(source=source, until=now + 60, strikes=1, reason="t", banned_at=now)

    await enforcer.apply(ban("203.0.113.1"), now)  # the writer starts with this one
    await asyncio.sleep(0)
    for i in range(2, 40):
        await enforcer.apply(ban(f"203.0.113.{i}"), now)
    await enforcer.remove("203.0.113.5")
    nft.release.set()
    await enforcer.drain()
    assert len(nft.scripts) == 2  # one for the first ban, one for everything queued meanwhile
    assert nft.scripts[1].count("timeout") == 38
    assert nft.scripts[1].rstrip().endswith("delete element inet stockade banned4 { 203.0.113.5 }")

    nft.scripts.clear()
    for i in (64, 65, 66, 67):
        await enforcer.apply(ban(f"203.0.113.{i}"), now)
    await enforcer.drain()
    # the batch failed on one element: the others went in one by one
    assert len(nft.scripts) == 3
    assert enforcer.failures == 1
    assert enforcer.available
