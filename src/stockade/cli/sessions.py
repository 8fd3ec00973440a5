"""``stockade sessions``: list, replay, export and kill SSH sessions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.core import InvalidInput, NotFound
from stockade.gateway import export_cast, play_cast, resolve_cast

from ._admin import admin_identity
from ._common import JSON_OPTION, handle_errors, print_json, print_table, run_async, settings

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


def _recording(session_id: str, direct: bool) -> Path:
    async def lookup() -> str | None:
        async with admin_identity(settings(), direct=direct) as identity:
            info = await identity.get_session(session_id)
        return info.recording

    recording = run_async(lookup())
    if not recording:
        raise NotFound("recording of session", session_id)
    path = resolve_cast(Path(recording))  # also once compressed (.cast.gz)
    if not path.is_file():
        raise NotFound("recording file", str(path))
    return path


@app.command("list")
@handle_errors
def list_(
    active: Annotated[bool, typer.Option("--active", help="Only live sessions.")] = False,
    user: Annotated[str | None, typer.Option(help="Only this user's sessions.")] = None,
    as_json: bool = JSON_OPTION,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Sessions, newest first."""

    async def run() -> list[dict[str, Any]]:
        async with admin_identity(settings(), direct=direct) as identity:
            rows = await identity.list_sessions(active_only=active, username=user)
        return [_row(info) for info in rows]

    rows = run_async(run())
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
    session_id: str,
    speed: Annotated[float, typer.Option(help="Playback speed factor.")] = 1.0,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Replay a recorded session in this terminal."""
    if speed <= 0:
        raise InvalidInput("--speed", "must be positive")
    path = _recording(session_id, direct)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    play_cast(path, write, speed=speed)


@app.command("export")
@handle_errors
def export(
    session_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .cast.")],
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Write a session's recording as an asciicast v2 file (``asciinema play`` reads it)."""
    path = _recording(session_id, direct)
    export_cast(path, output)  # validated, decompressed, up to the last whole event
    typer.echo(str(output))


@app.command("kill")
@handle_errors
def kill(session_id: str, direct: Annotated[bool, DIRECT] = False) -> None:
    """End a live session: its token is revoked at once and the gateway closes it."""

    async def run() -> None:
        async with admin_identity(settings(), direct=direct) as identity:
            info = await identity.get_session(session_id)
            if info.ended_at is not None:
                raise InvalidInput("session", f"{session_id} has already ended")
            await identity.kill_session(session_id, by=os.environ.get("USER", "admin"))

    run_async(run())
    typer.echo(f"killed {session_id}")
