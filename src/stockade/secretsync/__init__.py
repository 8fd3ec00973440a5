"""Secrets from Vault/OpenBao into Kubernetes Secrets: the ``VaultSecret`` resource and controller.

The controller logs in to Vault with its projected service-account token (JWT auth), reads KV v1
or v2, writes the destination Secret through a :class:`KubernetesAdapter`, keeps an HMAC of the
data in the status, restarts rollout targets when the data changes and reports a
``SecretSynced`` condition.
"""

from ._controller import ReconcileResult, SecretReader, SecretSyncController, render
from ._kube import (
    HttpKubernetesAdapter,
    KubernetesAdapter,
    KubernetesError,
    RecordingAdapter,
    SecretObject,
    Write,
)
from ._resource import (
    API_VERSION,
    FORCE_SYNC_ANNOTATION,
    KIND,
    MANAGED_BY,
    Condition,
    Destination,
    RolloutRestartTarget,
    VaultSecret,
    VaultSecretSpec,
    VaultSecretStatus,
)
from ._vault import SecretPathMissing, VaultReader

__all__ = [
    "API_VERSION",
    "FORCE_SYNC_ANNOTATION",
    "KIND",
    "MANAGED_BY",
    "Condition",
    "Destination",
    "HttpKubernetesAdapter",
    "KubernetesAdapter",
    "KubernetesError",
    "ReconcileResult",
    "RecordingAdapter",
    "RolloutRestartTarget",
    "SecretObject",
    "SecretPathMissing",
    "SecretReader",
    "SecretSyncController",
    "VaultReader",
    "VaultSecret",
    "VaultSecretSpec",
    "VaultSecretStatus",
    "Write",
    "render",
]
