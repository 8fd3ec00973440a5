"""A Pod Security Standards checker (levels ``baseline`` and ``restricted``, as of v1.35).

Each check carries the id upstream's ``pod-security-admission`` gives it (``privileged``,
``hostNamespaces``, ``capabilities_restricted``, ...) and follows the standard's text: what each
field may hold, which checks relax for Pods in a user namespace (``hostUsers: false``), which
skip Windows Pods, and which restricted checks replace a baseline one (``restrictedVolumes``
replaces ``hostPathVolumes``; ``capabilities_restricted``, ``seccompProfile_restricted`` and
``procMount_restricted`` replace their baseline counterparts). It reads plain dictionaries (a
Pod, or a workload with a Pod template) and never fails open: a malformed object is reported as
the check ``object`` rather than passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CHECKS", "Level", "Violation", "check_object", "pod_spec_of"]

Level = Literal["baseline", "restricted"]
_Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed check: upstream's ``check`` id, the object (``Pod/name``) and what is wrong."""

    check: str
    object: str
    detail: str

    def __str__(self) -> str:
        return f"{self.object}: {self.check}: {self.detail}"


def _map(value: Any) -> _Obj:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _containers(spec: _Obj) -> Iterator[_Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in _list(spec.get(key)):
            yield _map(container)


def _sc(container: _Obj) -> _Obj:
    return _map(container.get("securityContext"))


def _pod_sc(spec: _Obj) -> _Obj:
    return _map(spec.get("securityContext"))


def _name(container: _Obj) -> str:
    return str(container.get("name", "?"))


def _windows(spec: _Obj) -> bool:
    return _map(spec.get("os")).get("name") == "windows"


def _user_namespace(spec: _Obj) -> bool:
    return spec.get("hostUsers") is False


def _names(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


Check = Callable[[_Obj, _Obj], str | None]
"""(metadata, pod spec) -> ``None`` when allowed, else the detail."""


def _host_namespaces(meta: _Obj, spec: _Obj) -> str | None:
    bad = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True]
    return ", ".join(bad) or None


def _privileged(meta: _Obj, spec: _Obj) -> str | None:
    bad = [_name(c) for c in _containers(spec) if _sc(c).get("privileged") is True]
    return f"containers {_names(bad)} must not set securityContext.privileged=true" if bad else None


_BASELINE_CAPS = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip


def _capabilities_baseline(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    for c in _containers(spec):
        added = _list(_map(_sc(c).get("capabilities")).get("add"))
        extra = sorted({str(cap) for cap in added} - _BASELINE_CAPS)
        if extra:
            bad.append(f"{_name(c)} adds {_names(extra)}")
    return "; ".join(bad) or None


def _host_path_volumes(meta: _Obj, spec: _Obj) -> str | None:
    bad = [str(_map(v).get("name")) for v in _list(spec.get("volumes")) if "hostPath" in _map(v)]
    return f"hostPath volumes {_names(bad)}" if bad else None


def _host_ports(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    for c in _containers(spec):
        ports = [str(_map(p).get("hostPort")) for p in _list(c.get("ports"))]
        ports = [p for p in ports if p not in {"None", "0"}]
        if ports:
            bad.append(f"{_name(c)} uses hostPort {', '.join(ports)}")
    return "; ".join(bad) or None


_APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _app_armor(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    profile = _pod_sc(spec).get("appArmorProfile")
    if profile is not None and _map(profile).get("type") not in _APPARMOR_TYPES:
        bad.append(f"pod sets type {_map(profile).get('type')}")
    for c in _containers(spec):
        profile = _sc(c).get("appArmorProfile")
        if profile is not None and _map(profile).get("type") not in _APPARMOR_TYPES:
            bad.append(f"{_name(c)} sets type {_map(profile).get('type')}")
    for key, value in _map(meta.get("annotations")).items():
        if str(key).startswith(_APPARMOR_ANNOTATION):
            text = str(value)
            if text and text != "runtime/default" and not text.startswith("localhost/"):
                bad.append(f"annotation {key}={text!r}")
    return "; ".join(bad) or None


_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)


def _selinux_bad(options: Any) -> str | None:
    if options is None:
        return None
    opts = _map(options)
    problems = []
    if str(opts.get("type", "")) not in _SELINUX_TYPES:
        problems.append(f"type {opts.get('type')!r}")
    if opts.get("user"):
        problems.append("user may not be set")
    if opts.get("role"):
        problems.append("role may not be set")
    return ", ".join(problems) or None


def _selinux(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    found = _selinux_bad(_pod_sc(spec).get("seLinuxOptions"))
    if found:
        bad.append(f"pod: {found}")
    for c in _containers(spec):
        found = _selinux_bad(_sc(c).get("seLinuxOptions"))
        if found:
            bad.append(f"{_name(c)}: {found}")
    return "; ".join(bad) or None


def _proc_mount_any(spec: _Obj) -> str | None:
    bad = [
        f"{_name(c)} sets {_sc(c).get('procMount')}"
        for c in _containers(spec)
        if "procMount" in _sc(c)
        and _sc(c).get("procMount") is not None
        and _sc(c).get("procMount") != "Default"
    ]
    return "; ".join(bad) or None


def _proc_mount(meta: _Obj, spec: _Obj) -> str | None:
    return None if _user_namespace(spec) else _proc_mount_any(spec)


def _proc_mount_restricted(meta: _Obj, spec: _Obj) -> str | None:
    return _proc_mount_any(spec)


_SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"


def _seccomp_explicit(spec: _Obj) -> tuple[list[str], bool]:
    """Setters with a forbidden type, and whether the pod level sets an allowed one."""
    bad: list[str] = []
    pod_set = False
    profile = _pod_sc(spec).get("seccompProfile")
    if profile is not None:
        if _map(profile).get("type") in _SECCOMP_TYPES:
            pod_set = True
        else:
            bad.append(f"pod sets type {_map(profile).get('type')}")
    for c in _containers(spec):
        profile = _sc(c).get("seccompProfile")
        if profile is not None and _map(profile).get("type") not in _SECCOMP_TYPES:
            bad.append(f"{_name(c)} sets type {_map(profile).get('type')}")
    return bad, pod_set


def _seccomp_baseline(meta: _Obj, spec: _Obj) -> str | None:
    bad, _ = _seccomp_explicit(spec)
    return "; ".join(bad) or None


def _seccomp_restricted(meta: _Obj, spec: _Obj) -> str | None:
    if _windows(spec):
        return None
    bad, pod_set = _seccomp_explicit(spec)
    if bad:
        return "; ".join(bad)
    if not pod_set:
        unset = [_name(c) for c in _containers(spec) if _sc(c).get("seccompProfile") is None]
        if unset:
            return (
                f"pod or containers {_names(unset)} must set securityContext.seccompProfile.type "
                'to "RuntimeDefault" or "Localhost"'
            )
    return None


_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
    }
)  # fmt: skip


def _sysctls(meta: _Obj, spec: _Obj) -> str | None:
    bad = [
        str(_map(s).get("name"))
        for s in _list(_pod_sc(spec).get("sysctls"))
        if _map(s).get("name") not in _SAFE_SYSCTLS
    ]
    return ", ".join(bad) or None


def _windows_host_process(meta: _Obj, spec: _Obj) -> str | None:
    bad = []
    if _map(_pod_sc(spec).get("windowsOptions")).get("hostProcess") is True:
        bad.append("pod")
    bad += [
        _name(c)
        for c in _containers(spec)
        if _map(_sc(c).get("windowsOptions")).get("hostProcess") is True
    ]
    return f"{', '.join(bad)} must not set hostProcess=true" if bad else None


_HANDLERS = ("httpGet", "tcpSocket")


def _host_probes(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    for c in _containers(spec):
        handlers = [_map(c.get(p)) for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        lifecycle = _map(c.get("lifecycle"))
        handlers += [_map(lifecycle.get("postStart")), _map(lifecycle.get("preStop"))]
        hosts = [
            str(_map(h.get(kind)).get("host"))
            for h in handlers
            for kind in _HANDLERS
            if _map(h.get(kind)).get("host")
        ]
        if hosts:
            bad.append(f"{_name(c)} uses host {', '.join(hosts)}")
    return "; ".join(bad) or None


def _allow_privilege_escalation(meta: _Obj, spec: _Obj) -> str | None:
    if _windows(spec):
        return None
    bad = [
        _name(c) for c in _containers(spec) if _sc(c).get("allowPrivilegeEscalation") is not False
    ]
    return (
        f"containers {_names(bad)} must set securityContext.allowPrivilegeEscalation=false"
        if bad
        else None
    )


_ALLOWED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
     "persistentVolumeClaim", "projected", "secret"}
)  # fmt: skip


def _restricted_volumes(meta: _Obj, spec: _Obj) -> str | None:
    bad: list[str] = []
    for volume in _list(spec.get("volumes")):
        fields = set(_map(volume)) - {"name"}
        # No source at all is defaulted to emptyDir by the API server (SetDefaults_Volume).
        if fields and not fields & _ALLOWED_VOLUMES:
            kinds = ", ".join(sorted(fields)) or "unknown"
            bad.append(f"{_map(volume).get('name')} ({kinds})")
    return f"volumes {', '.join(bad)} use restricted volume types" if bad else None


def _run_as_non_root(meta: _Obj, spec: _Obj) -> str | None:
    if _user_namespace(spec):
        return None
    pod_value = _pod_sc(spec).get("runAsNonRoot")
    if pod_value is False:
        return "pod must not set securityContext.runAsNonRoot=false"
    explicit = [_name(c) for c in _containers(spec) if _sc(c).get("runAsNonRoot") is False]
    if explicit:
        return f"containers {_names(explicit)} must not set securityContext.runAsNonRoot=false"
    if pod_value is not True:
        unset = [_name(c) for c in _containers(spec) if _sc(c).get("runAsNonRoot") is None]
        if unset:
            return f"pod or containers {_names(unset)} must set securityContext.runAsNonRoot=true"
    return None


def _is_zero(value: Any) -> bool:
    return value == 0 and value is not False


def _run_as_user(meta: _Obj, spec: _Obj) -> str | None:
    if _user_namespace(spec):
        return None
    bad = ["pod"] if _is_zero(_pod_sc(spec).get("runAsUser")) else []
    bad += [_name(c) for c in _containers(spec) if _is_zero(_sc(c).get("runAsUser"))]
    return f"{', '.join(bad)} must not set runAsUser=0" if bad else None


def _capabilities_restricted(meta: _Obj, spec: _Obj) -> str | None:
    if _windows(spec):
        return None
    problems: list[str] = []
    for c in _containers(spec):
        caps = _map(_sc(c).get("capabilities"))
        if "ALL" not in _list(caps.get("drop")):
            problems.append(f'{_name(c)} must set securityContext.capabilities.drop=["ALL"]')
        extra = sorted({str(cap) for cap in _list(caps.get("add"))} - {"NET_BIND_SERVICE"})
        if extra:
            problems.append(f"{_name(c)} must not add {_names(extra)}")
    return "; ".join(problems) or None


#: Every check: id -> (level, function, the baseline check it replaces at restricted).
CHECKS: dict[str, tuple[Level, Check, str | None]] = {
    "hostNamespaces": ("baseline", _host_namespaces, None),
    "privileged": ("baseline", _privileged, None),
    "capabilities_baseline": ("baseline", _capabilities_baseline, None),
    "hostPathVolumes": ("baseline", _host_path_volumes, None),
    "hostPorts": ("baseline", _host_ports, None),
    "appArmorProfile": ("baseline", _app_armor, None),
    "seLinuxOptions": ("baseline", _selinux, None),
    "procMount": ("baseline", _proc_mount, None),
    "seccompProfile_baseline": ("baseline", _seccomp_baseline, None),
    "sysctls": ("baseline", _sysctls, None),
    "windowsHostProcess": ("baseline", _windows_host_process, None),
    "hostProbesAndHostLifecycle": ("baseline", _host_probes, None),
    "allowPrivilegeEscalation": ("restricted", _allow_privilege_escalation, None),
    "restrictedVolumes": ("restricted", _restricted_volumes, "hostPathVolumes"),
    "runAsNonRoot": ("restricted", _run_as_non_root, None),
    "runAsUser": ("restricted", _run_as_user, None),
    "seccompProfile_restricted": ("restricted", _seccomp_restricted, "seccompProfile_baseline"),
    "capabilities_restricted": ("restricted", _capabilities_restricted, "capabilities_baseline"),
    "procMount_restricted": ("restricted", _proc_mount_restricted, "procMount"),
}

_POD_TEMPLATE_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController",
     "PodTemplate"}
)  # fmt: skip


