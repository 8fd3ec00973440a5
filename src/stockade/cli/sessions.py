"""``stockade sessions``: list, replay, export and kill SSH sessions.

Every command that takes a session id accepts a unique prefix of one (as ``git`` does with
commit ids); an ambiguous prefix is one error line listing the candidates (exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.core import InvalidInput, NotFound, StockadeError
from stockade.identity import SessionInfo

from ._admin import AdminIdentity, admin_identity
from ._common import (
    JSON_OPTION,
    handle_errors,
    print_json,
    print_table,
    reader_may_stop,
    resolve_prefix,
    run_async,
    settings,
)

__all__ = ["app"]

app = typer.Typer(help="SSH sessions: list, replay, export, kill.", no_args_is_help=True)

DIRECT = typer.Option("--direct", help="Use the store directly.")


def _row(info: Any) -> dict[str, Any]:
    return {
        "session_id": info.session_id,
        "username": info.username,
        "workspace": info.workspace,
        "client_ip": info.client_ip,
        "client_port": info.client_port,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "exit_status": info.exit_status,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "recording": info.recording,
        "end_reason": info.end_reason,
    }


#: How many sessions a prefix may match before the candidates are no longer listed.
PREFIX_SHOWN = 20


#: Characters a prefix needs to name the session ``sessions kill`` ends.
KILL_MIN_PREFIX = 6


class NotRecorded(StockadeError):
    """The session exists but policy did not require a recording (exit 1: nothing to play)."""

    exit_code = 1


async def find_session(identity: AdminIdentity, given: str, *, min_prefix: int = 1) -> SessionInfo:
    """The session ``given`` names whole or by a unique prefix of at least ``min_prefix``
    characters (commands that end something ask for more, so ``s-`` never names the only
    session by accident)."""
    if not given:
        raise InvalidInput("session", "empty; give an id or a unique prefix of one")
    try:
        return await identity.get_session(given)
    except NotFound:
        pass
    except InvalidInput:
        raise InvalidInput("session", f"{given!r} is not a session id or a prefix of one") from None
    if len(given) < min_prefix:
        raise InvalidInput("session", f"give at least {min_prefix} characters of the id")
    # identity matches the prefix itself (exactly, any number of sessions): one short answer
    pool = await identity.find_sessions(given, limit=PREFIX_SHOWN + 1)
    if len(pool) > PREFIX_SHOWN:
        raise InvalidInput(
            "session", f"{given!r} matches more than {PREFIX_SHOWN} sessions; give more characters"
        )
    chosen = resolve_prefix(given, (s.session_id for s in pool), kind="session")
    return next(s for s in pool if s.session_id == chosen)


def _recording(session_id: str, direct: bool) -> tuple[str, Path]:
    async def lookup() -> SessionInfo:
        async with admin_identity(settings(), direct=direct) as identity:
            return await find_session(identity, session_id)

    from stockade.gateway import resolve_cast  # the gateway's imports only when a cast is read

    info = run_async(lookup())
    if not info.recording:
        raise NotRecorded(f"session {info.session_id}: not recorded (policy did not require it)")
    path = resolve_cast(Path(info.recording))  # also once compressed (.cast.gz)
    if not path.is_file():
        raise NotFound("recording file", f"{path} of session {info.session_id}")
    return info.session_id, path


@app.command("list")
@handle_errors
def list_(
    active: Annotated[bool, typer.Option("--active", help="Only live sessions.")] = False,
    user: Annotated[str | None, typer.Option(help="Only this user's sessions.")] = None,
    ids_only: Annotated[
        bool, typer.Option("--ids", "-q", help="Print only the full session ids, one a line.")
    ] = False,
    as_json: bool = JSON_OPTION,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Sessions, newest first, with their full ids (any unique prefix of one names it)."""

    async def run() -> list[dict[str, Any]]:
        async with admin_identity(settings(), direct=direct) as identity:
            rows = await identity.list_sessions(active_only=active, username=user)
        return [_row(info) for info in rows]

    rows = run_async(run())
    if ids_only:
        sys.stdout.write("".join(f"{r['session_id']}\n" for r in rows))
        return
    if as_json:
        print_json(rows)
        return
    print_table(
        "Sessions",
        ["id", "user", "workspace", "source", "started", "ended", "exit", "in", "out", "rec"],
        [
            [
                r["session_id"],
                r["username"],
                r["workspace"],
                f"{r['client_ip']}:{r['client_port']}",
                r["started_at"],
                r["ended_at"] or "live",
                r["exit_status"],
                r["bytes_in"],
                r["bytes_out"],
                "yes" if r["recording"] else "",
            ]
            for r in rows
        ],
    )


