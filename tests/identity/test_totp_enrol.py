"""Two TOTP enrolments of one user at once: without ``replace`` only one may win.

`stockade users totp enroll USER` (no `--replace`) refuses when USER already has a secret.
Checked apart from the write, two admins enrolling at once both passed the check, both were
shown a secret, and the first one's secret had silently stopped working. The check is in the
transaction that writes (row locked), on each database.
"""

from __future__ import annotations

import asyncio
import base64

from stockade.core import InvalidInput
from stockade.identity import IdentityService, TotpEnrollment, totp_code

from .conftest import FakeClock


def _raw(enrollment: TotpEnrollment) -> bytes:
    return base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))


async def test_two_enrolments_without_replace_one_wins(
    service: IdentityService, clock: FakeClock
) -> None:
    await service.add_user("alice")
    outcomes = await asyncio.gather(
        service.enable_totp("alice", replace=False),
        service.enable_totp("alice", replace=False),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, TotpEnrollment)]
    refused = [o for o in outcomes if isinstance(o, InvalidInput)]
    assert len(won) == 1, outcomes
    assert len(refused) == 1, outcomes
    assert "--replace" in str(refused[0])
    step = int(clock.now) // 30
    assert await service.verify_totp("alice", totp_code(_raw(won[0]), step))  # the shown one


async def test_replace_changes_the_secret(service: IdentityService, clock: FakeClock) -> None:
    await service.add_user("alice")
    first = await service.enable_totp("alice", replace=False)
    second = await service.enable_totp("alice", replace=True)
    step = int(clock.now) // 30
    assert not await service.verify_totp("alice", totp_code(_raw(first), step))
    assert await service.verify_totp("alice", totp_code(_raw(second), step))
