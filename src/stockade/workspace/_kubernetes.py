"""The Kubernetes runtime: a thin adapter from rendered objects to API requests.

Everything decided lives above it (blueprints, rendering, the Pod Security gate, patches); this
module only turns objects into requests (:func:`apply_requests`, :func:`delete_requests`,
:func:`ready`) and sends them through an injected :class:`KubeTransport` (an HTTP client against
the API server in a cluster). Sessions run through ``kubectl exec`` into the workspace container.
No API server can run on the development machines, so the request shapes are what the tests
check; the behaviour above is exercised through the Podman runtime.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stockade.core.errors import BackendError, PermissionDenied, ToolMissing

from ._blueprint import DEFAULT_BLUEPRINT, Blueprint
from ._pss import check_object
from ._render import RenderContext, RenderedWorkspace, render_workspace
from ._runtime import SessionSpec

__all__ = [
    "KubeRequest",
    "KubeTransport",
    "KubernetesRuntime",
    "apply_requests",
    "delete_requests",
    "exec_argv",
    "ready",
]

_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "NetworkPolicy": "networkpolicies",
    "CiliumNetworkPolicy": "ciliumnetworkpolicies",
}
FIELD_MANAGER = "stockade"


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """One API call: method, path (with query), content type and body."""

    method: str
    path: str
    content_type: str | None = None
    body: Mapping[str, Any] | None = field(default=None)


class KubeTransport(Protocol):
    """Sends a request to the API server; returns the decoded JSON body (``{}`` for 404 on a
    delete), raises :class:`~stockade.core.errors.BackendError` for anything else."""

    async def send(self, request: KubeRequest) -> Mapping[str, Any]: ...


def _collection(obj: Mapping[str, Any]) -> str:
    api_version = str(obj["apiVersion"])
    namespace = obj["metadata"]["namespace"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{_PLURALS[str(obj['kind'])]}"


def _object_path(obj: Mapping[str, Any]) -> str:
    return f"{_collection(obj)}/{obj['metadata']['name']}"


def apply_requests(rendered: RenderedWorkspace) -> list[KubeRequest]:
    """Server-side apply of every object, in order (claims before the Pod, policies last)."""
    query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
    return [
        KubeRequest("PATCH", f"{_object_path(obj)}?{query}", "application/apply-patch+yaml", obj)
        for obj in rendered.objects
    ]


def delete_requests(rendered: RenderedWorkspace, *, keep_claims: bool = True) -> list[KubeRequest]:
    """Delete the Pod, Service and policies (and the claims unless ``keep_claims``)."""
    objects = [rendered.pod, rendered.service, rendered.network_policy, rendered.cilium_policy]
    if not keep_claims:
        objects += list(rendered.claims)
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    return [KubeRequest("DELETE", _object_path(obj), "application/json", body) for obj in objects]


def ready(pod: Mapping[str, Any]) -> bool:
    """Whether a Pod read from the API is Running with condition ``Ready`` true."""
    status = pod.get("status", {})
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )


def exec_argv(
    kubectl: str, rendered: RenderedWorkspace, program: Sequence[str], *, tty: bool
) -> list[str]:
    """``kubectl exec`` into the workspace container of ``rendered``'s Pod."""
    meta = rendered.pod["metadata"]
    flags = ["-i", "-t"] if tty else ["-i"]
    return [
        kubectl, "exec", *flags, "-n", meta["namespace"], meta["name"], "-c", "workspace",
        "--", *program,
    ]  # fmt: skip


class KubernetesRuntime:
    """Provisions workspace Pods through the API and opens sessions with ``kubectl exec``."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        transport: KubeTransport,
        context: RenderContext | None = None,
        uid_of: Any = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.transport = transport
        self.context = context or RenderContext()
        self.uid_of = uid_of
        self.ready_timeout = ready_timeout

    def render(self, spec: SessionSpec) -> RenderedWorkspace:
        blueprint = (
            Blueprint.model_validate(dict(spec.blueprint)) if spec.blueprint else DEFAULT_BLUEPRINT
        )
        owner = str(spec.workspace_config.get("owner", spec.username))
        uid = spec.uid if spec.uid is not None else int(self.uid_of(spec.workspace))
        rendered = render_workspace(
            blueprint, workspace=spec.workspace, owner=owner, uid=uid, context=self.context
        )
        violations = check_object(rendered.pod, blueprint.level)
        if violations:
            raise PermissionDenied(
                f"workspace {spec.workspace!r} refused: Pod Security {blueprint.level}",
                reasons=[str(v) for v in violations],
            )
        return rendered

    async def ensure(self, spec: SessionSpec) -> RenderedWorkspace:
        """Apply the workspace's objects and wait until its Pod is Ready."""
        rendered = self.render(spec)
        for request in apply_requests(rendered):
            await self.transport.send(request)
        path = _object_path(rendered.pod)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while loop.time() < deadline:
            if ready(await self.transport.send(KubeRequest("GET", path))):
                return rendered
            await asyncio.sleep(1.0)
        raise BackendError(f"workspace Pod {rendered.pod['metadata']['name']} is not Ready")

    async def stop(self, spec: SessionSpec) -> None:
        for request in delete_requests(self.render(spec)):
            await self.transport.send(request)

    async def exec_command(self, spec: SessionSpec) -> list[str]:
        """The ``kubectl exec`` argv of a session (the gateway runs it like a local program)."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ToolMissing("kubectl", "kubectl")
        rendered = await self.ensure(spec)
        program = ["/bin/sh", "-c", spec.command] if spec.command else ["/bin/sh", "-l"]
        return exec_argv(kubectl, rendered, program, tty=spec.term_type is not None)
