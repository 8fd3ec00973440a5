"""The SSH gateway: Stockade's front door (see docs/architecture.md, "The access path").

``ssh -p 2222 alice@host`` reaches alice's default workspace; ``ssh alice+ws2@host`` reaches
workspace ``ws2``. :class:`Gateway` admits connections (deny-list, limits, optional PROXY
protocol), hands each credential to identity (``authenticate_key``) and one ``ssh.connect``
decision to authz, registers the login as one session (``open_session``), decides every channel
request on its own, plans it (:func:`plan_session`) and runs it in a workspace backend, recording
it when policy says so; revocations arrive on the bus and end sessions at once.
"""

from ._gateway import (
    ALGORITHMS,
    EventSource,
    FailureSink,
    Gateway,
    check_host_key_files,
    upstream_public_key,
)
from ._heartbeat import default_gateway_id
from ._limits import Admission, ConnectionLimits
from ._login import Login
from ._plan import ChannelRequest, Refusal, SessionPlan, plan_session
from ._ports import DenyList
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
from ._termfilter import TerminalFilter
from .backends.container import ContainerBackend
from .backends.ssh import parse_upstream

__all__ = [
    "ALGORITHMS",
    "Admission",
    "CastRecorder",
    "ChannelRequest",
    "ConnectionLimits",
    "ContainerBackend",
    "DenyList",
    "EventSource",
    "FailureSink",
    "Gateway",
    "GatewayServer",
    "Login",
    "ProxyAddresses",
    "RecordingSweeper",
    "Refusal",
    "SessionPlan",
    "TerminalFilter",
    "check_host_key_files",
    "compress_cast",
    "default_gateway_id",
    "export_cast",
    "iter_cast",
    "parse_upstream",
    "plan_session",
    "play_cast",
    "resolve_cast",
    "sweep_recordings",
    "upstream_public_key",
]
