"""One SSH session channel: authorize the request, open the workspace, copy bytes, clean up.

Every request on a session is decided on its own (``ssh.shell``, ``ssh.exec`` with the command,
``ssh.sftp``, ``ssh.agent-forward``); a deny ends that channel with a message on stderr and exit
status 1, and the connection stays up. An allowed session gets a registry row, a JWT bound to it
(``STOCKADE_TOKEN``, with ``STOCKADE_API``, in its environment — never in a file), a recording
when the policy says ``record_session``, and a deadline of ``max_session_seconds``. When it ends,
for whatever reason, the row is closed (which revokes the token) and ``stockade.session.ended``
is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from stockade.core.errors import StockadeError
from stockade.core.events import SessionEnded, SessionStarted
from stockade.core.logging import escape_peer, get_logger

from ._auth import ConnectionAuth
from ._policy import Policy
from ._ports import EventPublisher, IdentityPort
from ._recorder import CastRecorder
from .backends import ExitStatus, SessionSpec, Workload, WorkspaceBackend
from .backends._fdio import CHUNK

__all__ = ["LiveSession", "SessionServices", "run_session"]

_log = get_logger("stockade.gateway.session")


@dataclass
class SessionServices:
    """What every session shares (owned by the Gateway)."""

    identity: IdentityPort
    policy: Policy
    publisher: EventPublisher
    backends: Mapping[str, WorkspaceBackend]
    recordings: Path
    recording_max_bytes: int
    api_url: str
    accept_env: Sequence[str]
    live: dict[str, LiveSession]
    background: Callable[[Any], None]
    registry_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serializes this gateway's registry writes (SQLite allows one writer at a time)."""


class LiveSession:
    """A running session, as the gateway sees it (to kill it or wait for it)."""

    def __init__(self, session_id: str, username: str, workload: Workload, stderr: Any) -> None:
        self.session_id = session_id
        self.username = username
        self.workload = workload
        self.end_reason = ""
        self.done = asyncio.Event()
        self._stderr = stderr

    async def terminate(self, reason: str, message: str) -> None:
        """Close the session with ``message`` shown to the user on stderr (the first reason
        given wins; later calls and calls after the end do nothing)."""
        if self.done.is_set() or self.end_reason:
            return
        self.end_reason = reason
        with contextlib.suppress(Exception):
            self._stderr.write(f"\r\nstockade: {message}\r\n".encode())
        await self.workload.close()


