"""`find_sessions(prefix)`: a session id prefix is matched exactly, on each database.

`sessions kill PREFIX` ends the one session a prefix names. `_` and `.` are legal in ids, so a
SQL `LIKE` pattern would let `s-a_` name `s-abc`; case-insensitive matching (SQLite's LIKE)
would let `S-ABC` name `s-abc`. Neither may happen.
"""

from __future__ import annotations

import pytest

from stockade.core import InvalidInput
from stockade.identity import IdentityService


async def _start(service: IdentityService, *ids: str) -> None:
    await service.add_user("alice")
    for sid in ids:
        await service.start_session(
            sid, username="alice", workspace="alice", client_ip="127.0.0.1", client_port=1
        )


async def test_prefix_is_no_pattern_and_case_matters(service: IdentityService) -> None:
    await _start(service, "s-abc", "s-a_c", "s-a.c", "s-xyz")

    async def found(prefix: str) -> list[str]:
        return [s.session_id for s in await service.find_sessions(prefix)]

    assert await found("s-a_") == ["s-a_c"]
    assert await found("s-a.") == ["s-a.c"]
    assert await found("s-a") == ["s-a.c", "s-a_c", "s-abc"]
    assert await found("S-ABC") == []
    assert await found("s-abc") == ["s-abc"]
    assert await found("s-abcd") == []
    for bad in ("s-%", "s-a*", "", "s-a c", "x" * 65):
        with pytest.raises(InvalidInput):
            await service.find_sessions(bad)


async def test_limit_bounds_the_answer(service: IdentityService) -> None:
    await _start(service, *(f"s-{i:04d}" for i in range(30)))
    assert len(await service.find_sessions("s-00", limit=21)) == 21
    for bad in (0, 1001):
        with pytest.raises(InvalidInput):
            await service.find_sessions("s-", limit=bad)
