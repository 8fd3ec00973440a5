"""The controller's only door to Kubernetes: a small adapter interface and two implementations.

:class:`KubernetesAdapter` is everything the controller asks of the API server: read, create,
replace and delete one Secret, restart a rollout target, write a VaultSecret's status.
:class:`RecordingAdapter` keeps objects in memory and records every write (tests, dry runs);
:class:`HttpKubernetesAdapter` speaks the API server's REST API over httpx with the Pod's
service-account token and CA (in-cluster), its request shapes are those of ``kubectl``.
Secret data travels base64-encoded as the API requires, and is never logged.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from stockade.core import BackendError, StockadeError

from ._resource import API_VERSION, KIND, VaultSecret, VaultSecretStatus

__all__ = [
    "HttpKubernetesAdapter",
    "KubernetesAdapter",
    "KubernetesError",
    "RecordingAdapter",
    "SecretObject",
    "Write",
]

_PLURAL = "vaultsecrets"
_WORKLOADS = {"Deployment": "deployments", "StatefulSet": "statefulsets",
              "DaemonSet": "daemonsets", "ReplicaSet": "replicasets"}  # fmt: skip


class KubernetesError(BackendError):
    """The API server refused or could not be reached (status code kept, body dropped)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SecretObject:
    """A Secret: decoded ``data``, and the metadata the controller reads or writes."""

    namespace: str
    name: str
    data: dict[str, str]
    type: str = "Opaque"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner_uid: str = ""
    resource_version: str = ""

    def __repr__(self) -> str:
        return f"<SecretObject {self.namespace}/{self.name} keys={sorted(self.data)} data=[secure]>"

    def to_object(self, owner: VaultSecret | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        if owner is not None and owner.uid:
            meta["ownerReferences"] = [
                {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid,
                 "controller": True, "blockOwnerDeletion": False}
            ]  # fmt: skip
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": self.type,
            "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in sorted(self.data.items())
            },
        }

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> SecretObject:
        meta = obj.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        owner = next((o.get("uid", "") for o in owners if o.get("kind") == KIND), "")
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            data={k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()},
            type=obj.get("type", "Opaque"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            owner_uid=owner,
            resource_version=str(meta.get("resourceVersion", "")),
        )


class KubernetesAdapter(Protocol):
    """What the controller needs from the API server (see the module docstring)."""

    async def list_vault_secrets(self) -> list[VaultSecret]: ...

    async def get_secret(self, namespace: str, name: str) -> SecretObject | None: ...

    async def create_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None: ...

    async def replace_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None: ...

    async def delete_secret(self, namespace: str, name: str) -> None: ...

    async def restart(self, namespace: str, kind: str, name: str, at: datetime) -> None: ...

    async def update_status(self, resource: VaultSecret, status: VaultSecretStatus) -> None: ...


@dataclass(frozen=True)
class Write:
    """One recorded write: ``verb`` and what it touched (Secret data as MAC-free key names)."""

    verb: str
    namespace: str
    name: str
    detail: Any = None


