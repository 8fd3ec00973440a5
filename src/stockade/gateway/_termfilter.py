"""What a recording may send to the terminal that replays it.

A recording is what the session's user made the terminal print, and ``stockade sessions play``
writes it to an administrator's terminal: a hostile user can record control sequences aimed
at that terminal. ``asciinema play`` writes them as recorded; Stockade removes, by default,
everything that acts beyond drawing the screen:

- every string sequence, whatever its content: OSC (``ESC ]``: clipboard writes with OSC 52,
  window titles, hyperlinks, palette changes, notifications, iTerm2 file transfers), DCS
  (``ESC P``: DECRQSS and other requests, tmux passthrough, sixel), SOS, PM and APC (kitty
  graphics), up to their terminator (BEL, ``ESC \\``, ST) or an ESC, CAN or SUB;
- CSI sequences that ask the terminal to answer or act on its window: window operations and
  title reports (``t``), device status and attribute reports (``n``, ``c``, ``x``), printer
  control (``i``), DECRQM (``$p``) and friends (``$w``, ``$u``), and every sequence with a
  ``>``, ``<`` or ``=`` private marker (DA2/DA3, XTVERSION, keyboard-protocol and
  modifyOtherKeys changes that would outlive the replay);
- ``ESC Z`` (DECID), ENQ (answerback) and the other C0 controls a screen does not need
  (BEL, BS, HT, LF, VT, FF, CR, SO, SI are kept);
- every C1 control (U+0080 to U+009F; an 8-bit CSI is replayed as ``ESC [``, checked as above).

Cursor movement, colours, modes (``CSI ? ... h``), charsets and erasing pass unchanged, so the
replay looks as the session did. The filter keeps its state between chunks: a sequence split
across two events is handled whole.
"""

from __future__ import annotations

import re

__all__ = ["TerminalFilter"]

_GROUND, _ESC, _CSI, _CSI_IGNORE, _STRING, _STRING_ESC = range(6)

#: Characters that end plain text: ESC, the C0 controls not kept, C1 controls.
_SPECIAL = re.compile("[\x00-\x06\x10-\x1f\x80-\x9f]")
#: What ends a string sequence (or interrupts it).
_STRING_END = re.compile("[\x07\x18\x1a\x1b\x9c]")
#: ESC, then one of these: a string sequence (OSC, DCS, SOS, PM, APC).
_STRING_INTRODUCERS = "]PX^_"
_C1_STRINGS = "\x90\x98\x9d\x9e\x9f"
#: CSI final bytes that make the terminal answer or act outside the screen.
_CSI_REFUSED_FINALS = frozenset("tncxi")
_CSI_REFUSED_DOLLAR = frozenset("pwu")
_CSI_MAX = 256


class TerminalFilter:
    """Feed output text chunk by chunk; each :meth:`feed` returns what is safe to write."""

    #: Written after a replay to a terminal: the modes a recording may leave on (attributes,
    #: line-drawing charset, hidden cursor, mouse reporting, alternate screen, application
    #: cursor keys and keypad) back to what a shell expects.
    RESTORE = (
        "\x1b[0m\x1b(B\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1049l\x1b[?1l\x1b>"
    )

    def __init__(self) -> None:
        self._state = _GROUND
        self._seq: list[str] = []
        self.removed = 0
        """How many control sequences were removed so far."""

    @property
    def inside_string(self) -> bool:
        """True when the text so far ended inside a removed string sequence."""
        return self._state in (_STRING, _STRING_ESC)

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            state = self._state
            if state == _GROUND:
                found = _SPECIAL.search(text, i)
                if found is None:
                    out.append(text[i:])
                    break
                j = found.start()
                out.append(text[i:j])
                char = text[j]
                i = j + 1
                if char == "\x1b":
                    self._state, self._seq = _ESC, ["\x1b"]
                elif char == "\x9b":
                    self._state, self._seq = _CSI, ["\x1b["]
                elif char in _C1_STRINGS:
                    self._state = _STRING
                    self.removed += 1
                # any other control of _SPECIAL is dropped
                continue
            if state in (_STRING, _STRING_ESC):
                if state == _STRING_ESC:
                    self._state = _GROUND
                    if text[i] == "\\":  # ST: the string ends here
                        i += 1
                    else:  # an ESC ends the string and starts a sequence of its own
                        self._state, self._seq = _ESC, ["\x1b"]
                    continue
                found = _STRING_END.search(text, i)
                if found is None:
                    break  # the rest of this chunk is inside the string
                i = found.end()
                self._state = _STRING_ESC if found.group() == "\x1b" else _GROUND
                continue
            char = text[i]
            i += 1
            if char in "\x18\x1a":  # CAN, SUB: the sequence is cancelled
                self._state = _GROUND
                continue
            if char == "\x1b":
                self._state, self._seq = _ESC, ["\x1b"]
                continue
            if not " " <= char <= "~":
                # a control, DEL or a character beyond ASCII inside a sequence: the sequence
                # is dropped and the character read again as text
                self._state = _GROUND
                self.removed += 1
                i -= 1
                continue
            if state == _ESC:
                self._escape(char, out)
            else:
                self._csi(char, out)
        return "".join(out)

    def _escape(self, char: str, out: list[str]) -> None:
        seq = self._seq
        if len(seq) == 1 and char == "[":
            self._state, self._seq = _CSI, ["\x1b["]
        elif len(seq) == 1 and char in _STRING_INTRODUCERS:
            self._state = _STRING
            self.removed += 1
        elif " " <= char <= "/":  # an intermediate byte
            if len(seq) > 8:
                self._state = _GROUND
                self.removed += 1
            else:
                seq.append(char)
        else:  # a final byte, "0" to "~"
            self._state = _GROUND
            if len(seq) == 1 and char == "Z":  # DECID: the terminal would answer
                self.removed += 1
            elif len(seq) == 1 and char == "\\":  # a stray ST (tmux passthrough): nothing
                pass
            else:
                out.append("".join(seq) + char)

    def _csi(self, char: str, out: list[str]) -> None:
        seq = self._seq
        if "\x20" <= char <= "\x3f":  # parameter and intermediate bytes
            if self._state == _CSI:
                if len(seq) > _CSI_MAX:
                    self._state = _CSI_IGNORE
                else:
                    seq.append(char)
            return
        self._state = _GROUND  # a final byte, "@" to "~"
        body = "".join(seq[1:])
        refused = (
            len(seq) > _CSI_MAX
            or char in _CSI_REFUSED_FINALS
            or (char in _CSI_REFUSED_DOLLAR and "$" in body)
            or body[:1] in (">", "<", "=")
        )
        if refused:
            self.removed += 1
        else:
            out.append("\x1b[" + body + char)
