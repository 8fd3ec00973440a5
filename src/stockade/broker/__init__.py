"""The broker: credentials on demand for git, Docker and kubectl inside Stockade sessions.

::

    server = BrokerServer.from_settings(settings, identity=identity, authz=authorizer,
                                        publisher=bus, ca=dev_ca)
    await server.start()                                   # https://127.0.0.1:8443
    workspace_config(home, server.url, server.ca_path,     # per new session
                     helper_binary=static_helper())
    sock = await server.open_session_socket(session_id, token, path, uid)  # mount it in
    await server.stop()

:func:`create_app` builds the FastAPI app (``POST /v1/credentials/{git,docker,kubernetes}``,
OpenAPI at ``/openapi.json``); :class:`VaultBackend` and :class:`KubernetesBackend` answer it;
:mod:`stockade.helpers` holds the credential helpers.

This module imports its names lazily, so importing it stays cheap.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing costs milliseconds the helpers do not have
if TYPE_CHECKING:
    from typing import Any

    from ._app import ACTION, AUDIT_ACTION, create_app
    from ._kubernetes import KubernetesBackend
    from ._liveness import LiveSessions
    from ._server import BrokerServer, build_backends
    from ._sockets import SessionSocket
    from ._types import (
        AuditSearcher,
        Credential,
        CredentialBackend,
        CredentialQuery,
        EventPublisher,
        PolicyDecider,
        TokenVerifier,
    )
    from ._vault import VaultBackend
    from ._wiring import KubeCluster, workspace_config

__all__ = [
    "ACTION",
    "AUDIT_ACTION",
    "AuditSearcher",
    "BrokerServer",
    "Credential",
    "CredentialBackend",
    "CredentialQuery",
    "EventPublisher",
    "KubeCluster",
    "KubernetesBackend",
    "LiveSessions",
    "PolicyDecider",
    "SessionSocket",
    "TokenVerifier",
    "VaultBackend",
    "build_backends",
    "create_app",
    "workspace_config",
]

_WHERE = {
    "ACTION": "._app",
    "AUDIT_ACTION": "._app",
    "AuditSearcher": "._types",
    "BrokerServer": "._server",
    "Credential": "._types",
    "CredentialBackend": "._types",
    "CredentialQuery": "._types",
    "EventPublisher": "._types",
    "KubeCluster": "._wiring",
    "KubernetesBackend": "._kubernetes",
    "LiveSessions": "._liveness",
    "SessionSocket": "._sockets",
    "PolicyDecider": "._types",
    "TokenVerifier": "._types",
    "VaultBackend": "._vault",
    "build_backends": "._server",
    "create_app": "._app",
    "workspace_config": "._wiring",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


del TYPE_CHECKING
