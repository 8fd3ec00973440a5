"""The embedded server as `stockade up` runs it: only holders of the 0600 token get in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stockade.bus import Bus, EmbeddedNats
from stockade.core import BusUnavailable


async def test_token_required_and_private(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, auth=True, connect_timeout=10)
    async with server as url:
        token = server.token
        assert token
        assert token not in url
        token_file = tmp_path / "nats" / "token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "nats" / "auth.conf").st_mode) == 0o600
        assert EmbeddedNats.read_token(tmp_path) == token

        with pytest.raises(BusUnavailable):
            await Bus.connect(url, name="intruder", connect_timeout=1)
        with pytest.raises(BusUnavailable):
            await Bus.connect(url, name="guesser", connect_timeout=1, token="guess")

        bus = await Bus.connect(url, name="holder", token=token)
        await bus.ensure_streams()
        await bus.close()

    again = EmbeddedNats(tmp_path, auth=True, connect_timeout=10)
    async with again:
        assert again.token == token  # kept across restarts