class RecordingAdapter:
    """In-memory API server: Secrets by (namespace, name), statuses, and a list of writes."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], SecretObject] = {}
        self.statuses: dict[tuple[str, str], VaultSecretStatus] = {}
        self.vault_secrets: dict[tuple[str, str], VaultSecret] = {}
        self.writes: list[Write] = []

    def apply(self, resource: VaultSecret) -> VaultSecret:
        """Create or change a VaultSecret as ``kubectl apply`` would (status kept)."""
        key = (resource.namespace, resource.name)
        old = self.vault_secrets.get(key)
        generation = old.generation + (old.spec != resource.spec) if old else 1
        stored = resource.model_copy(
            update={"generation": generation, "status": old.status if old else resource.status}
        )
        self.vault_secrets[key] = stored
        return stored

    async def list_vault_secrets(self) -> list[VaultSecret]:
        return list(self.vault_secrets.values())

    async def get_secret(self, namespace: str, name: str) -> SecretObject | None:
        return self.secrets.get((namespace, name))

    async def create_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None:
        key = (secret.namespace, secret.name)
        if key in self.secrets:
            raise KubernetesError(f"secret {secret.namespace}/{secret.name} exists", 409)
        self.secrets[key] = _owned(secret, owner)
        self.writes.append(Write("create", secret.namespace, secret.name, sorted(secret.data)))

    async def replace_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None:
        key = (secret.namespace, secret.name)
        if key not in self.secrets:
            raise KubernetesError(f"secret {secret.namespace}/{secret.name} not found", 404)
        self.secrets[key] = _owned(secret, owner)
        self.writes.append(Write("replace", secret.namespace, secret.name, sorted(secret.data)))

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.secrets.pop((namespace, name), None)
        self.writes.append(Write("delete", namespace, name))

    async def restart(self, namespace: str, kind: str, name: str, at: datetime) -> None:
        self.writes.append(Write("restart", namespace, name, kind))

    async def update_status(self, resource: VaultSecret, status: VaultSecretStatus) -> None:
        key = (resource.namespace, resource.name)
        self.statuses[key] = status
        if key in self.vault_secrets:
            self.vault_secrets[key] = self.vault_secrets[key].with_status(status)

    def secret_writes(self) -> list[Write]:
        return [w for w in self.writes if w.verb in {"create", "replace", "delete"}]


def _owned(secret: SecretObject, owner: VaultSecret | None) -> SecretObject:
    if owner is None:
        return secret
    return SecretObject(**{**secret.__dict__, "owner_uid": owner.uid})


class HttpKubernetesAdapter:
    """The API server's REST API over httpx (in-cluster service-account credentials).

    ``token`` is the path of the Pod's projected API token (re-read on each request: kubelet
    rotates it), ``ca`` the cluster CA bundle.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: Path,
        ca: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._http = httpx.AsyncClient(
            timeout=10.0, verify=str(ca) if ca else True, transport=transport
        )

    def __repr__(self) -> str:
        return f"<HttpKubernetesAdapter {self._base}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content_type: str = "application/json",
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self._token.read_text().strip()}",
            "Accept": "application/json",
        }
        if json is not None:
            headers["Content-Type"] = content_type
        try:
            response = await self._http.request(
                method, self._base + path, headers=headers, json=json
            )
        except httpx.HTTPError as exc:
            raise KubernetesError(f"{method} {path}: {type(exc).__name__}") from None
        if response.status_code >= 300 and response.status_code not in allow:
            # The body may echo the object (Secret data): keep only the status's reason.
            reason = ""
            with contextlib.suppress(ValueError):
                reason = str(response.json().get("reason", ""))[:64]
            raise KubernetesError(
                f"{method} {path}: HTTP {response.status_code} {reason}".strip(),
                response.status_code,
            )
        return response

    async def list_vault_secrets(self) -> list[VaultSecret]:
        group, version = API_VERSION.split("/")
        response = await self._call("GET", f"/apis/{group}/{version}/{_PLURAL}")
        return [VaultSecret.from_object(item) for item in response.json().get("items", [])]

    @staticmethod
    def _secret_path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/secrets"
        return base if name is None else f"{base}/{name}"

    async def get_secret(self, namespace: str, name: str) -> SecretObject | None:
        response = await self._call("GET", self._secret_path(namespace, name), allow=(404,))
        if response.status_code == 404:
            return None
        return SecretObject.from_object(response.json())

    async def create_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None:
        await self._call("POST", self._secret_path(secret.namespace), json=secret.to_object(owner))

    async def replace_secret(self, secret: SecretObject, owner: VaultSecret | None) -> None:
        await self._call(
            "PUT", self._secret_path(secret.namespace, secret.name), json=secret.to_object(owner)
        )

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call("DELETE", self._secret_path(namespace, name), allow=(404,))

    async def restart(self, namespace: str, kind: str, name: str, at: datetime) -> None:
        """What ``kubectl rollout restart`` sends: a strategic merge patch of the template."""
        plural = _WORKLOADS.get(kind)
        if plural is None:
            raise StockadeError(f"cannot restart a {kind}")
        stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": stamp}}}}}  # fmt: skip
        await self._call(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}",
            json=patch,
            content_type="application/strategic-merge-patch+json",
        )

    async def update_status(self, resource: VaultSecret, status: VaultSecretStatus) -> None:
        group, version = API_VERSION.split("/")
        await self._call(
            "PATCH",
            f"/apis/{group}/{version}/namespaces/{resource.namespace}/{_PLURAL}/{resource.name}/status",
            json={"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)},
            content_type="application/merge-patch+json",
        )
