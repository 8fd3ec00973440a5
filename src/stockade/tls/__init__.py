"""TLS for Stockade's own services: the dev CA and certificate hot reload."""

from ._ca import DevCA, IssuedCert
from ._reload import (
    CertificateFiles,
    TlsMaterial,
    grpc_channel_credentials,
    grpc_server_credentials,
)

__all__ = [
    "CertificateFiles",
    "DevCA",
    "IssuedCert",
    "TlsMaterial",
    "grpc_channel_credentials",
    "grpc_server_credentials",
]
