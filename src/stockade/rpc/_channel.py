"""A client channel that follows certificate rotation: new CA bundle, new client certificate.

gRPC channel credentials are fixed when a channel is made, so :class:`ReloadingChannel` keeps one
real ``grpc.aio`` channel and, at most once per ``check_every`` seconds, asks its
:class:`~stockade.tls.CertificateFiles` whether the files changed. When they did, the next call
goes out on a fresh channel built from the new material, and the old channel is closed after a
grace period (calls already on it finish there). Stubs are bound to this object, not to the real
channel, so they never notice the switch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from stockade.core import get_logger
from stockade.tls import CertificateFiles

__all__ = ["ReloadingChannel"]

log = get_logger("stockade.rpc.channel")

#: Seconds an old channel stays open for the calls still on it after a rotation.
CLOSE_GRACE = 10.0


class _Multicallable:
    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kw: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args
        self._kw = kw
        self._generation = -1
        self._inner: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel, generation = self._owner._current()
        if generation != self._generation:
            self._inner = getattr(channel, self._kind)(*self._args, **self._kw)
            self._generation = generation
        return self._inner(*args, **kwargs)


class ReloadingChannel(aio.Channel):
    """An ``aio.Channel`` to ``target`` whose TLS material follows ``files`` (see module doc)."""

    def __init__(
        self,
        target: str,
        files: CertificateFiles,
        *,
        call_credentials: grpc.CallCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._files = files
        self._call_credentials = call_credentials
        self._options = options or []
        self._check_every = check_every
        self._clock = clock
        self._checked = clock()
        self._generation = 0
        self._channel = self._make()
        self._closing: set[asyncio.Task[None]] = set()
        self.rotations = 0

    def __repr__(self) -> str:
        return f"<ReloadingChannel {self._target} rotations={self.rotations}>"

    def _make(self) -> aio.Channel:
        material = self._files.material
        creds = grpc.ssl_channel_credentials(
            root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
        )
        if self._call_credentials is not None:
            creds = grpc.composite_channel_credentials(creds, self._call_credentials)
        return aio.secure_channel(self._target, creds, options=self._options)

    def _current(self) -> tuple[aio.Channel, int]:
        now = self._clock()
        if now - self._checked >= self._check_every:
            self._checked = now
            if self._files.changed() is not None:
                old = self._channel
                self._channel = self._make()
                self._generation += 1
                self.rotations += 1
                task = asyncio.get_running_loop().create_task(old.close(grace=CLOSE_GRACE))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                log.info("rpc.channel.rotated", target=self._target, rotations=self.rotations)
        return self._channel, self._generation

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "stream_stream", args, kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(None)
