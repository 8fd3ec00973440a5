"""Workspaces: blueprints, their rendering to least-privilege Pods, the Pod Security checker,
validation against the real schemas, and the runtimes that run them.

- :class:`Blueprint` (k8shell's fields), :func:`resolve` (template inheritance),
  :func:`parse_repository_file` (what a repository's ``.stockade.yaml`` may ask for);
- :func:`render_workspace`: Pod, Service, PVCs, NetworkPolicy, CiliumNetworkPolicy (pure);
- :func:`check_object`: Pod Security Standards ``baseline``/``restricted`` with upstream's ids;
- :func:`apply_patches`: ``patch:<json-pointer>`` obligations, refused when they weaken the Pod;
- :func:`validate_object`: Kubernetes 1.35 schemas (strict) and CRD JSON Schemas;
- runtimes behind :class:`WorkspaceBackend`: :class:`PodmanRuntime`, :class:`KubernetesRuntime`
  (a thin adapter), :class:`SandboxBackend` (bubblewrap);
- :class:`CredentialSockets`: the broker's per-session socket, as both host runtimes get it;
- :class:`UidAllocator` (a stable uid per workspace) and :func:`check_home` (homes never change
  hands silently).
"""

from __future__ import annotations

from ._blueprint import (
    DEFAULT_BLUEPRINT,
    App,
    Blueprint,
    NetworkSpec,
    RepositoryFile,
    Resources,
    Storage,
    WorkspaceSecurity,
    load_blueprint,
    parse_repository_file,
    resolve,
)
from ._fdio import CHUNK, FdReader, FdWriter
from ._home import check_home, claim_home, claim_homes, guard_homes, workspace_homes
from ._kubernetes import (
    KubeRequest,
    KubernetesRuntime,
    KubeTransport,
    apply_requests,
    delete_requests,
    exec_argv,
    ready,
)
from ._names import (
    LABEL_SESSION,
    LABEL_USER,
    LABEL_USER_NAME,
    LABEL_WORKSPACE,
    label_value,
    object_name,
    reversible_label,
)
from ._nsenter import connect_in_netns
from ._patch import PATCH_PREFIX, apply_patches
from ._podman import (
    PodmanRuntime,
    PodmanWorkload,
    build_agent,
    build_busybox_image,
    copy_with_libraries,
    translate_for_podman,
)
from ._pss import CHECKS, Level, Violation, check_object
from ._registry import BlueprintRegistry
from ._render import RenderContext, RenderedWorkspace, render_workspace
from ._runtime import (
    ExitStatus,
    SessionSpec,
    Workload,
    WorkspaceBackend,
    shared_session,
    without_credentials,
)
from ._sandbox import SFTP_SERVER, HomeHook, LocalWorkload, SandboxBackend, sandbox_netns
from ._select import select_runtime
from ._sockets import Closable, CredentialSockets, SessionSocketOpener, close_quietly
from ._uids import UidAllocator
from ._validate import KUBERNETES_VERSION, validate_object

__all__ = [
    "CHECKS",
    "CHUNK",
    "DEFAULT_BLUEPRINT",
    "KUBERNETES_VERSION",
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_USER_NAME",
    "LABEL_WORKSPACE",
    "PATCH_PREFIX",
    "SFTP_SERVER",
    "App",
    "Blueprint",
    "BlueprintRegistry",
    "Closable",
    "CredentialSockets",
    "ExitStatus",
    "FdReader",
    "FdWriter",
    "HomeHook",
    "KubeRequest",
    "KubeTransport",
    "KubernetesRuntime",
    "Level",
    "LocalWorkload",
    "NetworkSpec",
    "PodmanRuntime",
    "PodmanWorkload",
    "RenderContext",
    "RenderedWorkspace",
    "RepositoryFile",
    "Resources",
    "SandboxBackend",
    "SessionSocketOpener",
    "SessionSpec",
    "Storage",
    "UidAllocator",
    "Violation",
    "Workload",
    "WorkspaceBackend",
    "WorkspaceSecurity",
    "apply_patches",
    "apply_requests",
    "build_agent",
    "build_busybox_image",
    "check_home",
    "check_object",
    "claim_home",
    "claim_homes",
    "close_quietly",
    "connect_in_netns",
    "copy_with_libraries",
    "delete_requests",
    "exec_argv",
    "guard_homes",
    "label_value",
    "load_blueprint",
    "object_name",
    "parse_repository_file",
    "ready",
    "render_workspace",
    "resolve",
    "reversible_label",
    "sandbox_netns",
    "select_runtime",
    "shared_session",
    "translate_for_podman",
    "validate_object",
    "without_credentials",
    "workspace_homes",
]
