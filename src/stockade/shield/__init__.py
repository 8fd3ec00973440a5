"""SSH Shield: bans brute-force sources from the gateway's ``stockade.auth.failed`` stream.

Wiring (``stockade up``)::

    shield = Shield(bus, settings.shield, ports=[gateway_port])  # nft drops on that port
    await shield.start()                           # bans loaded and enforced, consumer running
    gateway = Gateway(..., deny_list=shield.deny_list)
    ...
    await shield.stop()

A gateway in another process follows the ban store itself::

    deny_list = DenyList()
    sync = await BanSync.start(bus, [deny_list])   # KV watch keeps it current
    if deny_list.is_banned(peer_ip): close the socket before any SSH byte
    await sync.stop()

Pieces: :class:`Detector` (pure sliding windows, decide-then-apply), :class:`BanStore` (NATS KV,
per-key TTL), enforcers behind one :class:`Enforcer` interface (:class:`DenyList`,
:class:`NftablesEnforcer`, :class:`ExecEnforcer`), :class:`ShieldMetrics` (Prometheus text).
"""

from ._detector import Detector, Failure, Outcome, Rules, Verdict
from ._enforce import BanSync, DenyList, Enforcer, ExecEnforcer
from ._metrics import ShieldMetrics
from ._model import Ban, is_allowlisted, parse_source, source_key
from ._nft import Nft, NftablesEnforcer, NftError
from ._service import DURABLE, SEQ_SCALE, Shield, build_enforcers, manual_ban, manual_unban
from ._store import BanStore

__all__ = [
    "DURABLE",
    "SEQ_SCALE",
    "Ban",
    "BanStore",
    "BanSync",
    "DenyList",
    "Detector",
    "Enforcer",
    "ExecEnforcer",
    "Failure",
    "Nft",
    "NftError",
    "NftablesEnforcer",
    "Outcome",
    "Rules",
    "Shield",
    "ShieldMetrics",
    "Verdict",
    "build_enforcers",
    "is_allowlisted",
    "manual_ban",
    "manual_unban",
    "parse_source",
    "source_key",
]
