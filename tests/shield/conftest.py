"""Shield fixtures: a fresh nats-server per test (the shield's stream and bucket are global)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.bus import Bus, EmbeddedNats


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[str]:
    async with EmbeddedNats(tmp_path / "data") as url:
        yield url


@pytest.fixture
async def bus(own_nats: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(own_nats, name="shield-test")
    await bus.ensure_streams()
    yield bus
    await bus.close()
