"""gRPC for the internal API: servicers around identity and authz, and clients with the same
asynchronous interface, so a service never knows whether its collaborator is in-process."""

from ._authz import AuthzClient, AuthzServicer
from ._errors import from_rpc_error, status_for
from ._identity import IdentityClient, IdentityServicer
from ._server import RpcServer, admin_channel, mtls_channel

__all__ = [
    "AuthzClient",
    "AuthzServicer",
    "IdentityClient",
    "IdentityServicer",
    "RpcServer",
    "admin_channel",
    "from_rpc_error",
    "mtls_channel",
    "status_for",
]
