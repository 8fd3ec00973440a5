"""Deciding how a session runs, without running it: ``plan_session(obligations, request)``.

Pure: the same obligations and request always give the same :class:`SessionPlan` or
:class:`Refusal`; the runner then applies the plan (recording, audited transfer, agent, deadline)
and nothing else. Fail closed: an obligation the gateway cannot meet refuses the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stockade.authz import Obligations

__all__ = ["ChannelRequest", "Refusal", "SessionPlan", "plan_session"]

#: Identity refuses tokens living longer than a day; a longer session re-enters through ssh.
MAX_TOKEN_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """What a session channel asked for, read from the channel once it started."""

    command: str | None = None
    """The exec command; ``None`` with no ``subsystem`` is an interactive shell."""
    subsystem: str | None = None
    term_type: str | None = None
    term_size: tuple[int, int, int, int] = (80, 24, 0, 0)
    env: dict[str, str] = field(default_factory=dict)
    agent_requested: bool = False
    transfer: Any = None
    """The parsed ``scp -t``/``scp -f`` request when ``command`` is a legacy scp transfer."""

    @property
    def action(self) -> str:
        """The policy action of this request."""
        if self.subsystem is not None:
            return "ssh.sftp" if self.subsystem == "sftp" else "ssh.subsystem"
        if self.command is not None:
            return "ssh.exec"
        return "ssh.shell"

    def policy_extra(self) -> dict[str, Any]:
        """Action-specific fields of the policy input."""
        if self.subsystem is not None and self.subsystem != "sftp":
            return {"subsystem": self.subsystem}
        if self.command is not None:
            return {"command": self.command}
        return {}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the request is refused (shown to the user on stderr)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """How the runner must run an allowed request."""

    record: bool = False
    """Write an asciinema cast of the output (and of the input with ``record_input``)."""
    record_input: bool = False
    audit_transfer: bool = False
    """A legacy scp transfer under ``record_session``: an event per file, no data in a cast."""
    agent: bool = False
    """Forward the client's agent into the session."""
    sudo: bool = False
    max_seconds: int | None = None
    token_ttl: int = MAX_TOKEN_SECONDS


def plan_session(obligations: Obligations, request: ChannelRequest) -> SessionPlan | Refusal:
    """The plan for ``request`` under ``obligations`` (from the request's own decision)."""
    if request.subsystem is not None and request.subsystem != "sftp":
        return Refusal(f"subsystem {request.subsystem!r} is not offered")
    if obligations.privileged:
        return Refusal("privileged sessions are not available on this workspace backend")
    if obligations.kill_session or obligations.ban_user or obligations.patches:
        # duties of other enforcers (Worktrace responses, Pod provisioning): on a session
        # request nobody would meet them, so the request is refused rather than run
        return Refusal("policy attached an obligation a session cannot meet")
    record = obligations.record_session
    audit_transfer = False
    if record and request.subsystem == "sftp":
        return Refusal("sftp cannot be recorded and this session must be (record_session); "
                       "use scp -O, whose transfers are audited")  # fmt: skip
    if record and request.transfer is not None:
        record, audit_transfer = False, True
    limit = obligations.max_session_seconds
    return SessionPlan(
        record=record,
        # every recorded channel's input, PTY or not: ``ssh host sh`` reading commands from
        # stdin is as interactive as a shell, and without it only the output was recorded
        record_input=record and obligations.record_input,
        audit_transfer=audit_transfer,
        agent=request.agent_requested and obligations.agent_forwarding,
        sudo=obligations.sudo,
        max_seconds=limit,
        token_ttl=min(limit, MAX_TOKEN_SECONDS) if limit else MAX_TOKEN_SECONDS,
    )
