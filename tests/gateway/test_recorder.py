from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from stockade.bus import Bus
from stockade.core.errors import InvalidInput
from stockade.core.events import STREAM_AUDIT, SUBJECT_RECORDINGS_SWEPT, RecordingsSwept
from stockade.gateway import RecordingSweeper, export_cast, resolve_cast, sweep_recordings
from stockade.gateway._recorder import CastRecorder, iter_cast, play_cast


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(path: Path, *, record_input: bool, max_bytes: int = 1 << 20) -> CastRecorder:
    clock = _Clock()
    rec = CastRecorder(
        path,
        width=80,
        height=24,
        env={"TERM": "xterm", "SHELL": "/bin/bash", "SECRET": "x"},
        title="alice@ws",
        record_input=record_input,
        max_bytes=max_bytes,
        clock=clock,
    )
    clock.now = 100.5
    rec.output(b"hello \xe2\x82")  # a euro sign split across two reads
    rec.input(b"ls\r")
    clock.now = 101.0
    rec.output(b"\xac\r\n")
    rec.resize(100, 30)
    rec.close()
    return rec


def test_header_and_events(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    _record(path, record_input=True)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    assert header["env"] == {"TERM": "xterm", "SHELL": "/bin/bash"}
    events = [json.loads(line) for line in lines[1:]]
    assert events == [
        [0.5, "o", "hello "],
        [0.5, "i", "ls\r"],
        [1.0, "o", "€\r\n"],
        [1.0, "r", "100x30"],
    ]
    assert path.stat().st_mode & 0o777 == 0o600


def test_input_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    _record(path, record_input=False)
    kinds = [item[1] for item in iter_cast(path) if isinstance(item, list)]
    assert "i" not in kinds


def test_size_limit_truncates_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = CastRecorder(
        path, width=80, height=24, env={}, title="t", record_input=False, max_bytes=4096
    )
    for _ in range(100):
        rec.output(b"x" * 100)
    rec.close()
    assert path.stat().st_size < 4096 + 200
    assert "size limit" in path.read_text().splitlines()[-1]


def test_play_scales_and_caps_pauses(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_text(
        '{"version": 2, "width": 80, "height": 24}\n'
        '[1.0, "o", "a"]\n[1.5, "i", "x"]\n[11.5, "o", "b"]\n[11.5, "r", "1x1"]\n'
    )
    out: list[str] = []
    sleeps: list[float] = []
    count = play_cast(path, out.append, speed=2.0, max_idle=2.0, sleep=sleeps.append)
    assert out == ["a", "b"]
    assert count == 2
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    "content", ['{"version": 1}\n', '{"version": 2}\n[1, "o"]\n', '{"version": 2}\nnope\n']
)
def test_rejects_other_formats(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.cast"
    path.write_text(content)
    with pytest.raises(InvalidInput):
        list(iter_cast(path))


def test_play_rejects_bad_speed(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        play_cast(tmp_path / "x.cast", print, speed=0)


# --- recordings that survive a crash (issue 11) ---------------------------------------------

CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from stockade.gateway import CastRecorder

async def main() -> None:
    rec = CastRecorder(Path(sys.argv[1]), width=80, height=24, env={}, title="t",
                       record_input=True, max_bytes=1 << 20)
    for n in range(1000):
        rec.output(f"line {n}\\r\\n".encode())
        if n % 3 == 0:
            rec.input(b"k")
        print(n, flush=True)
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


def test_kill_9_leaves_a_playable_cast(tmp_path: Path) -> None:
    """The recorder's process is killed mid-session: every event recorded more than the flush
    interval before the kill plays back, input included."""

    path = tmp_path / "s.cast"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = -1
    while seen < 20:
        seen = int(proc.stdout.readline())
    time.sleep(0.3)  # longer than the 100 ms flush interval
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    items = list(iter_cast(path))
    assert isinstance(items[0], dict)
    outputs = [item[2] for item in items[1:] if isinstance(item, list) and item[1] == "o"]
    assert outputs[: seen + 1] == [f"line {n}\r\n" for n in range(seen + 1)]
    assert any(isinstance(item, list) and item[1] == "i" for item in items)
    played: list[str] = []
    play_cast(path, played.append, sleep=lambda _s: None)
    assert played[: seen + 1] == outputs[: seen + 1]


class _Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cast_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_events_are_written_within_the_flush_interval(tmp_path: Path) -> None:

    timer = _Timer()
    path = tmp_path / "s.cast"
    rec = CastRecorder(
        path, width=80, height=24, env={}, title="t", record_input=False, max_bytes=1 << 20,
        flush_interval=0.05, timer=timer,
    )  # fmt: skip
    assert len(_cast_lines(path)) == 1  # the header is on disk from the start
    rec.output(b"a")
    rec.output(b"b")
    assert len(_cast_lines(path)) == 1  # buffered...
    await asyncio.sleep(0.2)
    assert [json.loads(x)[2] for x in _cast_lines(path)[1:]] == ["a", "b"]  # ...then written
    rec.output(b"c")
    rec.resize(100, 40)  # a resize is written at once, with what was buffered
    assert [json.loads(x)[2] for x in _cast_lines(path)[1:]] == ["a", "b", "c", "100x40"]
    rec.close()


def test_fsync_at_most_once_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    synced: list[float] = []
    real = os.fdatasync
    timer = _Timer()

    def counting(fd: int) -> None:
        synced.append(timer.now)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    rec = CastRecorder(
        tmp_path / "s.cast", width=80, height=24, env={}, title="t", record_input=False,
        max_bytes=1 << 30, timer=timer,
    )  # fmt: skip
    for step in range(300):  # 3 seconds of output, an event every 10 ms, written through
        timer.now = step * 0.01
        rec.output(b"x" * 10)
    rec.close()
    assert synced[0] == 0.0  # the header
    gaps = [b - a for a, b in itertools.pairwise(synced[:-1])]
    assert all(gap >= 1.0 - 1e-9 for gap in gaps), synced
    assert 3 <= len(synced) <= 5  # header, about one a second, and close


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "ok"]\n[0.2, "o", "cu')
    assert list(iter_cast(path))[1:] == [[0.1, "o", "ok"]]
    path.write_text('{"version": 2, "width": 80, "height": 24}\nnope\n[0.2, "o", "x"]\n')
    with pytest.raises(InvalidInput, match=":2"):  # damage before the end is still an error
        list(iter_cast(path))


def test_compressed_cast_plays_and_exports(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = CastRecorder(
        path, width=80, height=24, env={}, title="t", record_input=True, max_bytes=1 << 20,
        compress="gzip",
    )  # fmt: skip
    rec.output(b"hello\r\n")
    rec.input(b"q")
    rec.close()
    assert rec.path == tmp_path / "s.cast.gz"
    assert not path.exists()
    assert rec.path.stat().st_mode & 0o777 == 0o600
    assert rec.path.read_bytes()[:2] == b"\x1f\x8b"
    assert resolve_cast(path) == rec.path  # the path stored at session start still finds it
    out: list[str] = []
    assert play_cast(path, out.append, sleep=lambda _s: None) == 1
    assert out == ["hello\r\n"]
    exported = tmp_path / "out.cast"
    assert export_cast(path, exported) == 2
    lines = exported.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    assert [json.loads(x)[1:] for x in lines[1:]] == [["o", "hello\r\n"], ["i", "q"]]


async def test_aclose_compresses_in_a_thread(tmp_path: Path) -> None:
    rec = CastRecorder(
        tmp_path / "s.cast", width=80, height=24, env={}, title="t", record_input=False,
        max_bytes=1 << 20, compress="gzip",
    )  # fmt: skip
    rec.output(b"x")
    await rec.aclose()
    assert rec.path.name == "s.cast.gz"
    assert [i[2] for i in iter_cast(rec.path) if isinstance(i, list)] == ["x"]


def test_planted_file_or_symlink_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    path = tmp_path / "s.cast"
    path.symlink_to(target)
    with pytest.raises(FileExistsError):
        CastRecorder(path, width=80, height=24, env={}, title="t", record_input=False,
                     max_bytes=4096)  # fmt: skip
    assert target.read_text() == "keep"


def test_sweep_removes_only_old_recordings(tmp_path: Path) -> None:
    import time

    now = time.time()
    old = [tmp_path / "a.cast", tmp_path / "b.cast.gz"]
    young = tmp_path / "c.cast"
    other = tmp_path / "notes.txt"
    for f in [*old, young, other]:
        f.write_bytes(b"12345")
    for f in [*old, other]:
        os.utime(f, (now - 91 * 86400, now - 91 * 86400))
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "x.cast").write_text("x")
    os.utime(victim / "x.cast", (0, 0))
    (tmp_path / "link.cast").symlink_to(victim / "x.cast")
    event = sweep_recordings(tmp_path, timedelta(days=90), now=now)
    assert event.removed == ["a.cast", "b.cast.gz"]
    assert (event.removed_count, event.removed_bytes, event.keep_seconds) == (2, 10, 90 * 86400)
    assert young.exists()
    assert other.exists()
    assert (victim / "x.cast").exists()
    assert not any(f.exists() for f in old)
    with pytest.raises(InvalidInput):
        sweep_recordings(tmp_path, timedelta(0))


async def test_daily_sweep_is_audited_on_the_bus(tmp_path: Path, nats_url: str) -> None:

    (tmp_path / "old.cast").write_text("x")
    os.utime(tmp_path / "old.cast", (0, 0))
    bus = await Bus.connect(nats_url, name="sweep-test")
    await bus.ensure_streams()
    before = await bus.last_sequence(STREAM_AUDIT, SUBJECT_RECORDINGS_SWEPT)
    sweeper = RecordingSweeper(tmp_path, timedelta(days=1), publisher=bus, interval=3600)
    await sweeper.start()
    try:
        for _ in range(100):
            if await bus.last_sequence(STREAM_AUDIT, SUBJECT_RECORDINGS_SWEPT) > before:
                break
            await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
    raw = await bus.js.get_last_msg(STREAM_AUDIT, SUBJECT_RECORDINGS_SWEPT)
    event = RecordingsSwept.from_bytes(raw.data or b"")
    assert event.removed == ["old.cast"]
    assert event.directory == str(tmp_path)
    assert sweeper.sweeps == 1
    await bus.close()


def test_fast_json_string_matches_json_dumps() -> None:
    import random

    from stockade.gateway._recorder import _json_string

    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0, 128)] + ["é", "€", "\u2028", "😀", "\\", '"']
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert _json_string(text) == json.dumps(text, ensure_ascii=False), repr(text)
    terminal = '\x1b[1;32mok\x1b[0m\r\n\ttab "q" back\\slash \x07\x08'
    assert _json_string(terminal) == json.dumps(terminal, ensure_ascii=False)
