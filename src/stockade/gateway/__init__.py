"""The SSH gateway: Stockade's front door (see DESIGN.md, "The access path")."""

from ._limits import Admission, ConnectionLimits
from ._ports import AuthzPort, DenyList, EventPublisher, IdentityPort
from ._proxy_protocol import ProxyAddresses
from ._recorder import CastRecorder
from ._target import Target, parse_target

__all__ = [
    "Admission",
    "AuthzPort",
    "CastRecorder",
    "ConnectionLimits",
    "DenyList",
    "EventPublisher",
    "IdentityPort",
    "ProxyAddresses",
    "Target",
    "parse_target",
]
