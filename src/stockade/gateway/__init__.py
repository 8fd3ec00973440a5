"""The SSH gateway: Stockade's front door (see DESIGN.md, "The access path").

``ssh -p 2222 alice@host`` reaches alice's default workspace; ``ssh alice+ws2@host`` reaches
workspace ``ws2``. :class:`Gateway` accepts connections (deny-list, limits, optional PROXY
protocol), authenticates through identity, asks authz for every request, runs sessions in a
workspace backend (``local`` sandbox or an upstream ``ssh``), records them when policy says so
and reports every failure on the bus.
"""

from ._gateway import ALGORITHMS, Gateway, upstream_public_key
from ._limits import Admission, ConnectionLimits
from ._ports import AuthzPort, DenyList, EventPublisher, IdentityPort
from ._proxy_protocol import ProxyAddresses
from ._recorder import (
    CastRecorder,
    RecordingSweeper,
    compress_cast,
    export_cast,
    iter_cast,
    play_cast,
    resolve_cast,
    sweep_recordings,
)
from ._server import GatewayServer
from ._target import Target, parse_target
from .backends.ssh import parse_upstream

__all__ = [
    "ALGORITHMS",
    "Admission",
    "AuthzPort",
    "CastRecorder",
    "ConnectionLimits",
    "DenyList",
    "EventPublisher",
    "Gateway",
    "GatewayServer",
    "IdentityPort",
    "ProxyAddresses",
    "RecordingSweeper",
    "Target",
    "compress_cast",
    "export_cast",
    "iter_cast",
    "parse_target",
    "parse_upstream",
    "play_cast",
    "resolve_cast",
    "sweep_recordings",
    "upstream_public_key",
]
