"""The ``VaultSecret`` custom resource: spec, status and conditions.

The spec follows Vault Secrets Operator's ``VaultStaticSecret`` (``mount``, ``path``, ``type``
``kv-v1|kv-v2``, ``version``, ``refreshAfter``, ``destination``, ``rolloutRestartTargets``,
``hmacSecretData``) and External Secrets' refresh semantics (``refreshPolicy``:
``Periodic`` re-reads every ``refreshAfter``; ``CreatedOnce`` writes the Secret once and never
again; ``OnChange`` re-reads only when the VaultSecret's spec changes), plus the force-sync
annotation :data:`FORCE_SYNC_ANNOTATION`: a new value syncs at the next reconcile.
Field names are the resource's camelCase; the CRD in ``deploy/helm/stockade/crds`` has the same
shape as its OpenAPI v3 schema.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from stockade.core import InvalidInput, parse_duration

__all__ = [
    "API_VERSION",
    "FORCE_SYNC_ANNOTATION",
    "KIND",
    "MANAGED_BY",
    "Condition",
    "Destination",
    "RolloutRestartTarget",
    "VaultSecret",
    "VaultSecretSpec",
    "VaultSecretStatus",
]

GROUP = "secretsync.stockade.dev"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "VaultSecret"
#: Changing this annotation's value on a VaultSecret forces a sync at the next reconcile.
FORCE_SYNC_ANNOTATION = f"{GROUP}/force-sync"
#: The ``app.kubernetes.io/managed-by`` value of Secrets the controller writes.
MANAGED_BY = "stockade-secretsync"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Template(_Model):
    text: str = Field(max_length=65536)


class Transformation(_Model):
    templates: dict[str, Template] = Field(default_factory=dict)
    exclude_raw: bool = False


class Destination(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    create: bool = False
    overwrite: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    type: str = "Opaque"
    transformation: Transformation = Field(default_factory=Transformation)


class RolloutRestartTarget(_Model):
    kind: Literal["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"]
    name: str = Field(min_length=1, max_length=253)


class VaultSecretSpec(_Model):
    mount: str = Field(min_length=1, max_length=256)
    path: str = Field(min_length=1, max_length=1024)
    type: Literal["kv-v1", "kv-v2"]
    version: int | None = Field(default=None, ge=0)
    refresh_after: str = "60s"
    refresh_policy: Literal["Periodic", "CreatedOnce", "OnChange"] = "Periodic"
    hmac_secret_data: bool = True
    destination: Destination
    rollout_restart_targets: list[RolloutRestartTarget] = Field(default_factory=list)

    @field_validator("refresh_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            parse_duration(value, field="refreshAfter")
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("path is relative to the mount and has no '..' segments")
        return value

    @property
    def refresh_interval(self) -> timedelta:
        return parse_duration(self.refresh_after, field="refreshAfter")


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime | None = None


class VaultSecretStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    #: HMAC-SHA256 of the Secret's data as last written (hex); never the data.
    secret_mac: str = ""
    last_generation: int = 0
    last_synced_at: datetime | None = None
    #: The force-sync annotation value already acted on.
    force_sync_seen: str = ""
    #: Whether the controller created the destination Secret (and so deletes it).
    created: bool = False
    conditions: list[Condition] = Field(default_factory=list)


class VaultSecret(_Model):
    """A VaultSecret object as the API server returns it (``metadata``, ``spec``, ``status``)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    name: str
    namespace: str
    uid: str = ""
    generation: int = 1
    annotations: dict[str, str] = Field(default_factory=dict)
    spec: VaultSecretSpec
    status: VaultSecretStatus = Field(default_factory=VaultSecretStatus)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> VaultSecret:
        """Parse an API object; :class:`InvalidInput` names the first bad field."""
        meta = obj.get("metadata") or {}
        try:
            return cls.model_validate(
                {
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace", "default"),
                    "uid": meta.get("uid", ""),
                    "generation": meta.get("generation", 1),
                    "annotations": meta.get("annotations") or {},
                    "spec": obj.get("spec"),
                    "status": obj.get("status") or {},
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"VaultSecret {meta.get('name')!r}: {where}", first["msg"]) from None

    def with_status(self, status: VaultSecretStatus) -> VaultSecret:
        return self.model_copy(update={"status": status})
