"""Request and response bodies of the broker's HTTP API (they make its OpenAPI document).

Request fields follow each client's own protocol: git's credential attributes (``protocol``,
``host``, ``path``, ``username``), Docker's server URL, kubectl's cluster. Responses carry the
secret and nothing else; every response has ``Cache-Control: no-store``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DockerCredential",
    "DockerCredentialList",
    "DockerCredentialRequest",
    "DockerListRequest",
    "ErrorBody",
    "GitCredential",
    "GitCredentialRequest",
    "KubernetesCredential",
    "KubernetesCredentialRequest",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(BaseModel):
    """Every error answer: a code, a short reason and one line for people."""

    error: str = Field(description="Machine-friendly code, e.g. token_rejected, denied.")
    reason: str = Field(description="Short cause, e.g. expired, session_ended, or a policy reason.")
    message: str = Field(description="One line for people.")


class GitCredentialRequest(_Request):
    """git's credential attributes (gitcredentials(7)) for one ``get``."""

    protocol: Literal["http", "https"] = Field(description="git's protocol attribute.")
    host: str = Field(
        min_length=1, max_length=261, description="Host with :port when the URL has one."
    )
    path: str | None = Field(
        default=None, max_length=4096, description="Repository path (credential.useHttpPath)."
    )
    username: str | None = Field(
        default=None, max_length=256, description="User name from the URL, if any."
    )


class GitCredential(BaseModel):
    """What ``git-credential-stockade get`` prints back to git."""

    username: str
    password: str
    password_expiry_utc: int | None = Field(
        default=None, description="Unix time the password stops working, when known."
    )


class DockerCredentialRequest(_Request):
    """docker-credential-helpers ``get``: the server URL Docker passes on stdin."""

    server_url: str = Field(
        min_length=1,
        max_length=2048,
        description="e.g. https://index.docker.io/v1/ or registry.example.com:5000",
    )


class DockerCredential(BaseModel):
    """The ``ServerURL``/``Username``/``Secret`` triple of docker-credential-helpers."""

    server_url: str
    username: str
    secret: str


class DockerListRequest(_Request):
    """docker-credential-helpers ``list`` takes no input."""


class DockerCredentialList(BaseModel):
    """docker-credential-helpers ``list``: server URL to user name, never a secret."""

    credentials: dict[str, str]


class KubernetesCredentialRequest(_Request):
    """kubectl exec plugin call: the cluster (kubeconfig name), and its server when known."""

    cluster: str = Field(min_length=1, max_length=253)
    server: str | None = Field(
        default=None, max_length=2048, description="spec.cluster.server from KUBERNETES_EXEC_INFO."
    )


class KubernetesCredential(BaseModel):
    """Becomes an ExecCredential ``status``: the token and when it expires."""

    token: str
    expiration_timestamp: datetime
