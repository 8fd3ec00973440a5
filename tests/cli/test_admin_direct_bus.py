"""``--direct`` admin commands and the gateways: a change made on the store directly (a
workspace removed, a session killed) must still reach the gateways over the bus that runs,
or the SSH sessions it ends keep running there (only their tokens stop)."""

from __future__ import annotations

from pathlib import Path

from stockade.bus import Bus
from stockade.cli._admin import admin_identity
from stockade.core.events import STREAM_AUDIT, SUBJECT_SESSION_KILL, SessionKill
from stockade.core.settings import Settings


async def test_a_direct_removal_tells_the_gateways(tmp_path: Path, nats_url: str) -> None:
    bus = await Bus.connect(nats_url, name="test")
    try:
        await bus.ensure_streams()
        cfg = Settings(data_dir=tmp_path, bus={"url": nats_url})
        async with admin_identity(cfg, direct=True) as identity:
            await identity.add_user("ada")
            await identity.add_workspace("direct-lab", owner="ada")
            await identity.remove_workspace("direct-lab")
        last = await bus.js.get_last_msg(STREAM_AUDIT, SUBJECT_SESSION_KILL)
        kill = SessionKill.from_bytes(last.data or b"")
        assert kill.removed_workspace == "direct-lab"
    finally:
        await bus.close()


async def test_a_direct_change_with_no_bus_running_still_works(tmp_path: Path) -> None:
    """No bus configured and none embedded running: nothing to tell, the change is made."""
    cfg = Settings(data_dir=tmp_path)
    async with admin_identity(cfg, direct=True) as identity:
        await identity.add_user("ada")
        await identity.add_workspace("lab", owner="ada")
        await identity.remove_workspace("lab")
        assert "lab" not in [w.name for w in await identity.list_workspaces()]