def _accepted(env: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if key.startswith("STOCKADE_") or len(key) > 64 or len(value) > 4096:
            continue
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            out[key] = value
    return out


def _request(process: asyncssh.SSHServerProcess[bytes]) -> tuple[str, dict[str, Any]]:
    if process.subsystem is not None:
        if process.subsystem == "sftp":
            return "ssh.sftp", {}
        return "ssh.subsystem", {"subsystem": process.subsystem}
    if process.command is not None:
        return "ssh.exec", {"command": process.command}
    return "ssh.shell", {}


async def _deny(
    process: asyncssh.SSHServerProcess[bytes], action: str, reasons: Sequence[str]
) -> None:
    why = "; ".join(reasons) or "no rule allowed it"
    process.stderr.write(f"stockade: {action} denied: {why}\r\n".encode())
    process.exit(1)


async def run_session(
    services: SessionServices, auth: ConnectionAuth, process: asyncssh.SSHServerProcess[bytes]
) -> None:
    """Serve one session channel to its end."""
    assert auth.user is not None
    assert auth.workspace is not None
    user, workspace = auth.user, auth.workspace
    action, extra = _request(process)
    x11_refusal = getattr(process, "x11_refusal", None)
    if x11_refusal:
        process.stderr.write(f"stockade: X11 forwarding denied: {x11_refusal}\r\n".encode())
    decision = await services.policy.decide(
        action,
        user,
        workspace=workspace,
        source_ip=auth.client_ip,
        auth_method=auth.method,
        mfa=auth.mfa_passed,
        extra=extra,
    )
    if not decision.allow:
        await _deny(process, action, decision.reasons)
        return
    backend = services.backends.get(workspace.backend)
    if backend is None:
        await _deny(process, action, [f"workspace backend {workspace.backend!r} is not available"])
        return
    if process.subsystem not in (None, "sftp"):
        await _deny(process, action, [f"subsystem {process.subsystem!r} is not offered"])
        return
    obligations = decision.obligations
    refusal = _unenforceable(obligations, process.subsystem)
    if refusal is not None:
        await _deny(process, action, [refusal])
        return
    agent_path = process.channel.get_agent_path()
    if agent_path is not None:
        agent = await services.policy.decide(
            "ssh.agent-forward",
            user,
            workspace=workspace,
            source_ip=auth.client_ip,
            auth_method=auth.method,
            mfa=auth.mfa_passed,
        )
        if not (agent.allow and obligations.get("agent_forwarding") is True):
            why = "; ".join(agent.reasons) or "not allowed by policy"
            process.stderr.write(f"stockade: agent forwarding denied: {why}\r\n".encode())
            agent_path = None

    session_id = "s-" + secrets.token_hex(8)
    identity = services.identity
    try:
        async with services.registry_lock:
            await identity.start_session(
                session_id,
                username=user.name,
                workspace=workspace.name,
                client_ip=auth.client_ip,
                client_port=auth.client_port,
            )
        token = await identity.issue_token(
            user.name, session_id=session_id, ttl=_token_ttl(obligations)
        )
    except StockadeError as exc:
        _log.warning("session_not_started", conn=auth.conn_id, error=str(exc))
        process.stderr.write(b"stockade: the session could not be started\r\n")
        process.exit(1)
        return
    env = _accepted(process.env, services.accept_env)
    env["STOCKADE_TOKEN"] = token
    env["STOCKADE_API"] = services.api_url
    width, height, pixwidth, pixheight = process.term_size
    spec = SessionSpec(
        session_id=session_id,
        username=user.name,
        workspace=workspace.name,
        workspace_config=workspace.config,
        command=process.command,
        subsystem=process.subsystem,
        term_type=process.term_type,
        term_size=(width or 80, height or 24, pixwidth, pixheight),
        env=env,
        agent_path=agent_path,
        sudo=obligations.get("sudo") is True,
    )
    recorder: CastRecorder | None = None
    if obligations.get("record_session") is True:
        recorder = CastRecorder(
            services.recordings / f"{session_id}.cast",
            width=spec.term_size[0],
            height=spec.term_size[1],
            env={"TERM": process.term_type or "", "SHELL": "/bin/bash"},
            title=f"{user.name}@{workspace.name}"
            + (f": {process.command}" if process.command else ""),
            record_input=bool(obligations.get("record_input", False)),
            max_bytes=services.recording_max_bytes,
        )
    started = SessionStarted(
        session_id=session_id,
        username=user.name,
        workspace=workspace.name,
        client_ip=auth.client_ip,
    )
    await _publish(services, started)
    _log.info(
        "session_started",
        conn=auth.conn_id,
        session=session_id,
        action=action,
        command=escape_peer(process.command or ""),
        recorded=recorder is not None,
    )
    counters = [0, 0]
    status: ExitStatus | None = None
    reason = "exited"
    live: LiveSession | None = None
    try:
        workload = await backend.open(spec)
        live = LiveSession(session_id, user.name, workload, process.stderr)
        services.live[session_id] = live
        status = await _pump(
            process, workload, recorder, counters, obligations, live, services.background
        )
        reason = live.end_reason or "exited"
    except (StockadeError, OSError, asyncssh.Error) as exc:
        reason = "error"
        _log.warning("session_failed", conn=auth.conn_id, session=session_id, error=str(exc))
        with contextlib.suppress(Exception):
            process.stderr.write(f"stockade: session failed: {exc}\r\n".encode())
    finally:
        services.live.pop(session_id, None)
        if live is not None:
            live.done.set()
        if recorder is not None:
            recorder.close()
        code = status.code if status is not None else None
        try:
            async with services.registry_lock:
                await identity.end_session(
                    session_id,
                    exit_status=code,
                    bytes_in=counters[0],
                    bytes_out=counters[1],
                    recording=str(recorder.path) if recorder is not None else None,
                    reason=reason,
                )
        except StockadeError as exc:
            _log.warning("session_not_ended", session=session_id, error=str(exc))
        await _publish(services, SessionEnded(
            session_id=session_id, username=user.name, exit_status=code, reason=reason
        ))  # fmt: skip
        _log.info(
            "session_ended", conn=auth.conn_id, session=session_id, exit_status=code, reason=reason
        )
    if status is not None and status.signal is not None:
        process.exit_with_signal(status.signal)
    elif status is not None and status.code is not None:
        process.exit(status.code)
    else:
        process.exit(255)


async def _publish(services: SessionServices, event: Any) -> None:
    try:
        await services.publisher.publish(event)
    except StockadeError as exc:
        _log.warning("event_not_published", error=str(exc))


async def _pump(
    process: asyncssh.SSHServerProcess[bytes],
    workload: Workload,
    recorder: CastRecorder | None,
    counters: list[int],
    obligations: Mapping[str, Any],
    live: LiveSession,
    services_background: Callable[[Any], None],
) -> ExitStatus:
    async def client_to_workload() -> None:
        while True:
            try:
                data = await process.stdin.read(CHUNK)
            except asyncssh.TerminalSizeChanged as change:
                workload.resize(change.width, change.height, change.pixwidth, change.pixheight)
                if recorder is not None:
                    recorder.resize(change.width, change.height)
                continue
            except asyncssh.SignalReceived as sig:
                workload.signal(sig.signal)
                continue
            except asyncssh.BreakReceived:
                workload.signal("INT")
                continue
            except (asyncssh.Error, OSError):
                return
            if not data:
                await workload.close_stdin()
                return
            counters[0] += len(data)
            if recorder is not None:
                recorder.input(data)
            await workload.write_stdin(data)

    channel = process.channel

    async def workload_to_client(read: Callable[[], Any], writer: Any) -> None:
        while True:
            data = await read()
            if not data:
                return
            counters[1] += len(data)
            if recorder is not None:
                recorder.output(data)
            try:
                # asyncssh queues what the peer's window cannot take yet; wait only then
                writer.write(data)
                if channel.get_write_buffer_size():
                    await writer.drain()
            except (asyncssh.Error, OSError):
                return

    feeder = asyncio.create_task(client_to_workload())
    out = asyncio.create_task(workload_to_client(workload.read_stdout, process.stdout))
    err = asyncio.create_task(workload_to_client(workload.read_stderr, process.stderr))
    limit = obligations.get("max_session_seconds")
    deadline: asyncio.TimerHandle | None = None
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0:
        loop = asyncio.get_running_loop()
        message = f"session time limit of {int(limit)} seconds reached"

        def _expire() -> None:
            services_background(live.terminate("max_session_seconds", message))

        deadline = loop.call_later(float(limit), _expire)
    try:
        await asyncio.gather(out, err)
        status = await workload.wait()
    finally:
        if deadline is not None:
            deadline.cancel()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await workload.close()
    return status


#: Identity refuses tokens living longer than a day; a longer session re-enters through ssh.
_MAX_TOKEN_SECONDS = 86400


def _token_ttl(obligations: Mapping[str, Any]) -> int:
    """The session token lives as long as the session may (it is revoked when it ends)."""
    limit = obligations.get("max_session_seconds")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(limit, _MAX_TOKEN_SECONDS)
    return _MAX_TOKEN_SECONDS


def _unenforceable(obligations: Mapping[str, Any], subsystem: str | None) -> str | None:
    """Why the session must be refused because an obligation cannot be met, else None.

    Fail closed: a recording obligation forbids what cannot be recorded (sftp and scp move
    files, not a terminal stream), and ``privileged`` is not offered by any backend yet.
    """
    if obligations.get("record_session") is True and subsystem is not None:
        return f"{subsystem} cannot be recorded and this session must be (record_session)"
    if obligations.get("privileged") is True:
        return "privileged sessions are not available on this workspace backend"
    return None
