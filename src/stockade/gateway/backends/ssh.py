"""The ``ssh`` backend: each session is proxied to an upstream sshd, as sshpiper does.

The workspace's config names the upstream (``{"upstream": "host:port", "login": "USER"}``, and
optionally ``"host_key": "ssh-ed25519 AAAA..."`` to pin it). The gateway logs in upstream with
its *own* key (``data_dir/gateway/upstream_ed25519_key``; its ``.pub`` goes into the upstream
user's ``authorized_keys``), never with the client's credentials. An upstream host key that is not
pinned is trusted on first use and remembered in ``upstream_known_hosts.json``; a later mismatch
refuses the session. The client's forwarded agent, when allowed, is forwarded on upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import asyncssh

from stockade.core.errors import BackendError, InvalidInput
from stockade.core.files import write_private

from . import ExitStatus, SessionSpec
from ._fdio import CHUNK

__all__ = ["SshBackend", "SshWorkload", "parse_upstream"]


def parse_upstream(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port defaults to 22) -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or "22"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, "22"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput("upstream", f"{value!r} is not host:port")
    return host, int(port_text)


class SshWorkload:
    """A session running on the upstream sshd."""

    def __init__(self, conn: asyncssh.SSHClientConnection, process: Any) -> None:
        self._conn = conn
        self._process = process

    async def read_stdout(self) -> bytes:
        data: bytes = await self._process.stdout.read(CHUNK)
        return data

    async def read_stderr(self) -> bytes:
        data: bytes = await self._process.stderr.read(CHUNK)
        return data

    async def write_stdin(self, data: bytes) -> None:
        self._process.stdin.write(data)
        await self._process.stdin.drain()

    async def close_stdin(self) -> None:
        self._process.stdin.write_eof()

    def resize(self, columns: int, rows: int, width: int, height: int) -> None:
        self._process.change_terminal_size(columns, rows, width, height)

    def signal(self, name: str) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.send_signal(name)

    async def wait(self) -> ExitStatus:
        completed = await self._process.wait(check=False)
        if completed.exit_signal:
            return ExitStatus(signal=completed.exit_signal[0])
        return ExitStatus(code=completed.exit_status if completed.exit_status is not None else 255)

    async def close(self) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 5)


class SshBackend:
    """Opens one upstream connection per session."""

    name = "ssh"

    def __init__(
        self, *, client_key: asyncssh.SSHKey, known_hosts: Path, connect_timeout: float
    ) -> None:
        self._client_key = client_key
        self._known_hosts = known_hosts
        self._connect_timeout = connect_timeout

    def _remembered(self) -> dict[str, str]:
        try:
            data = json.loads(self._known_hosts.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember(self, name: str, key: str) -> None:
        known = self._remembered()
        known[name] = key
        write_private(self._known_hosts, json.dumps(known, indent=2, sort_keys=True).encode())

    async def open(self, spec: SessionSpec) -> SshWorkload:
        config = spec.workspace_config
        upstream = config.get("upstream")
        login = config.get("login")
        if not isinstance(upstream, str) or not isinstance(login, str) or not login:
            raise InvalidInput(
                "workspace", f"{spec.workspace}: ssh backend needs upstream and login"
            )
        host, port = parse_upstream(upstream)
        name = f"[{host}]:{port}"
        pinned = config.get("host_key") or self._remembered().get(name)
        known: Any = None
        if isinstance(pinned, str):
            known = ([asyncssh.import_public_key(pinned)], [], [])
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host,
                    port,
                    username=login,
                    client_keys=[self._client_key],
                    known_hosts=known,
                    agent_path=spec.agent_path,
                    agent_forwarding=spec.agent_path is not None,
                    config=None,
                    kex_algs=["curve25519-sha256", "ecdh-sha2-nistp256"],
                    preferred_auth=["publickey"],
                ),
                self._connect_timeout,
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise BackendError(f"upstream {upstream} of workspace {spec.workspace}: {exc}") from exc
        if pinned is None:
            key = conn.get_server_host_key()
            if key is not None:
                self._remember(name, key.export_public_key().decode().strip())
        try:
            term: dict[str, Any] = {}
            if spec.term_type is not None and spec.subsystem is None:
                term = {"term_type": spec.term_type, "term_size": spec.term_size}
            process = await conn.create_process(
                command=spec.command,
                subsystem=spec.subsystem,
                env=dict(spec.env),
                encoding=None,
                **term,
            )
        except (asyncssh.Error, OSError) as exc:
            conn.close()
            raise BackendError(f"upstream {upstream} refused the session: {exc}") from exc
        return SshWorkload(conn, process)
