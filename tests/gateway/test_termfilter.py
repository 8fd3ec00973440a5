"""The replay filter: a recording's hostile control sequences never reach the admin's terminal.

The recorded user chose every byte of a recording's output; `stockade sessions play` writes it
to an administrator's terminal. These cases feed the sequences a hostile user would record
(clipboard writes, titles, reports, 8-bit controls, sequences split across events) and check
what comes out, whole and split at every position.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stockade.gateway import TerminalFilter, play_cast

ESC = "\x1b"

HOSTILE = [
    (f"{ESC}]52;c;ZWNobyBwd25lZAo={ESC}\\", "OSC 52 clipboard write, ST"),
    (f"{ESC}]52;c;ZWNobyBwd25lZAo=\x07", "OSC 52 clipboard write, BEL"),
    (f"{ESC}]0;rm -rf ~\x07", "window title"),
    (f"{ESC}]2;title{ESC}\\", "window title, ST"),
    (f"{ESC}]8;;https://evil.example/{ESC}\\", "hyperlink"),
    (f"{ESC}]1337;File=name=eA==;inline=0:aGk=\x07", "iTerm2 file transfer"),
    (f"{ESC}]10;?\x07", "colour query"),
    (f'{ESC}P$q"p{ESC}\\', "DECRQSS"),
    (f"{ESC}Ptmux;{ESC}{ESC}]52;c;eA=={ESC}{ESC}\\{ESC}\\", "tmux passthrough"),
    (f"{ESC}_Ga=T,f=100;AAAA{ESC}\\", "kitty graphics (APC)"),
    (f"{ESC}^privacy message{ESC}\\", "PM"),
    (f"{ESC}Xstart of string{ESC}\\", "SOS"),
    (f"{ESC}[21t", "title report"),
    (f"{ESC}[8;100;300t", "window resize"),
    (f"{ESC}[6n", "cursor position report"),
    (f"{ESC}[c", "device attributes"),
    (f"{ESC}[>c", "secondary device attributes"),
    (f"{ESC}[>0q", "XTVERSION"),
    (f"{ESC}[>1u", "keyboard protocol push"),
    (f"{ESC}[>4;2m", "modifyOtherKeys"),
    (f"{ESC}[?1$p", "DECRQM"),
    (f"{ESC}[5i", "printer controller on"),
    (f"{ESC}Z", "DECID"),
    ("\x05", "ENQ answerback"),
    ("\x9d52;c;eA==\x9c", "8-bit OSC"),
    ('\x90$q"p\x9c', "8-bit DCS"),
    ("\x9b21t", "8-bit CSI title report"),
    ("\x9f kitty \x9c", "8-bit APC"),
]

KEPT = [
    f"{ESC}[31mred{ESC}[0m",
    f"{ESC}[38;2;255;0;0mtrue colour{ESC}[m",
    f"{ESC}[2J{ESC}[H{ESC}[10;5H",
    f"{ESC}[?1049h{ESC}[?25l{ESC}[?2004h",
    f"{ESC}(0lqk{ESC}(B",
    f"{ESC}7{ESC}8{ESC}M",
    "tab\there\r\nback\bspace\x07",
    "ünïcödé → ✓ 日本",
]


def _filter_all(chunks: list[str]) -> str:
    screen = TerminalFilter()
    return "".join(screen.feed(chunk) for chunk in chunks)


@pytest.mark.parametrize(("sequence", "what"), HOSTILE, ids=[w for _, w in HOSTILE])
def test_hostile_sequences_are_removed_whole(sequence: str, what: str) -> None:
    text = f"before{sequence}after"
    assert _filter_all([text]) == "beforeafter", what
    for cut in range(1, len(text)):  # split across two events, at every position
        assert _filter_all([text[:cut], text[cut:]]) == "beforeafter", (what, cut)


@pytest.mark.parametrize("text", KEPT)
def test_drawing_sequences_play_as_recorded(text: str) -> None:
    assert _filter_all([text]) == text
    for cut in range(1, len(text)):
        assert _filter_all([text[:cut], text[cut:]]) == text, cut


def test_an_8bit_csi_plays_as_its_7bit_form() -> None:
    assert _filter_all(["\x9b31mred"]) == f"{ESC}[31mred"


def test_interrupted_sequences_resume_as_text() -> None:
    # CAN cancels a sequence; an ESC ends a string and starts its own sequence
    assert _filter_all([f"a{ESC}[3\x18b"]) == "ab"
    assert _filter_all([f"a{ESC}]0;title{ESC}[31mred"]) == f"a{ESC}[31mred"
    screen = TerminalFilter()
    assert screen.feed(f"shown{ESC}]0;never terminated, hidden") == "shown"
    assert screen.inside_string
    assert screen.removed == 1


def test_overlong_csi_is_dropped() -> None:
    assert _filter_all([f"a{ESC}[" + "1;" * 500 + "mb"]) == "ab"


def test_play_cast_filters_unless_raw(tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    events = [[0.1, "o", f"hi{ESC}]52;c;"], [0.2, "o", f"ZWNobw=={ESC}\\ there{ESC}[31m!"]]
    cast.write_text(
        json.dumps({"version": 2, "width": 80, "height": 24})
        + "\n"
        + "".join(json.dumps(e) + "\n" for e in events)
    )
    written: list[str] = []
    screen = TerminalFilter()
    play_cast(cast, written.append, sleep=lambda _: None, terminal_filter=screen)
    assert "".join(written) == f"hi there{ESC}[31m!"
    assert screen.removed == 1
    written.clear()
    play_cast(cast, written.append, sleep=lambda _: None)  # the filter is on by default
    assert "".join(written) == f"hi there{ESC}[31m!"
    written.clear()
    play_cast(cast, written.append, sleep=lambda _: None, raw=True)
    assert "".join(written) == "".join(e[2] for e in events)  # type: ignore[misc]
