"""The gateway's heartbeat into the session registry, and its default, unique name.

Every ``interval`` seconds the gateway calls ``identity.heartbeat``: the beat says this boot is
alive and, in the same transaction, ends the sessions of every other gateway boot silent for
longer than ``timeout`` (their tokens stop verifying at once). So a gateway killed with
``kill -9`` has its sessions ended by any live gateway within ``timeout`` plus one interval.
A failed beat (identity unreachable) is logged and retried at the next tick. A beat answered
``alive=False`` means this boot was declared dead while it still ran (a partition, a long
pause): its sessions were ended in the registry, so ``on_dead`` closes them here too and the
gateway carries on under a new boot id. Beats failing for longer than ``timeout`` mean the
same (the others declare this boot dead then, and no kill may reach it): ``on_dead`` runs
without waiting to be told, so a gateway cut off from identity does not go on serving
sessions the registry has ended (fail closed). A beat that is only slow (identity answers,
late: a busy store) is waited for, not counted as a failure: its answer tells whether this boot
was declared dead meanwhile. A beat that never returns ends with the client's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from stockade.core.errors import StockadeError
from stockade.core.logging import get_logger
from stockade.core.settings import instance_id
from stockade.core.tasks import cancel_and_wait
from stockade.identity import IdentityAPI

__all__ = ["HeartbeatLoop", "default_gateway_id"]

_log = get_logger("stockade.gateway.heartbeat")


def default_gateway_id(data_dir: Path) -> str:
    """``<host name>-<instance id>``: unique per host and data dir (two gateways on one host
    have two data dirs), stable across restarts so a restart ends what the last boot left."""
    host = socket.gethostname()[:100] or "gateway"
    return f"{host}-{instance_id(data_dir)[:12]}"


class HeartbeatLoop:
    """Beats for ``gateway_id`` / ``boot_id()`` until :meth:`stop` (see the module docstring)."""

    def __init__(
        self,
        identity: IdentityAPI,
        *,
        gateway_id: str,
        boot_id: Callable[[], str],
        interval: float,
        timeout: float,
        on_dead: Callable[[], Awaitable[None]],
    ) -> None:
        self._identity = identity
        self._gateway_id = gateway_id
        self._boot_id = boot_id
        self._interval = interval
        self._timeout = timeout
        self._on_dead = on_dead
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[bool] | None = None
        """The beat in flight (a slow one is waited for, never abandoned)."""
        self.beats = 0
        self.failures = 0
        self.ended_elsewhere = 0

    async def beat(self) -> bool:
        """One beat now; False when this boot had been declared dead (``on_dead`` ran)."""
        result = await self._identity.heartbeat(
            self._gateway_id, self._boot_id(), stale_after=self._timeout
        )
        self.beats += 1
        if result.ended:
            self.ended_elsewhere += len(result.ended)
            _log.warning("dead_gateway_sessions_ended", count=len(result.ended),
                         sessions=[s.session_id for s in result.ended][:20])  # fmt: skip
        if not result.alive:
            _log.error("gateway_declared_dead", gateway_id=self._gateway_id)
            await self._on_dead()
        return result.alive

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-heartbeat")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = last_ok = loop.time()
        cut_off = False
        wait = max(self._interval, 1.0) * 2
        while True:
            next_at += self._interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            started = loop.time()
            if self._pending is None:
                self._pending = asyncio.create_task(self.beat(), name="gateway-beat")
            done, _ = await asyncio.wait({self._pending}, timeout=wait)
            if not done:
                # identity answers, slowly (a busy store: SQLite's writers queue): not a
                # partition. The beat goes on and counts when it lands; if another gateway
                # declared this boot dead meanwhile, its answer says so (alive=False).
                _log.warning("heartbeat_slow", waited=round(loop.time() - started, 1))
                continue
            beat, self._pending = self._pending, None
            try:
                beat.result()
            except Exception as exc:
                # unreachable (a client's deadline included), or on_dead failed: a failed beat
                # either way, never the loop's end (a dead loop cuts nothing off: fail open)
                self.failures += 1
                _log.warning("heartbeat_failed", error=str(exc) or type(exc).__name__)
                if not cut_off and loop.time() - last_ok > self._timeout:
                    cut_off = True  # once per outage: the boot it runs as now is a new one
                    _log.error("gateway_cut_off", gateway_id=self._gateway_id,
                               silent_for=round(loop.time() - last_ok, 1))  # fmt: skip
                    try:
                        await self._on_dead()
                    except Exception as dead_exc:  # the next failed beat tries again
                        cut_off = False
                        _log.error("gateway_cut_off_failed", error=repr(dead_exc)[:200])
            else:
                last_ok, cut_off = loop.time(), False
            next_at = max(next_at, loop.time())  # after a slow beat, no burst to catch up

    async def stop(self) -> None:
        """Stop beating and mark this boot ended on purpose (best effort: a failure only means
        another gateway will declare it dead, and its sessions are ended already)."""
        if self.beats == 0 and self._task is None:
            return  # never registered: nothing to end
        with contextlib.suppress(Exception):  # their failures were counted and logged
            await cancel_and_wait(self._task, self._pending, what="heartbeat")
        self._task = self._pending = None
        try:
            await asyncio.wait_for(
                self._identity.heartbeat(
                    self._gateway_id, self._boot_id(), stale_after=self._timeout, stopping=True
                ),
                timeout=2,
            )
        except (StockadeError, TimeoutError) as exc:
            _log.warning("heartbeat_stop_failed", error=str(exc) or type(exc).__name__)
