"""Tailing a live cast for the page: the reset, each new output event, no input, the end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from stockade.console import tail_cast


def _events(chunks: list[bytes]) -> list[tuple[str | None, object]]:
    out: list[tuple[str | None, object]] = []
    for chunk in chunks:
        text = chunk.decode()
        event = None
        data = []
        for line in text.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, json.loads("\n".join(data))))
    return out


async def test_reset_then_new_output_then_done(tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    with cast.open("w") as out:
        out.write('{"version": 2, "width": 100, "height": 30}\n')
        out.write('[0.1, "o", "before\\r\\n"]\n[0.2, "i", "typed-secret\\r"]\n')
        out.flush()
        live = True

        async def is_live() -> bool:
            return live

        got: list[bytes] = []

        async def consume() -> None:
            async for chunk in tail_cast(cast, is_live, poll=0.01):
                got.append(chunk)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        out.write('[0.3, "o", "after')  # half a line: nothing yet
        out.flush()
        await asyncio.sleep(0.1)
        assert len(got) == 1
        out.write('\\r\\n"]\n[0.4, "i", "more-input"]\nnot json\n')
        out.flush()
        await asyncio.sleep(0.1)
        live = False
        await asyncio.wait_for(task, 5)
    events = _events(got)
    assert events[0] == (None, {"cols": 100, "rows": 30, "time": 0.1, "init": "before\r\n"})
    assert events[1] == (None, [0.3, "o", "after\r\n"])
    assert events[-1] == ("done", {})
    assert len(events) == 3
    assert b"secret" not in b"".join(got)
    assert b"more-input" not in b"".join(got)


async def test_a_file_that_is_no_cast_goes_offline(tmp_path: Path) -> None:
    cast = tmp_path / "bad.cast"
    cast.write_text("not a header\n")

    async def is_live() -> bool:
        return True

    got = [chunk async for chunk in tail_cast(cast, is_live)]
    assert _events(got) == [(None, {"state": "offline"})]