@app.command("play")
@handle_errors
def play(
    session_id: Annotated[str, typer.Argument(help="Session id or a unique prefix of one.")],
    speed: Annotated[float, typer.Option("--speed", "-s", help="Playback speed factor.")] = 1.0,
    idle_time_limit: Annotated[
        float,
        typer.Option(
            "--idle-time-limit",
            "-i",
            help="Shorten every pause longer than this many seconds to it (as asciinema -i).",
        ),
    ] = 2.0,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Write the output exactly as recorded, control sequences included "
            "(clipboard writes, titles, terminal reports: trust the recorded user first).",
        ),
    ] = False,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Replay a recorded session in this terminal.

    Only sessions whose decision carried the record_session obligation are recorded (in the
    shipped policy bundle: users with role contractor). Exit 1 when the session exists but
    was not recorded; exit 2 when no session has that id.

    The recorded user chose what the recording sends to your terminal, so control sequences
    that act beyond the screen (OSC such as the OSC 52 clipboard write and window titles, DCS,
    APC, terminal reports and window operations) are removed, and their count printed on
    stderr; colours and cursor movement play as recorded. ``--raw`` plays everything (as
    ``asciinema play`` does); ``sessions export`` keeps the recording whole.
    """
    if not speed > 0 or speed == float("inf"):
        raise InvalidInput("--speed", "must be a positive number")
    if not idle_time_limit > 0 or idle_time_limit == float("inf"):
        raise InvalidInput("--idle-time-limit", "must be a positive number of seconds")
    _, path = _recording(session_id, direct)
    from stockade.gateway import TerminalFilter, play_cast

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    screen = TerminalFilter()
    with reader_may_stop():
        play_cast(
            path, write, speed=speed, max_idle=idle_time_limit, raw=raw, terminal_filter=screen
        )
        if not raw and sys.stdout.isatty():
            write(screen.RESTORE)  # the recording may have left mouse mode or the alt screen on
    if screen.removed:
        hidden = " (the recording ends inside one)" if screen.inside_string else ""
        sys.stderr.write(
            f"\nnote: removed {screen.removed} terminal control sequence(s){hidden}; "
            "--raw plays them, sessions export keeps them\n"
        )


@app.command("export")
@handle_errors
def export(
    session_id: Annotated[str, typer.Argument(help="Session id or a unique prefix of one.")],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Where to write the .cast; - for stdout.")
    ],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing file at --output.")
    ] = False,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Write a session's recording as an asciicast v2 file (``asciinema play`` reads it).

    The file is validated and decompressed, up to its last whole event. With -o - the cast
    goes to stdout (nothing else is printed there); otherwise the path written is printed.
    The file is created 0600 (a recording holds whatever the session showed); an existing
    one is kept unless ``--force``. Exit 1 when the session was not recorded.
    """
    if not output:
        raise InvalidInput("--output", "empty; give a file name or - for stdout")
    _, path = _recording(session_id, direct)
    from stockade.gateway import iter_cast

    lines = (_cast_line(item) for item in iter_cast(path))
    if output == "-":
        with reader_may_stop():
            for line in lines:
                sys.stdout.write(line)
            sys.stdout.flush()
        return
    target = Path(output)
    _write_private(target, lines, force=force)
    typer.echo(str(target))


#: C1 controls: json.dumps leaves them raw, and a terminal may act on them (U+009D is OSC).
_C1 = re.compile("[\x80-\x9f]")


def _cast_line(item: object) -> str:
    line = json.dumps(item, ensure_ascii=False)
    if _C1.search(line):
        line = _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line + "\n"


def _write_private(target: Path, lines: Iterable[str], *, force: bool) -> None:
    """Write ``lines`` to ``target``, created 0600 (a recording holds whatever the session
    showed). An existing file is kept unless ``force``; with ``force`` a new file replaces
    a regular file only (never a symlink, device or directory: ``/dev/stdout`` stays a
    link, ``/dev/null`` a device). Nothing is left on failure."""
    try:
        existing = target.lstat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise InvalidInput("--output", f"cannot write {target}: {exc.strerror}") from None
    if existing is not None:
        if not stat.S_ISREG(existing.st_mode):
            raise InvalidInput(
                "--output", f"{target} exists and is no regular file (link, device, directory)"
            )
        if not force:
            raise InvalidInput("--output", f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise InvalidInput("--output", f"{target.parent} is not a directory")
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(scratch, flags, 0o600)
    except OSError as exc:
        raise InvalidInput("--output", f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
        if force:
            os.replace(scratch, target)
        else:
            os.link(scratch, target)  # fails if the name appeared meanwhile: never clobbers
            os.unlink(scratch)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        raise


@app.command("kill")
@handle_errors
def kill(
    session_id: Annotated[str, typer.Argument(help="Session id or a unique prefix of one.")],
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """End a live session: its token is revoked at once and the gateway closes it."""

    async def run() -> str:
        async with admin_identity(settings(), direct=direct) as identity:
            info = await find_session(identity, session_id, min_prefix=KILL_MIN_PREFIX)
            if info.ended_at is not None:
                raise InvalidInput("session", f"{info.session_id} has already ended")
            await identity.kill_session(info.session_id, by=os.environ.get("USER", "admin"))
        return info.session_id

    typer.echo(f"killed {run_async(run())}")
