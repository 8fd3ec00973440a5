"""The event bus: NATS with JetStream, and the embedded ``nats-server``.

::

    async with EmbeddedNats(settings.data_dir) as url:       # or settings.bus.url
        bus = await Bus.connect(url, name="gateway")
        await bus.ensure_streams()
        await bus.publish(AuthFailed(...))                     # stored, acknowledged
        kv = await bus.key_value("shield_bans")                # per-key TTL, watches
        consumer = bus.consumer(stream="STOCKADE_AUTH", durable="shield")

        @consumer.on("stockade.auth.failed")
        async def on_failed(delivery: Delivery) -> None: ...

        await bus.close()

Every nats-py exception is mapped to :class:`~stockade.core.errors.BusUnavailable` here; see
:mod:`stockade.bus._consumer` for what a handler's return or exception means.
"""

from ._batch import FailureBatcher
from ._client import Bus
from ._consumer import (
    AckHook,
    Consumer,
    ConsumerState,
    Delivery,
    Handler,
    Reject,
    Retry,
    subject_matches,
)
from ._embedded import EmbeddedNats, nats_server_binary
from ._kv import KeyValueStore, KvEntry, KvWatch, PendingPut, valid_key
from ._reliable import ReliablePublisher

__all__ = [
    "AckHook",
    "Bus",
    "Consumer",
    "ConsumerState",
    "Delivery",
    "EmbeddedNats",
    "FailureBatcher",
    "Handler",
    "KeyValueStore",
    "KvEntry",
    "KvWatch",
    "PendingPut",
    "Reject",
    "ReliablePublisher",
    "Retry",
    "nats_server_binary",
    "subject_matches",
    "valid_key",
]
