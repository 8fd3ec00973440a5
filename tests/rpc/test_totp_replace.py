"""`EnableTotp` over the admin socket carries `replace`: without it an enrolled secret stays
(the check runs in identity's own transaction, not in the CLI before the call)."""

from __future__ import annotations

import pytest

from stockade.core import InvalidInput
from stockade.rpc import IdentityClient, admin_channel

from .test_rpc import Served, served

__all__ = ["served"]  # the fixture


async def test_enable_totp_without_replace_keeps_the_enrolled_secret(served: Served) -> None:
    await served.identity.add_user("alice")
    async with admin_channel(served.socket) as channel:
        client = IdentityClient(channel, target="admin")
        first = await client.enable_totp("alice", replace=False)
        with pytest.raises(InvalidInput) as refused:
            await client.enable_totp("alice", replace=False)
        assert refused.value.field == "totp"
        second = await client.enable_totp("alice")  # replace by default, as before
    assert first.secret != second.secret
