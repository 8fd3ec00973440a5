"""The ban store: one NATS KV bucket, one key per source, per-key TTL.

A record lives ``remaining ban + strike memory`` seconds: the server deletes it by itself, so
expired bans and forgotten strikes need no sweeper, and a restart of any process keeps every ban
and its expiry (the bucket is on JetStream file storage).
"""

from __future__ import annotations

import functools
import time

from stockade.bus import Bus, KeyValueStore, PendingPut

from ._model import Ban, parse_source, source_key

__all__ = ["BUCKET", "BanStore", "kv_key", "source_of_key"]

#: KV bucket holding the ban records.
BUCKET = "stockade_shield_bans"


@functools.lru_cache(maxsize=65536)
def kv_key(source: str) -> str:
    """The KV key of a source (``:`` is not allowed in keys, ``_`` never appears in addresses)."""
    return source_key(parse_source(source)).replace(":", "_")


def source_of_key(key: str) -> str:
    return key.replace("_", ":")


class BanStore:
    """Read and write ban records; :meth:`open` creates the bucket idempotently."""

    def __init__(self, kv: KeyValueStore, *, strike_memory: float) -> None:
        self.kv = kv
        self.strike_memory = strike_memory

    @classmethod
    async def open(cls, bus: Bus, *, strike_memory: float) -> BanStore:
        return cls(await bus.key_value(BUCKET), strike_memory=strike_memory)

    async def put(self, ban: Ban, *, now: float | None = None) -> None:
        """Store ``ban``; returns once the server has it on disk."""
        now = time.time() if now is None else now
        ttl = ban.remaining(now) + self.strike_memory
        await self.kv.put(kv_key(ban.source), ban.to_bytes(), ttl=max(ttl, 1.0))

    async def put_async(self, ban: Ban, *, now: float | None = None) -> PendingPut:
        """Send ``ban`` without waiting; ``await pending.wait()`` returns once it is on disk."""
        now = time.time() if now is None else now
        ttl = ban.remaining(now) + self.strike_memory
        return await self.kv.put_async(kv_key(ban.source), ban.to_bytes(), ttl=max(ttl, 1.0))

    async def get(self, source: str) -> Ban | None:
        entry = await self.kv.get(kv_key(source))
        if entry is None or entry.value is None:
            return None
        return Ban.from_bytes(entry.value)

    async def remove(self, source: str) -> bool:
        """Forget ``source``'s record (ban and strikes); False when there was none."""
        key = kv_key(source)
        if await self.kv.get(key) is None:
            return False
        await self.kv.delete(key)
        return True

    async def all(self) -> list[Ban]:
        """Every record (active bans and remembered strikes), sorted by source."""
        return [Ban.from_bytes(e.value) for e in await self.kv.entries() if e.value is not None]
