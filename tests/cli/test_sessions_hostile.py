"""`stockade sessions play|export` against hostile recordings and careless output paths.

The recorded user chose every byte of a recording's output, and an administrator replays it:
control sequences beyond drawing (OSC 52 clipboard writes, titles, reports) are removed;
malformed events are one error line naming the file and line. `export -o FILE` writes a
private file (recordings hold whatever the session showed), never through a symlink and never
over an existing file without `--force`. Real store (SQLite), real app, no server.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from . import test_users_sessions_cli as base
from .test_users_sessions_cli import _fresh, invoke, ok, one_error_line

__all__ = ["_fresh"]  # the autouse fixture: a fresh data dir for every case

ESC = "\x1b"
SID = "s-hostile-0123456789abcdef"
HEADER = json.dumps({"version": 2, "width": 80, "height": 24, "timestamp": 0})


def _recording(tmp_path: Path, lines: list[str], sid: str = SID) -> Path:
    path = tmp_path / f"{sid}.cast"
    path.write_text(HEADER + "\n" + "".join(line + "\n" for line in lines))
    if invoke("users", "show", "alice").exit_code != 0:
        ok("users", "add", "alice")
    base._sessions(tmp_path, {sid: str(path)})
    return path


def test_play_removes_clipboard_title_and_report_sequences(tmp_path: Path) -> None:
    hostile = (
        f"ok {ESC}]52;c;cm0gLXJmIH4K\x07{ESC}]0;fake title{ESC}\\{ESC}[21t"
        f'{ESC}P$q"p{ESC}\\\x9d52;c;eA==\x9c{ESC}[31mred{ESC}[0m done'
    )
    _recording(tmp_path, [json.dumps([0.1, "o", hostile[:9]]), json.dumps([0.2, "o", hostile[9:]])])
    result = ok("sessions", "play", SID[:12], "-i", "0.001")
    assert result.stdout == f"ok {ESC}[31mred{ESC}[0m done"
    assert "removed 5 terminal control sequence(s)" in result.stderr
    raw = ok("sessions", "play", SID, "-i", "0.001", "--raw")
    assert raw.stdout == hostile  # as recorded, when asked for
    assert "--raw" in invoke("sessions", "play", "--help", env={"COLUMNS": "200"}).stdout


@pytest.mark.parametrize(
    ("line", "number"),
    [
        ('["abc", "o", "x"]', 2),  # a time that is no number (ValueError in float())
        ('[[1], "o", "x"]', 2),  # TypeError in float()
        ('[true, "o", "x"]', 2),
        ('[1, 5, "x"]', 2),
        ('[1, "o", 5]', 2),
        ('[1, "o", "\\ud800"]', 2),  # a lone surrogate: no text to write
        ("[" * 100_000, 2),  # RecursionError in json
    ],
)
def test_play_and_export_of_a_malformed_event_is_one_line(
    tmp_path: Path, line: str, number: int
) -> None:
    path = _recording(tmp_path, [json.dumps([0.1, "o", "fine"]), line, json.dumps([1, "o", "x"])])
    for argv in (["play", SID, "-i", "0.001"], ["export", SID, "-o", "-"]):
        error = one_error_line(invoke("sessions", *argv))
        assert f"{path}:{number + 1}" in error, error


def test_play_of_bytes_that_are_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = _recording(tmp_path, [json.dumps([0.1, "o", "fine"])])
    with path.open("ab") as handle:
        handle.write(b'[1, "o", "\xff\xfe"]\n')
    error = one_error_line(invoke("sessions", "play", SID, "-i", "0.001"))
    assert str(path) in error
    assert "UTF-8" in error


def test_export_escapes_8bit_controls(tmp_path: Path) -> None:
    data = "a\x9d52;c;eA==\x9cb \u00e9"
    _recording(tmp_path, [json.dumps([0.1, "o", data])])
    out = ok("sessions", "export", SID, "-o", "-").stdout
    assert not any("\x80" <= c <= "\x9f" for c in out)
    assert json.loads(out.splitlines()[1]) == [0.1, "o", data]  # the same cast, escaped
    assert "\u00e9" in out  # other text stays literal


@pytest.fixture
def exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _recording(tmp_path, [json.dumps([0.1, "o", "secret on screen"])])
    # through a running server's admin socket nothing sets the umask: a shell's 022 applies
    from stockade.cli import _admin

    prepare = _admin.prepare_data_dir

    def prepare_then_default_umask(settings: object) -> Path:
        data_dir = prepare(settings)  # type: ignore[arg-type]
        os.umask(0o022)
        return data_dir

    monkeypatch.setattr(_admin, "prepare_data_dir", prepare_then_default_umask)
    return tmp_path


def test_export_file_is_private(exported: Path) -> None:
    out = exported / "copy.cast"
    ok("sessions", "export", SID, "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "secret on screen" in out.read_text()


def test_export_keeps_an_existing_file_unless_forced(exported: Path) -> None:
    out = exported / "copy.cast"
    out.write_text("precious\n")
    error = one_error_line(invoke("sessions", "export", SID, "-o", str(out)))
    assert "--output" in error
    assert "--force" in error
    assert out.read_text() == "precious\n"
    ok("sessions", "export", SID, "-o", str(out), "--force")
    assert "secret on screen" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_export_never_writes_through_a_symlink(exported: Path) -> None:
    victim = exported / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    link = exported / "link.cast"
    link.symlink_to(victim)
    for force in ([], ["--force"]):
        one_error_line(invoke("sessions", "export", SID, "-o", str(link), *force))
        assert victim.read_text() == "keep\n"
        assert link.is_symlink()


@pytest.mark.parametrize("special", ["/dev/null", "/dev/stdout"])
def test_export_force_never_replaces_a_device_or_link(exported: Path, special: str) -> None:
    before = os.lstat(special)
    error = one_error_line(invoke("sessions", "export", SID, "-o", special, "--force"))
    assert "no regular file" in error
    after = os.lstat(special)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )


@pytest.mark.parametrize("where", ["missing-dir/x.cast", ".", ""])
def test_export_to_a_bad_path_is_one_line(exported: Path, where: str) -> None:
    target = str(exported / where) if where else ""
    error = one_error_line(invoke("sessions", "export", SID, "-o", target))
    assert "--output" in error
    assert not list(exported.glob(".*.tmp"))


def test_export_of_a_bad_recording_leaves_no_file(exported: Path) -> None:
    _recording(exported, [json.dumps([0.1, "o", "x"]), '["bad"]', "[1]"], sid="s-bad-0123456789")
    out = exported / "bad.cast"
    one_error_line(invoke("sessions", "export", "s-bad-0123456789", "-o", str(out)))
    assert not out.exists()
    assert not list(exported.glob(".*.tmp"))


def test_keys_remove_prints_the_name_literally(tmp_path: Path) -> None:
    public = base.keygen(tmp_path / "k", "me@host")
    ok("users", "add", "alice", "--ssh-key", str(public))
    fingerprint = json.loads(ok("users", "keys", "list", "alice", "--json").stdout)[0]
    result = ok("users", "keys", "remove", "alice", fingerprint["fingerprint"][7:15])
    assert "[bold]" not in result.stdout
    assert " ".join(result.stdout.split()).endswith("from alice")


def test_a_key_comment_with_8bit_controls_is_refused(tmp_path: Path) -> None:
    public = base.keygen(tmp_path / "k", "me@host")
    kind, blob, _ = public.read_text().split()
    for comment in ("evil\x9d52;c;ZWNobw==\x9c", "a\u2028b", "x\x85y"):
        hostile = tmp_path / "hostile.pub"
        hostile.write_text(f"{kind} {blob} {comment}\n")
        error = one_error_line(invoke("users", "add", "mallory", "--ssh-key", str(hostile)))
        if "\x9d" in comment:  # (U+2028 and U+0085 already split the line: refused too)
            assert "control characters" in error
    assert invoke("users", "show", "mallory").exit_code == 2  # not added


def test_tables_print_controls_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from stockade.cli._common import print_table

    print_table("t", ["a", "b"], [["x\x9d52;c;eA==\x9c", "\u202eyeknom"], ["two\nlines", "é"]])
    out = capsys.readouterr().out
    assert not any("\x80" <= c <= "\x9f" for c in out)
    assert "\u202e" not in out
    assert "x\\x9d52;c;eA==\\x9c" in out
    assert "\\u202eyeknom" in out
    for kept in ("two", "lines", "é"):
        assert kept in out


@pytest.mark.parametrize("argv", [["export", SID, "-o", "-"], ["play", SID, "-i", "1e-6"]])
def test_a_reader_that_stops_early_is_no_error(tmp_path: Path, argv: list[str]) -> None:
    """`sessions export ID -o - | head -n 2` (the README's line) under `set -o pipefail`: a
    cast larger than the pipe's buffer made export fail with "error: Broken pipe", exit 2."""
    import shlex
    import subprocess
    import sys

    _recording(tmp_path, [json.dumps([i * 1e-6, "o", f"line {i}\r\n"]) for i in range(20_000)])
    stockade = Path(sys.executable).with_name("stockade")
    script = f"set -euo pipefail; {shlex.join([str(stockade), 'sessions', *argv])} | head -n 2"
    env = {**os.environ, "STOCKADE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 2


def test_play_to_a_terminal_restores_its_modes(tmp_path: Path) -> None:
    """A recording that ends in the alternate screen with mouse reporting on (a session cut
    during `vim`) leaves the admin's terminal as a shell expects it."""
    import pty
    import select
    import subprocess
    import sys

    from stockade.gateway import TerminalFilter

    _recording(tmp_path, [json.dumps([0.1, "o", f"{ESC}[?1049h{ESC}[?1000h{ESC}[?25lvim"])])
    stockade = Path(sys.executable).with_name("stockade")
    env = {**os.environ, "STOCKADE_DATA_DIR": str(tmp_path / "data")}
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(stockade), "sessions", "play", SID, "-i", "0.001"],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        os.close(slave)
        chunks: list[bytes] = []
        for _ in range(1000):  # bounded: until the pty closes
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    out = b"".join(chunks).decode()
    assert out.endswith(TerminalFilter.RESTORE)
    assert "vim" in out
