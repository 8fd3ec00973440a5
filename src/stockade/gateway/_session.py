"""One SSH session channel: decide the request, plan it, run it in the workspace, clean up.

:class:`ChannelSession` is asyncssh's public :class:`asyncssh.SSHServerSession` for a session
channel. It accepts the shell/exec/subsystem request at once (asyncssh wants a synchronous
answer), then, when the session starts, asks authz for that request on its own (``ssh.shell``,
``ssh.exec`` with the command, ``ssh.sftp``) with the connection's *current* principal, plans it
(:func:`~._plan.plan_session`) and applies the plan: a deny or a refusal ends the channel with a
message on stderr and exit status 1; the connection stays up. Output is copied with flow control
in both directions (asyncssh's ``pause_writing``/``resume_writing`` and ``pause_reading``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from stockade.authz import AuthzAPI
from stockade.core.errors import InvalidInput, StockadeError
from stockade.core.events import EventPublisher, FileTransfer
from stockade.core.logging import escape_peer, get_logger
from stockade.core.tasks import cancel_and_wait

from ._live import LiveConnection
from ._plan import ChannelRequest, Refusal, SessionPlan, plan_session
from ._policy import decide
from ._recorder import CastRecorder
from ._scp import ScpFile, ScpObserver, ScpProtocolError, scp_command
from .backends import ExitStatus, SessionSpec, Workload, WorkspaceBackend, shared_session
from .backends._fdio import CHUNK

__all__ = ["ChannelServices", "ChannelSession"]

_log = get_logger("stockade.gateway.session")

#: Input queued for a workload before the channel stops reading from the client.
_INPUT_HIGH_WATER = 4 * CHUNK


@dataclass
class ChannelServices:
    """What every session channel shares (owned by the Gateway)."""

    authz: AuthzAPI
    publisher: EventPublisher
    backends: Mapping[str, WorkspaceBackend]
    recordings: Path
    recording_max_bytes: int
    api_url: str
    accept_env: Sequence[str]
    background: Callable[[Any], None]


def _accepted(env: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if key.startswith("STOCKADE_") or len(key) > 64 or len(value) > 4096:
            continue
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            out[key] = value
    return out


class ChannelSession(asyncssh.SSHServerSession[bytes]):
    """A session channel of a logged-in connection."""

    def __init__(self, services: ChannelServices, live: LiveConnection) -> None:
        self._services = services
        self._live = live
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._term_type: str | None = None
        self._term_size = (80, 24, 0, 0)
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._workload: Workload | None = None
        self._recorder: CastRecorder | None = None
        self._observer: ScpObserver | None = None
        self._end_reason = ""
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- asyncssh's SSHServerSession hooks ----------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """The channel opened; remembered for writing and flow control."""
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        """A PTY is always granted; it matters only once the session is allowed."""
        self._term_type = term_type
        self._term_size = term_size
        return True

    def shell_requested(self) -> bool:
        """Accepted here, decided as ``ssh.shell`` when the session starts."""
        return True

    def exec_requested(self, command: str) -> bool:
        """Accepted here, decided as ``ssh.exec`` (with the command) when the session starts."""
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """Accepted here, decided (``ssh.sftp``) and planned when the session starts."""
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        """The request was accepted: decide, plan and run it in the background."""
        self._task = asyncio.ensure_future(self._serve())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Client input: queued for the workload; reading pauses past a high-water mark."""
        self._queued += len(data)
        self._input.put_nowait(data)
        if self._queued > _INPUT_HIGH_WATER and self._chan is not None:
            self._reading_paused = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        """The client closed its input: the workload's stdin is closed after the queue."""
        self._input.put_nowait(None)
        return True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._term_size = (width, height, pixwidth, pixheight)
        if self._workload is not None:
            self._workload.resize(width, height, pixwidth, pixheight)
        if self._recorder is not None:
            self._recorder.resize(width, height)

    def signal_received(self, signal: str) -> None:
        if self._workload is not None:
            self._workload.signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._workload is not None:
            self._workload.signal("INT")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed (or the connection did): the workload is stopped."""
        self._closed.set()
        self._input.put_nowait(None)
        self._writable.set()
        if self._workload is not None and self._task is not None and not self._task.done():
            self._services.background(self._workload.close())

    # -- ending from outside -------------------------------------------------------------------

    async def terminate(self, reason: str, message: str) -> None:
        """End this channel: ``message`` on stderr, the workload stopped (first reason wins)."""
        if self._end_reason or self._closed.is_set():
            return
        self._end_reason = reason
        self._write_stderr(f"\r\nstockade: {message}\r\n".encode())
        if self._workload is not None:
            await self._workload.close()
        elif self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.exit(255)

    # -- the session ---------------------------------------------------------------------------

    def _write_stderr(self, data: bytes) -> None:
        if self._chan is not None and not self._closed.is_set():
            with contextlib.suppress(Exception):
                self._chan.write_stderr(data)

    def _refuse(self, action: str, why: str) -> None:
        self._write_stderr(f"stockade: {action} denied: {why}\r\n".encode())
        if self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.exit(1)

    def _request(self) -> ChannelRequest:
        """What the channel asked for. :class:`InvalidInput` for an scp command that cannot be
        audited (odd flags, shell syntax): it is refused, never run as a plain command."""
        chan = self._chan
        assert chan is not None
        transfer = scp_command(self._command) if self._command is not None else None
        return ChannelRequest(
            command=self._command,
            subsystem=self._subsystem,
            term_type=self._term_type,
            term_size=self._term_size,
            env=dict(chan.get_environment()),
            agent_requested=chan.get_agent_path() is not None,
            transfer=transfer,
        )

    async def _serve(self) -> None:
        live = self._live
        try:
            opened = await live.opened
        except asyncio.CancelledError:
            raise
        if not opened or live.closing:
            self._refuse("session", "the session could not be started")
            return
        live.channels.add(self)
        try:
            await self._serve_allowed()
        except Exception as exc:  # a session's failure must not leak or hang the channel
            _log.warning("session_failed", session=live.session_id, error=repr(exc))
            self._write_stderr(b"stockade: session failed\r\n")
            if self._chan is not None:
                with contextlib.suppress(Exception):
                    self._chan.exit(255)
        finally:
            live.channels.discard(self)

    async def _serve_allowed(self) -> None:
        live, services = self._live, self._services
        try:
            request = self._request()
        except InvalidInput as exc:
            self._refuse("ssh.exec", f"scp command refused: {exc.problem}")
            return
        action = request.action
        decision = await decide(
            services.authz,
            action,
            live.principal,
            source_ip=live.login.client_ip,
            auth_method=live.login.method,
            mfa=live.login.mfa,
            session_id=live.session_id,
            extra=request.policy_extra(),
        )
        if not decision.allow:
            self._refuse(action, "; ".join(decision.reasons) or "no rule allowed it")
            return
        if not live.still_open():
            self._refuse(action, "the session is being ended")
            return
        plan = plan_session(decision.obligations, request)
        if isinstance(plan, Refusal):
            self._refuse(action, plan.reason)
            return
        if request.agent_requested and not plan.agent:
            self._write_stderr(b"stockade: agent forwarding denied: not allowed by policy\r\n")
        workspace = live.principal.workspace
        backend = services.backends.get(workspace.backend)
        if backend is None:
            self._refuse(action, f"workspace backend {workspace.backend!r} is not available")
            return
        await self._run(plan, request, backend)

    def _spec(self, plan: SessionPlan, request: ChannelRequest) -> SessionSpec:
        live, services = self._live, self._services
        assert self._chan is not None
        env = _accepted(request.env, services.accept_env)
        env["STOCKADE_TOKEN"] = live.token
        env["STOCKADE_API"] = services.api_url
        width, height, pixwidth, pixheight = request.term_size
        workspace = live.principal.workspace
        server = live.conn.get_extra_info("sockname") or ("", 0)
        return SessionSpec(
            session_id=live.session_id,
            username=live.principal.username,
            workspace=workspace.name,
            # runtimes tell a shared session (an admin in someone's workspace) by the owner
            workspace_config={**workspace.config, "owner": workspace.owner},
            client=(live.login.client_ip, live.login.client_port, str(server[0]), int(server[1])),
            # an audited transfer is not recorded: it runs the system's scp as parsed, never
            # the command line as sent (a workspace's own "scp" first on PATH would run
            # anything, unrecorded)
            command=request.transfer.shell_command() if plan.audit_transfer else request.command,
            subsystem=request.subsystem,
            term_type=request.term_type,
            term_size=(width or 80, height or 24, pixwidth, pixheight),
            env=env,
            agent_path=self._chan.get_agent_path() if plan.agent else None,
            sudo=plan.sudo,
        )

    def _start_recording(self, plan: SessionPlan, spec: SessionSpec) -> None:
        live, services = self._live, self._services
        number = live.next_channel_number()
        name = live.session_id if number == 1 else f"{live.session_id}.{number}"
        self._recorder = CastRecorder(
            services.recordings / f"{name}.cast",
            width=spec.term_size[0],
            height=spec.term_size[1],
            env={"TERM": spec.term_type or "", "SHELL": "/bin/bash"},
            title=f"{spec.username}@{spec.workspace}"
            + (f": {spec.command}" if spec.command else ""),
            record_input=plan.record_input,
            max_bytes=services.recording_max_bytes,
        )
        if live.recording is None:
            live.recording = str(self._recorder.path)

    async def _run(
        self, plan: SessionPlan, request: ChannelRequest, backend: WorkspaceBackend
    ) -> None:
        live = self._live
        spec = self._spec(plan, request)
        if (
            spec.agent_path
            and getattr(backend, "shares_workspace_uid", False)
            and shared_session(spec)
        ):
            self._write_stderr(
                b"stockade: agent forwarding withheld: this workspace runs as its owner's uid\r\n"
            )
        if plan.record:
            self._start_recording(plan, spec)
        if plan.audit_transfer:
            self._observer = ScpObserver(request.transfer)
        _log.info("channel_started", conn=live.login.conn_id, session=live.session_id,
                  command=escape_peer(request.command or ""), recorded=plan.record,
                  audited_transfer=plan.audit_transfer)  # fmt: skip
        status: ExitStatus | None = None
        try:
            self._workload = await backend.open(spec)
            if self._end_reason:  # ended while the workload started
                await self._workload.close()
            status = await self._pump(self._workload, plan)
        except (StockadeError, OSError, asyncssh.Error, ValueError) as exc:
            _log.warning("session_failed", session=live.session_id, error=str(exc))
            self._write_stderr(f"stockade: session failed: {exc}\r\n".encode())
        finally:
            if self._workload is not None:
                await self._workload.close()
            if self._recorder is not None:
                self._recorder.close()
            if self._observer is not None:
                await self._publish_transfers(self._observer.close())
        if status is not None and status.code is not None:
            live.exit_status = status.code
        chan = self._chan
        if chan is None or self._closed.is_set():
            return
        with contextlib.suppress(Exception):
            if status is not None and status.signal is not None:
                chan.exit_with_signal(status.signal)
            elif status is not None and status.code is not None:
                chan.exit(status.code)
            else:
                chan.exit(255)

    async def _publish_transfers(self, files: list[ScpFile]) -> None:
        for item in files:
            event = FileTransfer(
                session_id=self._live.session_id,
                username=self._live.principal.username,
                direction=item.direction,
                path=item.path[:1024],
                size=item.transferred,
                sha256=item.sha256,
                complete=item.completed,
            )
            _log.info("file_transfer", session=self._live.session_id, direction=item.direction,
                      path=item.path, size=item.transferred, sha256=item.sha256,
                      complete=item.completed)  # fmt: skip
            try:
                await self._services.publisher.publish(event)
            except StockadeError as exc:
                _log.warning("event_not_published", error=str(exc))

    async def _feed(self, workload: Workload) -> None:
        observer = self._observer
        while True:
            data = await self._input.get()
            if data is None:
                if not self._closed.is_set():
                    await workload.close_stdin()
                return
            self._queued -= len(data)
            if self._reading_paused and self._queued <= _INPUT_HIGH_WATER // 2:
                self._reading_paused = False
                if self._chan is not None:
                    self._chan.resume_reading()
            self._live.bytes_in += len(data)
            if self._recorder is not None:
                self._recorder.input(data)
            if observer is not None:
                try:
                    await self._publish_transfers(observer.from_client(data))
                except ScpProtocolError as exc:
                    await self.terminate("transfer_refused", f"scp stream refused: {exc}")
                    return
            await workload.write_stdin(data)

    async def _copy_out(self, read: Callable[[], Any], stderr: bool) -> None:
        chan = self._chan
        assert chan is not None
        observer = self._observer
        while True:
            data = await read()
            if not data:
                return
            self._live.bytes_out += len(data)
            if self._recorder is not None:
                self._recorder.output(data)
            if observer is not None and not stderr:
                await self._publish_transfers(observer.from_server(data))
            if self._closed.is_set():
                continue  # drain the workload so it can exit
            try:
                if stderr:
                    chan.write_stderr(data)
                else:
                    chan.write(data)
            except (asyncssh.Error, OSError):
                return
            if not self._writable.is_set():
                await self._writable.wait()

    async def _pump(self, workload: Workload, plan: SessionPlan) -> ExitStatus:
        feeder = asyncio.ensure_future(self._feed(workload))
        out = asyncio.ensure_future(self._copy_out(workload.read_stdout, False))
        err = asyncio.ensure_future(self._copy_out(workload.read_stderr, True))
        deadline: asyncio.TimerHandle | None = None
        if plan.max_seconds:
            message = f"session time limit of {plan.max_seconds} seconds reached"
            deadline = asyncio.get_running_loop().call_later(
                plan.max_seconds,
                lambda: self._services.background(self.terminate("max_session_seconds", message)),
            )
        try:
            await asyncio.gather(out, err)
            return await workload.wait()
        finally:
            if deadline is not None:
                deadline.cancel()
            await cancel_and_wait(feeder, what="session input")
