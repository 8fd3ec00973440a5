"""How admin commands reach identity: the running server's admin socket, or the store directly.

With ``stockade up`` running, commands go through its admin socket (``<data dir>/run/admin.sock``,
0600), so the server that owns the store performs every change. With nothing running — or with
``--direct`` — the command opens the store itself, migrates it if needed and works on it in one
transaction per command. Both paths raise the same errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from stockade.bus import Bus, EmbeddedNats
from stockade.core import BusUnavailable, Settings, get_logger
from stockade.identity import IdentityService
from stockade.rpc import IdentityClient, admin_channel
from stockade.store import Store

from ._datadir import keyring_for, prepare_data_dir

__all__ = ["AdminIdentity", "admin_identity"]

log = get_logger("stockade.cli")

#: What an admin command talks to; both have the same asynchronous methods.
AdminIdentity = IdentityService | IdentityClient

_READY_TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def admin_identity(
    settings: Settings, *, direct: bool = False
) -> AsyncIterator[AdminIdentity]:
    """Yield the identity service to administer, remote when a server answers."""
    socket_path = settings.admin_socket
    if not direct and socket_path.exists():
        channel = admin_channel(socket_path)
        try:
            await asyncio.wait_for(channel.channel_ready(), _READY_TIMEOUT)
        except TimeoutError:
            await channel.close(None)
            log.warning(
                "admin socket did not answer; using the store directly", socket=str(socket_path)
            )
        else:
            try:
                yield IdentityClient(channel, target=str(socket_path))
            finally:
                await channel.close(None)
            return
    prepare_data_dir(settings)
    store = Store(settings.database_url, echo=settings.store.echo)
    bus: Bus | None = None
    try:
        await store.migrate()
        bus = await _running_bus(settings)
        yield IdentityService(
            store=store, settings=settings.identity, keyring=keyring_for(settings), publisher=bus
        )
    finally:
        if bus is not None:
            await bus.close()
        await store.close()


async def _running_bus(settings: Settings) -> Bus | None:
    """The bus the gateways listen on, when one runs: a change made on the store directly
    (``--direct``: a session killed, a workspace removed, a user disabled) must still reach
    them, or the SSH sessions it ends keep running there (only their tokens would stop).
    None, said in the log, when no bus answers: nothing then tells the gateways."""
    url = settings.bus.url or await EmbeddedNats.running_url(settings.data_dir)
    if url is None:
        return None
    token = None if settings.bus.url else EmbeddedNats.read_token(settings.data_dir)
    try:
        return await Bus.connect(
            url, name="stockade-admin", connect_timeout=settings.bus.connect_timeout, token=token
        )
    except BusUnavailable as exc:
        log.warning(
            "bus unavailable: gateways are not told; sessions ended here keep running there",
            error=str(exc),
        )
        return None
