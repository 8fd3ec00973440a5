"""Tetragon's JSON export, one ``GetEventsResponse`` a line, as strict, allocation-light models.

:func:`parse_line` turns one line into a :class:`TraceEvent`; :func:`parse_event` does the same
for an already decoded object. The event types Worktrace reads are ``process_exec``,
``process_exit``, ``process_kprobe``, ``process_tracepoint``, ``process_uprobe`` and
``process_lsm``; any other (``process_loader``, ``process_throttle``, the enterprise-only
``process_connect``/``process_close``/``process_listen``, ...) raises :class:`UnknownEvent`, and
an event of a known type whose fields have the wrong JSON types, or an argument of a kind the
Tetragon API does not define, raises :class:`EventShapeError`. Both are counted and skipped by the
callers, never fatal.

The models are hand-written ``__slots__`` classes filled straight from :func:`orjson.loads`'s
dicts, with an exact type check for every field read (pydantic costs about 10x more per event on
this path; see the benchmark). Unknown fields inside a known event are ignored, as protojson
readers do, so newer Tetragon releases keep working.

Field names follow Tetragon's protobuf (``api/v1/tetragon/tetragon.proto``): protojson writes
64-bit integers (``size_arg``, ``orig_size``, ...) as strings, bytes as base64, and omits fields
holding their zero value.
"""

from __future__ import annotations

import binascii
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "EVENT_TYPES",
    "Capability",
    "Cred",
    "EventShapeError",
    "FileArg",
    "KernelModule",
    "KprobeArg",
    "Pod",
    "Process",
    "Sock",
    "TraceEvent",
    "TruncatedBytes",
    "UnknownEvent",
    "UserNamespace",
    "parse_event",
    "parse_line",
]

#: The ``GetEventsResponse`` event fields Worktrace understands.
EVENT_TYPES = (
    "process_exec",
    "process_exit",
    "process_kprobe",
    "process_tracepoint",
    "process_uprobe",
    "process_lsm",
)
_EVENT_TYPES = frozenset(EVENT_TYPES)
#: Keys of a ``GetEventsResponse`` that are not the event itself.
_ENVELOPE = frozenset({"node_name", "time", "aggregation_info", "cluster_name", "node_labels"})
#: Largest line accepted; Tetragon's own events are a few KiB.
MAX_LINE_BYTES = 1 << 20


class EventShapeError(ValueError):
    """An event of a known type whose shape is wrong; ``where`` names the field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


class UnknownEvent(ValueError):
    """A ``GetEventsResponse`` of a type Worktrace does not read (``kind`` names it)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"event type {kind!r} is not read by worktrace")
        self.kind = kind


def _bad(where: str, value: Any, want: str) -> EventShapeError:
    return EventShapeError(where, f"expected {want}, got {type(value).__name__}")