def pod_spec_of(obj: _Obj) -> tuple[_Obj, _Obj] | None:
    """(metadata, spec) of the Pod an object describes, or ``None`` when it holds no Pod."""
    kind = obj.get("kind")
    if kind == "Pod":
        return _map(obj.get("metadata")), _map(obj.get("spec"))
    if kind == "CronJob":
        template = _map(
            _map(_map(_map(obj.get("spec")).get("jobTemplate")).get("spec")).get("template")
        )
        return _map(template.get("metadata")), _map(template.get("spec"))
    if kind in _POD_TEMPLATE_KINDS:
        holder = obj if kind == "PodTemplate" else _map(obj.get("spec"))
        template = _map(holder.get("template"))
        return _map(template.get("metadata")), _map(template.get("spec"))
    return None


def check_object(obj: _Obj, level: Level) -> list[Violation]:
    """Every check of ``level`` that ``obj`` fails (empty: it meets the level). Objects that
    hold no Pod pass; a Pod with no containers list is reported as malformed."""
    found = pod_spec_of(obj)
    if found is None:
        return []
    meta, spec = found
    label = f"{obj.get('kind')}/{_map(obj.get('metadata')).get('name', '?')}"
    if not isinstance(spec.get("containers"), list):
        return [Violation("object", label, "spec.containers is missing or not a list")]
    active = {
        cid: entry
        for cid, entry in CHECKS.items()
        if level == "restricted" or entry[0] == "baseline"
    }
    if level == "restricted":
        for entry in CHECKS.values():
            if entry[2] is not None:
                active.pop(entry[2], None)
    violations = []
    for cid, (_, check, _) in active.items():
        detail = check(meta, spec)
        if detail is not None:
            violations.append(Violation(cid, label, detail))
    return violations
