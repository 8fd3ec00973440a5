from __future__ import annotations

import json
from pathlib import Path

import pytest

from stockade.core.errors import InvalidInput
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