def _s(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if type(value) is not str:
        raise _bad(f"{where}.{key}", value, "a string")
    return value


def _u(obj: dict[str, Any], key: str, where: str) -> int | None:
    """A wrapped integer (``UInt32Value``): absent is ``None``; protojson may quote 64-bit ones."""
    value = obj.get(key)
    if value is None:
        return None
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is str:
        try:
            return int(value)
        except ValueError:
            pass
    raise _bad(f"{where}.{key}", value, "an integer")


def _int_value(value: Any, where: str) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is str:
        try:
            return int(value)
        except ValueError:
            pass
    raise _bad(where, value, "an integer")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise _bad(where, value, "a list of strings")
    for item in value:
        if type(item) is not str:
            raise _bad(where, item, "a string")
    return tuple(value)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _bad(where, value, "an object")
    return value


class Pod:
    """The Kubernetes Pod a process runs in (``Process.pod``)."""

    __slots__ = ("container_id", "container_name", "image", "labels", "name", "namespace")

    def __init__(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        container_id: str = "",
        container_name: str = "",
        image: str = "",
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.container_id = container_id
        self.container_name = container_name
        self.image = image

    @classmethod
    def parse(cls, raw: Any, where: str) -> Pod:
        obj = _obj(raw, where)
        labels = obj.get("pod_labels")
        if labels is None:
            labels = {}
        elif type(labels) is not dict:
            raise _bad(f"{where}.pod_labels", labels, "an object")
        else:
            for value in labels.values():
                if type(value) is not str:
                    raise _bad(f"{where}.pod_labels", value, "string values")
        container = obj.get("container")
        cid = cname = image = ""
        if container is not None:
            container = _obj(container, f"{where}.container")
            cid = _s(container, "id", f"{where}.container")
            cname = _s(container, "name", f"{where}.container")
            img = container.get("image")
            if img is not None:
                image = _s(_obj(img, f"{where}.container.image"), "name", f"{where}.image")
        return cls(_s(obj, "namespace", where), _s(obj, "name", where), labels, cid, cname, image)


class Process:
    """A process as Tetragon describes it; ``exec_id`` is unique across nodes and time."""

    __slots__ = (
        "arguments",
        "auid",
        "binary",
        "cap_effective",
        "cwd",
        "exec_id",
        "flags",
        "parent_exec_id",
        "pid",
        "pod",
        "start_time",
        "uid",
    )

    def __init__(
        self,
        exec_id: str,
        binary: str,
        *,
        pid: int | None = None,
        uid: int | None = None,
        arguments: str = "",
        cwd: str = "",
        flags: str = "",
        start_time: str = "",
        auid: int | None = None,
        pod: Pod | None = None,
        parent_exec_id: str = "",
        cap_effective: tuple[str, ...] | None = None,
    ) -> None:
        self.exec_id = exec_id
        self.binary = binary
        self.pid = pid
        self.uid = uid
        self.arguments = arguments
        self.cwd = cwd
        self.flags = flags
        self.start_time = start_time
        self.auid = auid
        self.pod = pod
        self.parent_exec_id = parent_exec_id
        self.cap_effective = cap_effective

    @property
    def basename(self) -> str:
        return self.binary.rpartition("/")[2]

    @classmethod
    def parse(cls, raw: Any, where: str) -> Process:
        obj = _obj(raw, where)
        pod = obj.get("pod")
        caps = obj.get("cap")
        effective = None
        if caps is not None:
            caps = _obj(caps, f"{where}.cap")
            for key in ("permitted", "inheritable"):
                if key in caps:
                    _strings(caps[key], f"{where}.cap.{key}")
            if "effective" in caps:
                effective = _strings(caps["effective"], f"{where}.cap.effective")
        return cls(
            _s(obj, "exec_id", where),
            _s(obj, "binary", where),
            pid=_u(obj, "pid", where),
            uid=_u(obj, "uid", where),
            arguments=_s(obj, "arguments", where),
            cwd=_s(obj, "cwd", where),
            flags=_s(obj, "flags", where),
            start_time=_s(obj, "start_time", where),
            auid=_u(obj, "auid", where),
            pod=None if pod is None else Pod.parse(pod, f"{where}.pod"),
            parent_exec_id=_s(obj, "parent_exec_id", where),
            cap_effective=effective,
        )


class FileArg:
    """``file_arg``, ``path_arg`` and ``linux_binprm_arg``: a path, absolute as read here."""

    __slots__ = ("flags", "mount", "path", "permission")

    def __init__(self, path: str, mount: str = "", flags: str = "", permission: str = "") -> None:
        self.path = path
        self.mount = mount
        self.flags = flags
        self.permission = permission


class Sock:
    """``sock_arg`` (and ``skb_arg``, ``sockaddr_arg``): the addresses of a socket."""

    __slots__ = ("daddr", "dport", "family", "protocol", "saddr", "sport", "state", "type")

    def __init__(
        self,
        *,
        family: str = "",
        type: str = "",
        protocol: str = "",
        saddr: str = "",
        daddr: str = "",
        sport: int = 0,
        dport: int = 0,
        state: str = "",
    ) -> None:
        self.family = family
        self.type = type
        self.protocol = protocol
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport
        self.state = state


class TruncatedBytes:
    """``truncated_bytes_arg``: the first bytes of a buffer and its original size."""

    __slots__ = ("data", "orig_size")

    def __init__(self, data: bytes, orig_size: int) -> None:
        self.data = data
        self.orig_size = orig_size


class Cred:
    """``cred_arg``: the capability sets of a ``struct cred``."""

    __slots__ = ("effective", "inheritable", "permitted")

    def __init__(
        self, permitted: tuple[str, ...], effective: tuple[str, ...], inheritable: tuple[str, ...]
    ) -> None:
        self.permitted = permitted
        self.effective = effective
        self.inheritable = inheritable


class Capability:
    """``capability_arg``: one capability by number and name."""

    __slots__ = ("name", "value")

    def __init__(self, value: int | None, name: str) -> None:
        self.value = value
        self.name = name


class UserNamespace:
    """``user_namespace_arg`` / ``user_ns_arg``: a user namespace's level, owner and inode."""

    __slots__ = ("gid", "inum", "is_host", "level", "uid")

    def __init__(
        self, level: int | None, uid: int | None, gid: int | None, inum: int | None, is_host: bool
    ) -> None:
        self.level = level
        self.uid = uid
        self.gid = gid
        self.inum = inum
        self.is_host = is_host


class KernelModule:
    """``module_arg``: a kernel module's name, signature check and taint flags."""

    __slots__ = ("name", "signature_ok", "tainted")

    def __init__(self, name: str, signature_ok: bool | None, tainted: tuple[str, ...]) -> None:
        self.name = name
        self.signature_ok = signature_ok
        self.tainted = tainted


class KprobeArg:
    """One ``KprobeArgument``: ``kind`` is its protobuf field (``file_arg``, ``int_arg``, ...),
    ``value`` the typed value (an int, str, bytes or one of the argument classes above),
    ``label`` the policy's label for it."""

    __slots__ = ("kind", "label", "value")

    def __init__(self, kind: str, value: Any, label: str = "") -> None:
        self.kind = kind
        self.value = value
        self.label = label

    def __repr__(self) -> str:
        return f"KprobeArg({self.kind}={self.value!r})"


def _b64(value: Any, where: str) -> bytes:
    if type(value) is not str:
        raise _bad(where, value, "base64 text")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error as exc:
        raise EventShapeError(where, f"not base64 ({exc})") from None


def _path(value: Any, where: str) -> FileArg:
    obj = _obj(value, where)
    path = _s(obj, "path", where)
    if path and path[0] != "/":  # Tetragon before 1.0 dropped the leading slash
        path = "/" + path
    return FileArg(
        path,
        _s(obj, "mount", where),
        _s(obj, "flags", where),
        _s(obj, "permission", where),
    )


def _sock(value: Any, where: str) -> Sock:
    obj = _obj(value, where)
    return Sock(
        family=_s(obj, "family", where),
        type=_s(obj, "type", where),
        protocol=_s(obj, "protocol", where) if type(obj.get("protocol", "")) is str else "",
        saddr=_s(obj, "saddr", where) if "saddr" in obj else _s(obj, "addr", where),
        daddr=_s(obj, "daddr", where),
        sport=_u(obj, "sport", where) or 0,
        dport=_u(obj, "dport", where) or _u(obj, "port", where) or 0,
        state=_s(obj, "state", where),
    )


def _caps(value: Any, where: str) -> Cred:
    obj = _obj(value, where)
    return Cred(
        _strings(obj.get("permitted", []), f"{where}.permitted"),
        _strings(obj.get("effective", []), f"{where}.effective"),
        _strings(obj.get("inheritable", []), f"{where}.inheritable"),
    )


def _userns(value: Any, where: str) -> UserNamespace:
    obj = _obj(value, where)
    ns = obj.get("ns")
    inum = None
    is_host = False
    if ns is not None:
        ns = _obj(ns, f"{where}.ns")
        inum = _u(ns, "inum", f"{where}.ns")
        is_host = ns.get("is_host", False)
        if type(is_host) is not bool:
            raise _bad(f"{where}.ns.is_host", is_host, "a boolean")
    uid = _u(obj, "uid", where) if "uid" in obj else _u(obj, "owner", where)
    gid = _u(obj, "gid", where) if "gid" in obj else _u(obj, "group", where)
    return UserNamespace(_u(obj, "level", where), uid, gid, inum, is_host)


def _module(value: Any, where: str) -> KernelModule:
    obj = _obj(value, where)
    signed = obj.get("signature_ok")
    if signed is not None and type(signed) is not bool:
        raise _bad(f"{where}.signature_ok", signed, "a boolean")
    return KernelModule(
        _s(obj, "name", where), signed, _strings(obj.get("tainted", []), f"{where}.tainted")
    )


def _capability(value: Any, where: str) -> Capability:
    obj = _obj(value, where)
    return Capability(_u(obj, "value", where), _s(obj, "name", where))


def _truncated(value: Any, where: str) -> TruncatedBytes:
    obj = _obj(value, where)
    data = obj.get("bytes_arg")
    return TruncatedBytes(
        b"" if data is None else _b64(data, f"{where}.bytes_arg"),
        _int_value(obj.get("orig_size", 0), f"{where}.orig_size"),
    )


def _string(value: Any, where: str) -> str:
    if type(value) is not str:
        raise _bad(where, value, "a string")
    return value


#: Every ``KprobeArgument`` kind of Tetragon's API and how its value is read. Kinds Worktrace
#: matches on get typed values; the rest are checked for their JSON type and kept as they are.
_ARG_PARSERS: dict[str, Any] = {
    "string_arg": _string,
    "int_arg": _int_value,
    "long_arg": _int_value,
    "uint_arg": _int_value,
    "size_arg": _int_value,
    "bytes_arg": _b64,
    "truncated_bytes_arg": _truncated,
    "file_arg": _path,
    "path_arg": _path,
    "linux_binprm_arg": _path,
    "sock_arg": _sock,
    "skb_arg": _sock,
    "sockaddr_arg": _sock,
    "cred_arg": _caps,
    "capability_arg": _capability,
    "user_namespace_arg": _userns,
    "user_ns_arg": _userns,
    "module_arg": _module,
    "kernel_cap_t_arg": _string,
    "cap_inheritable_arg": _string,
    "cap_permitted_arg": _string,
    "cap_effective_arg": _string,
    "bpf_cmd_arg": _string,
    "process_credentials_arg": _obj,
    "bpf_attr_arg": _obj,
    "bpf_prog_arg": _obj,
    "perf_event_arg": _obj,
    "bpf_map_arg": _obj,
    "net_dev_arg": _obj,
    "syscall_id": _obj,
    "error_arg": _obj,
    "sockaddrun_arg": _obj,
}


def _arg(raw: Any, where: str) -> KprobeArg:
    obj = _obj(raw, where)
    kind = ""
    value: Any = None
    label = ""
    for key, item in obj.items():
        if key == "label":
            label = _string(item, f"{where}.label")
            continue
        parser = _ARG_PARSERS.get(key)
        if parser is None:
            raise EventShapeError(where, f"unknown argument kind {key!r}")
        if kind:
            raise EventShapeError(where, f"two argument kinds ({kind}, {key})")
        kind = key
        value = parser(item, f"{where}.{key}")
    return KprobeArg(kind, value, label)


def _args(obj: dict[str, Any], key: str, where: str) -> tuple[KprobeArg, ...]:
    raw = obj.get(key)
    if raw is None:
        return ()
    if type(raw) is not list:
        raise _bad(f"{where}.{key}", raw, "a list")
    return tuple(_arg(item, f"{where}.{key}[{i}]") for i, item in enumerate(raw))


class TraceEvent:
    """One Tetragon event of a type Worktrace reads.

    ``type`` is the ``GetEventsResponse`` field (``process_exec``, ...). ``function`` is the
    kprobe / LSM hook with the architecture prefix removed (``__x64_sys_ptrace`` ->
    ``sys_ptrace``), the uprobe symbol, or ``subsys/event`` of a tracepoint; ``raw`` is the
    decoded object, kept for the alert.
    """

    __slots__ = (
        "action",
        "args",
        "function",
        "node_name",
        "parent",
        "policy_name",
        "process",
        "raw",
        "ret",
        "time",
        "type",
    )

    def __init__(
        self,
        type: str,
        process: Process,
        parent: Process | None,
        *,
        node_name: str = "",
        time: str = "",
        function: str = "",
        args: tuple[KprobeArg, ...] = (),
        ret: KprobeArg | None = None,
        action: str = "",
        policy_name: str = "",
        raw: dict[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.process = process
        self.parent = parent
        self.node_name = node_name
        self.time = time
        self.function = function
        self.args = args
        self.ret = ret
        self.action = action
        self.policy_name = policy_name
        self.raw = raw if raw is not None else {}

    def timestamp(self) -> float:
        """Epoch seconds of the event: its ``time``, else the process start, else now."""
        text = self.time or self.process.start_time
        if text:
            try:
                return datetime.fromisoformat(text).timestamp()
            except ValueError:
                pass
        return datetime.now(UTC).timestamp()


_ARCH_PREFIXES = ("__x64_", "__ia32_", "__arm64_", "__riscv_", "__s390x_")


def normalize_function(name: str) -> str:
    """A kprobe's symbol without the architecture prefix Tetragon adds to syscalls."""
    if name.startswith("__"):
        for prefix in _ARCH_PREFIXES:
            if name.startswith(prefix):
                return name[len(prefix) :]
    return name


def parse_event(obj: Any) -> TraceEvent:
    """Build a :class:`TraceEvent` from one decoded ``GetEventsResponse``.

    Raises :class:`UnknownEvent` for another event type and :class:`EventShapeError` for a
    malformed one.
    """
    if type(obj) is not dict:
        raise _bad("event", obj, "an object")
    kind = ""
    other = ""
    body: Any = None
    for key, value in obj.items():
        if key in _ENVELOPE:
            continue
        if key in _EVENT_TYPES:
            if kind:
                raise EventShapeError("event", f"two event types ({kind}, {key})")
            kind = key
            body = value
        elif not other:
            other = key
    if not kind:
        if other:
            raise UnknownEvent(other[:64])
        raise EventShapeError("event", "no event type")
    if type(body) is not dict:
        raise _bad(kind, body, "an object")
    node = obj.get("node_name", "")
    if type(node) is not str:
        raise _bad("node_name", node, "a string")
    time = obj.get("time", "")
    if type(time) is not str:
        raise _bad("time", time, "a string")
    raw_process = body.get("process")
    if raw_process is None:
        raise EventShapeError(f"{kind}.process", "missing")
    process = Process.parse(raw_process, f"{kind}.process")
    raw_parent = body.get("parent")
    parent = None if raw_parent is None else Process.parse(raw_parent, f"{kind}.parent")
    if kind == "process_exec" or kind == "process_exit":
        return TraceEvent(kind, process, parent, node_name=node, time=time, raw=obj)
    if kind == "process_tracepoint":
        function = f"{_s(body, 'subsys', kind)}/{_s(body, 'event', kind)}"
    elif kind == "process_uprobe":
        function = _s(body, "symbol", kind) or _s(body, "path", kind)
    else:
        function = normalize_function(_s(body, "function_name", kind))
    ret = body.get("return")
    return TraceEvent(
        kind,
        process,
        parent,
        node_name=node,
        time=time,
        function=function,
        args=_args(body, "args", kind),
        ret=None if ret is None else _arg(ret, f"{kind}.return"),
        action=_s(body, "action", kind),
        policy_name=_s(body, "policy_name", kind),
        raw=obj,
    )


def parse_line(line: bytes | str) -> TraceEvent:
    """Decode one export line (JSON) and :func:`parse_event` it.

    Raises :class:`EventShapeError` for a line that is not JSON or too long.
    """
    if len(line) > MAX_LINE_BYTES:
        raise EventShapeError("line", f"{len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise EventShapeError("line", f"not JSON ({exc})") from None
    return parse_event(obj)
