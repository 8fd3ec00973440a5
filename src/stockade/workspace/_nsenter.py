"""Connections that leave from a workspace's network namespace.

A forward (``ssh -L``/``-W``) into a workspace must reach what the workspace reaches — its own
loopback listeners included — and nothing of the gateway host's. :func:`connect_in_netns`
switches one short-lived thread into the namespace (``setns`` changes only the calling thread),
connects there and hands the connected socket back; the socket stays in the namespace it was
created in.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading

__all__ = ["connect_in_netns"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _connect(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    result: list[socket.socket | BaseException] = []

    def worker() -> None:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)  # this thread only; it ends right after
            result.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as exc:  # handed to the caller below
            result.append(exc)
        finally:
            os.close(target)

    thread = threading.Thread(target=worker, name="netns-connect", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if not result:
        raise TimeoutError(f"connect to {host}:{port} did not finish")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


async def connect_in_netns(
    netns: str, host: str, port: int, *, limit: float = 10.0
) -> socket.socket:
    """A TCP connection to ``host:port`` made inside the network namespace at ``netns`` (a path
    such as ``/proc/PID/ns/net``), non-blocking and ready for asyncio."""
    sock = await asyncio.to_thread(_connect, netns, host, port, limit)
    sock.setblocking(False)
    return sock
