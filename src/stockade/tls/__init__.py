"""TLS and service identity for Stockade's own services.

The dev CA, certificates that reload when their files change and renew themselves (dev CA or
OpenBao PKI), and verification of Kubernetes projected service-account tokens.
"""

from ._ca import (
    GATEWAY_URI_PREFIX,
    DevCA,
    IssuedCert,
    common_names,
    dns_names,
    gateway_ids,
    gateway_uri,
)
from ._jwks import JwksCache
from ._reload import (
    CertificateFiles,
    ReloadingServerContext,
    TlsMaterial,
    grpc_channel_credentials,
    grpc_server_credentials,
)
from ._renew import (
    CertificateRenewer,
    CertificateSource,
    DevCASource,
    IssuedMaterial,
    OpenBaoPKISource,
)
from ._service_token import (
    MethodAllowList,
    ProjectedToken,
    RejectionStatus,
    ServiceIdentity,
    ServiceTokenRejected,
    ServiceTokenVerifier,
    load_allow_list,
    vault_jwt_login,
)

__all__ = [
    "GATEWAY_URI_PREFIX",
    "CertificateFiles",
    "CertificateRenewer",
    "CertificateSource",
    "DevCA",
    "DevCASource",
    "IssuedCert",
    "IssuedMaterial",
    "JwksCache",
    "MethodAllowList",
    "OpenBaoPKISource",
    "ProjectedToken",
    "RejectionStatus",
    "ReloadingServerContext",
    "ServiceIdentity",
    "ServiceTokenRejected",
    "ServiceTokenVerifier",
    "TlsMaterial",
    "common_names",
    "dns_names",
    "gateway_ids",
    "gateway_uri",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "load_allow_list",
    "vault_jwt_login",
]
