"""gRPC for the internal API: servicers around identity and authz, and clients with the same
asynchronous interface, so a service never knows whether its collaborator is in-process."""

from ._authz import AuthzClient, AuthzServicer
from ._channel import ReloadingChannel
from ._errors import from_rpc_error, status_for
from ._identity import IdentityClient, IdentityServicer
from ._server import RpcServer, admin_channel, mtls_channel
from ._service_auth import (
    HEALTH_SERVICE,
    ServiceAuthInterceptor,
    current_service,
    service_token_credentials,
)

__all__ = [
    "HEALTH_SERVICE",
    "AuthzClient",
    "AuthzServicer",
    "IdentityClient",
    "IdentityServicer",
    "ReloadingChannel",
    "RpcServer",
    "ServiceAuthInterceptor",
    "admin_channel",
    "current_service",
    "from_rpc_error",
    "mtls_channel",
    "service_token_credentials",
    "status_for",
]
