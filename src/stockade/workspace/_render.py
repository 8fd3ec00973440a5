"""Rendering, pure: a resolved blueprint and a workspace become Kubernetes objects.

:func:`render_workspace` returns the Pod, its Service, one PVC per storage, a NetworkPolicy and
a CiliumNetworkPolicy, as plain dictionaries ready for ``kubectl apply``, ``podman kube play`` or
the Kubernetes API. The Pod meets the Pod Security level its blueprint states
(:attr:`Blueprint.level`): ``restricted`` by default (non-root with the workspace's own uid,
``RuntimeDefault`` seccomp, every capability dropped, no privilege escalation, a read-only root
with writable home and ``/tmp`` volumes, no service-account token); with the Podman sidecar,
``baseline`` with user namespaces (``hostUsers: false``), the sidecar the only container holding
the capabilities rootless Podman needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._blueprint import Blueprint
from ._names import (
    LABEL_USER,
    LABEL_USER_NAME,
    LABEL_WORKSPACE,
    label_value,
    object_name,
    reversible_label,
)

__all__ = [
    "PODMAN_SIDECAR_IMAGE",
    "TMP_SIZE_LIMIT",
    "RenderContext",
    "RenderedWorkspace",
    "render_workspace",
]

#: Image of the Podman sidecar (rootless Podman in a user namespace).
PODMAN_SIDECAR_IMAGE = "quay.io/podman/stable:v4.3"
#: Where the workspace container's main process lives when no init script replaces it.
IDLE_COMMAND = ("/bin/sh", "-c", "exec sleep 2147483647")
#: ``sizeLimit`` of the emptyDirs the renderer emits: a Pod's scratch space is bounded (the
#: Podman runtime makes each a filesystem of this size; Kubernetes evicts a Pod past it).
TMP_SIZE_LIMIT = "1Gi"
HOME_SIZE_LIMIT = "10Gi"
"""Of the home when the blueprint has no home storage (an emptyDir, gone with the Pod)."""
PODMAN_RUN_SIZE_LIMIT = "16Mi"
PODMAN_STORAGE_SIZE_LIMIT = "10Gi"
#: Private and link-local ranges: the cluster's services live here, the internet does not.
PRIVATE_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
)


@dataclass(frozen=True, slots=True)
class RenderContext:
    """Where the objects go and who may talk to them (the cluster side of a deployment)."""

    namespace: str = "stockade-workspaces"
    gateway_labels: Mapping[str, str] = field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "stockade",
            "app.kubernetes.io/component": "gateway",
        }
    )
    broker_labels: Mapping[str, str] = field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "stockade",
            "app.kubernetes.io/component": "broker",
        }
    )
    platform_namespace: str = "stockade"
    """Namespace of the gateway and the broker."""
    broker_port: int = 8443


@dataclass(frozen=True, slots=True)
class RenderedWorkspace:
    """Every object of one workspace, and the Pod Security level its Pod is held to."""

    level: str
    pod: dict[str, Any]
    service: dict[str, Any]
    claims: tuple[dict[str, Any], ...]
    network_policy: dict[str, Any]
    cilium_policy: dict[str, Any]

    @property
    def objects(self) -> list[dict[str, Any]]:
        """In apply order: claims, Pod, Service, then the policies."""
        return [*self.claims, self.pod, self.service, self.network_policy, self.cilium_policy]


def _home(blueprint: Blueprint) -> str:
    for storage in blueprint.storages or ():
        if storage.home:
            return storage.mount_path
    return "/home/workspace"


def _restricted_container_context(uid: int, gid: int, read_only: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": read_only,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _sidecar(home: str) -> dict[str, Any]:
    """Rootless Podman: SETUID/SETGID for its own user namespaces (both in baseline's default
    set), no privilege, RuntimeDefault seccomp; the Pod's ``hostUsers: false`` maps its root to
    an unprivileged host uid."""
    return {
        "name": "podman",
        "image": PODMAN_SIDECAR_IMAGE,
        "command": ["podman", "system", "service", "--time=0", "unix:///run/podman/podman.sock"],
        "securityContext": {
            "allowPrivilegeEscalation": True,
            "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "CHOWN", "FOWNER"]},
            "privileged": False,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "podman-run", "mountPath": "/run/podman"},
            {"name": "podman-storage", "mountPath": "/home/podman/.local/share/containers"},
        ],
        "env": [{"name": "HOME", "value": "/home/podman"}],
    }


def render_workspace(
    blueprint: Blueprint,
    *,
    workspace: str,
    owner: str,
    uid: int,
    gid: int | None = None,
    context: RenderContext | None = None,
) -> RenderedWorkspace:
    """The objects for ``workspace`` (owned by ``owner``, running as ``uid``) from a resolved
    ``blueprint``. Pure: the same arguments give the same objects."""
    if blueprint.is_template:
        raise ValueError(f"blueprint {blueprint.name!r} is a template and does not render")
    ctx = context or RenderContext()
    security = blueprint.effective_security
    uid = security.run_as_user or uid
    gid = security.run_as_group or gid or uid
    base = object_name(workspace)
    labels = {LABEL_WORKSPACE: label_value(workspace), LABEL_USER: label_value(owner)}
    exact_owner = reversible_label(owner)
    if exact_owner is not None and exact_owner != labels[LABEL_USER]:
        labels[LABEL_USER_NAME] = exact_owner
    annotations = {
        "stockade.dev/workspace-name": workspace,
        "stockade.dev/owner": owner,
        "stockade.dev/blueprint": blueprint.name,
        "stockade.dev/pod-security-level": blueprint.level,
    }

    def meta(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": ctx.namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        }

    home = _home(blueprint)
    resources = blueprint.effective_resources
    limits = {"cpu": resources.cpu, "memory": resources.memory}
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}]
    claims: list[dict[str, Any]] = []
    storages = blueprint.storages or ()
    if not any(storage.home for storage in storages):
        mounts.append({"name": "home", "mountPath": home})
        volumes.append({"name": "home", "emptyDir": {"sizeLimit": HOME_SIZE_LIMIT}})
    for storage in storages:
        claim = object_name(workspace, storage.name)
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": meta(claim),
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": storage.size}},
                },
            }
        )
        volume = f"storage-{storage.name}"[:63]
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": volume, "mountPath": storage.mount_path})
    env = [{"name": "HOME", "value": home}]
    env += [{"name": key, "value": value} for key, value in sorted(blueprint.env.items())]
    container_context = _restricted_container_context(uid, gid, security.read_only_root_filesystem)
    main: dict[str, Any] = {
        "name": "workspace",
        "image": blueprint.effective_image,
        "command": list(IDLE_COMMAND),
        "workingDir": home,
        "env": env,
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "securityContext": container_context,
        "volumeMounts": mounts,
    }
    ports = [
        {"name": f"app-{index}", "containerPort": app.port, "protocol": "TCP"}
        for index, app in enumerate(blueprint.apps or ())
        if app.port is not None
    ]
    if ports:
        main["ports"] = ports
    containers = [main]
    init_containers: list[dict[str, Any]] = []
    if blueprint.init_scripts:
        script = "set -e\n" + "\n".join(blueprint.init_scripts) + "\n"
        init_containers.append(
            {
                "name": "init",
                "image": blueprint.effective_image,
                "command": ["/bin/sh", "-c", script],
                "workingDir": home,
                "env": env,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "securityContext": dict(container_context),
                "volumeMounts": mounts,
            }
        )
    pod_context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "restartPolicy": "Always",
        "securityContext": pod_context,
        "containers": containers,
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if blueprint.podman:
        spec["hostUsers"] = False
        containers.append(_sidecar(home))
        volumes += [
            {"name": "podman-run", "emptyDir": {"sizeLimit": PODMAN_RUN_SIZE_LIMIT}},
            {"name": "podman-storage", "emptyDir": {"sizeLimit": PODMAN_STORAGE_SIZE_LIMIT}},
        ]
        mounts.append({"name": "podman-run", "mountPath": "/run/podman", "readOnly": True})
        env.append({"name": "CONTAINER_HOST", "value": "unix:///run/podman/podman.sock"})
        env.append({"name": "DOCKER_HOST", "value": "unix:///run/podman/podman.sock"})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta(base), "spec": spec}
    service_ports = [
        {"name": port["name"], "port": port["containerPort"], "targetPort": port["containerPort"]}
        for port in ports
    ]
    service_spec: dict[str, Any] = {"selector": dict(labels), "clusterIP": "None"}
    if service_ports:
        service_spec["ports"] = service_ports
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(base), "spec": service_spec}
    return RenderedWorkspace(
        level=blueprint.level,
        pod=pod,
        service=service,
        claims=tuple(claims),
        network_policy=_network_policy(blueprint, meta(base), labels, ctx),
        cilium_policy=_cilium_policy(blueprint, meta(base), labels, ctx),
    )


def _platform_peer(ctx: RenderContext, selector: Mapping[str, str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": ctx.platform_namespace}
        },
        "podSelector": {"matchLabels": dict(selector)},
    }


def _split_allow(blueprint: Blueprint) -> tuple[list[str], list[str]]:
    cidrs = [item for item in blueprint.effective_network.allow if "/" in item]
    names = [item for item in blueprint.effective_network.allow if "/" not in item]
    return cidrs, names


def _network_policy(
    blueprint: Blueprint, metadata: dict[str, Any], labels: Mapping[str, str], ctx: RenderContext
) -> dict[str, Any]:
    """Ingress from the gateway only; egress to DNS, the broker and what the class allows (the
    internet outside the private ranges for ``workspace``, the CIDRs of ``custom``)."""
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    broker = {
        "to": [_platform_peer(ctx, ctx.broker_labels)],
        "ports": [{"protocol": "TCP", "port": ctx.broker_port}],
    }
    egress: list[dict[str, Any]] = [dns, broker]
    network = blueprint.effective_network
    if network.class_ == "workspace":
        egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}]})
    elif network.class_ == "custom":
        cidrs, _ = _split_allow(blueprint)
        if cidrs:
            egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [_platform_peer(ctx, ctx.gateway_labels)]}],
            "egress": egress,
        },
    }


def _cilium_policy(
    blueprint: Blueprint, metadata: dict[str, Any], labels: Mapping[str, str], ctx: RenderContext
) -> dict[str, Any]:
    """The same intent for Cilium, with what only Cilium can say: egress by FQDN (``toFQDNs``,
    which needs the DNS rule so Cilium sees the lookups) and ``world`` for the internet; every
    other cluster endpoint (services included) is denied by omission."""

    def platform(selector: Mapping[str, str]) -> dict[str, Any]:
        return {
            "matchLabels": {
                **dict(selector),
                "k8s:io.kubernetes.pod.namespace": ctx.platform_namespace,
            }
        }

    egress: list[dict[str, Any]] = [
        {
            "toEndpoints": [
                {
                    "matchLabels": {
                        "k8s:io.kubernetes.pod.namespace": "kube-system",
                        "k8s-app": "kube-dns",
                    }
                }
            ],
            "toPorts": [
                {
                    "ports": [{"port": "53", "protocol": "ANY"}],
                    "rules": {"dns": [{"matchPattern": "*"}]},
                }
            ],
        },
        {
            "toEndpoints": [platform(ctx.broker_labels)],
            "toPorts": [{"ports": [{"port": str(ctx.broker_port), "protocol": "TCP"}]}],
        },
    ]
    network = blueprint.effective_network
    if network.class_ == "workspace":
        egress.append({"toEntities": ["world"]})
    elif network.class_ == "custom":
        cidrs, names = _split_allow(blueprint)
        if names:
            egress.append(
                {
                    "toFQDNs": [
                        {"matchPattern": name} if "*" in name else {"matchName": name}
                        for name in names
                    ]
                }
            )
        if cidrs:
            egress.append({"toCIDR": cidrs})
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata,
        "spec": {
            "endpointSelector": {"matchLabels": dict(labels)},
            "ingress": [{"fromEndpoints": [platform(ctx.gateway_labels)]}],
            "egress": egress,
        },
    }
