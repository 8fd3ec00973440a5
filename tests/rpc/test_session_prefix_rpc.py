"""A session prefix resolves over the admin socket however many sessions the store holds.

The CLI used to fetch every session (up to 100,000) to match a prefix itself: past about
25,000 sessions the answer outgrew gRPC's 4 MiB message limit and `sessions kill PREFIX`,
`play`, `export` and `audit search --session` failed ("resource_exhausted ... is `stockade up`
running?"). Identity now matches the prefix and answers at most 21 sessions.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from stockade.cli.sessions import find_session
from stockade.core import InvalidInput
from stockade.rpc import IdentityClient, admin_channel
from stockade.store import SessionRow

from .test_rpc import Served, served

__all__ = ["served"]  # the fixture

MANY = 30_000


async def test_prefix_of_one_among_many_sessions(served: Served) -> None:
    await served.identity.add_user("alice")
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"s-{i:024x}",
            "username": "alice",
            "workspace": "alice",
            "client_ip": "127.0.0.1",
            "client_port": 40000,
            "started_at": now,
            "ended_at": now,
            "recording": f"/var/lib/stockade/recordings/s-{i:024x}.cast",
            "end_reason": "closed",
            "gateway_id": "gateway-0123456789",
            "boot_id": "b" * 32,
        }
        for i in range(MANY)
    ]
    rows.append({**rows[0], "id": "s-feedface0123456789abcdef"})
    async with served.identity._store.transaction() as session:
        await session.execute(insert(SessionRow), rows)
    async with admin_channel(served.socket) as channel:
        client = IdentityClient(channel, target="admin")
        chosen = await find_session(client, "s-feedface", min_prefix=6)
        assert chosen.session_id == "s-feedface0123456789abcdef"
        with pytest.raises(InvalidInput) as ambiguous:
            await find_session(client, "s-0000000000000000000000", min_prefix=6)
        assert "more than 20" in str(ambiguous.value)
