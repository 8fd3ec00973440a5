"""Tetragon's JSON export, one ``GetEventsResponse`` a line, as strict models.

:func:`parse_line` turns one line into a :class:`TraceEvent`; :func:`parse_event` does the same
for an already decoded object. The event types Worktrace reads are ``process_exec``,
``process_exit``, ``process_kprobe``, ``process_tracepoint``, ``process_uprobe`` and
``process_lsm``; any other (``process_loader``, ``process_throttle``, the enterprise-only
``process_connect``/``process_close``/``process_listen``, ...) raises :class:`UnknownEvent`, and
an event of a known type whose fields have the wrong JSON types, or an argument of a kind the
Tetragon API does not define, raises :class:`EventShapeError` naming the field. Both are counted
and skipped by the callers, never fatal.

The models are ``msgspec`` structs decoded straight from the line's bytes, validated in C as they
are built (exact types: a string where an integer belongs is an error). Measured here on the
benchmark's lines: msgspec decode+validate ~0.7x the CPU time of ``orjson.loads`` building plain
dicts, pydantic ``model_validate_json`` of equivalent models ~4x (5-6x msgspec), so only msgspec
leaves a budget for correlation and matching. Unknown fields inside a known event
are ignored, as protojson readers do, so newer Tetragon releases keep working; an unknown
*argument kind* is an error, since its meaning cannot be guessed.

Field names follow Tetragon's protobuf (``api/v1/tetragon/tetragon.proto``): protojson writes
64-bit integers (``size_arg``, ``orig_size``, ...) as strings, bytes as base64, and omits fields
holding their zero value.
"""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
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
    "normalize_function",
    "parse_event",
    "parse_line",
    "resolved_binary",
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
#: Largest line accepted; Tetragon's own events are a few KiB.
MAX_LINE_BYTES = 1 << 20


class EventShapeError(ValueError):
    """An event of a known type whose shape is wrong; ``where`` names the field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class UnknownEvent(ValueError):
    """A ``GetEventsResponse`` of a type Worktrace does not read (``kind`` names it)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"event type {kind!r} is not read by worktrace")
        self.kind = kind


class _S(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Base of the models: keyword construction, zero values omitted when encoded, and not
    tracked by the garbage collector (decoded events hold no reference cycles), which keeps
    collections from scanning every event in flight."""


class Image(_S):
    id: str = ""
    name: str = ""


class Container(_S):
    id: str = ""
    name: str = ""
    image: Image | None = None
    start_time: str = ""
    pid: int | None = None
    maybe_exec_probe: bool = False


class Pod(_S):
    """The Kubernetes Pod a process runs in (``Process.pod``); ``pod_labels`` are all its labels."""

    namespace: str = ""
    name: str = ""
    labels: list[str] = []
    container: Container | None = None
    pod_labels: dict[str, str] = {}
    workload: str = ""
    workload_kind: str = ""

    @property
    def image(self) -> str:
        container = self.container
        return container.image.name if container is not None and container.image else ""


class Capabilities(_S):
    permitted: list[str] = []
    effective: list[str] = []
    inheritable: list[str] = []


class Process(_S):
    """A process as Tetragon describes it; ``exec_id`` is unique across nodes and time.

    The event's process and parent come out of :func:`parse_line` with ``binary`` resolved
    (:func:`resolved_binary`): done there rather than in a ``__post_init__``, whose call from
    the decoder cost ~9% of the decoding."""

    exec_id: str = ""
    pid: int | None = None
    uid: int | None = None
    cwd: str = ""
    binary: str = ""
    arguments: str = ""
    flags: str = ""
    start_time: str = ""
    auid: int | None = None
    pod: Pod | None = None
    docker: str = ""
    parent_exec_id: str = ""
    refcnt: int = 0
    cap: Capabilities | None = None
    tid: int | None = None
    in_init_tree: bool | None = None

    @property
    def basename(self) -> str:
        return self.binary.rpartition("/")[2]

    @property
    def cap_effective(self) -> list[str] | None:
        return None if self.cap is None else self.cap.effective


def resolved_binary(binary: str) -> str:
    """``/dev//shm/x``, ``/tmp/../dev/shm/x``: the path the kernel resolved, which rules match
    (a memfd's name is text, not a path: ``/memfd:../../bin/ls`` stays as it is)."""
    if (
        ("//" in binary or "/." in binary)
        and binary.startswith("/")
        and not binary.startswith("/memfd:")
    ):
        return "/" + posixpath.normpath(binary).lstrip("/")
    return binary


def _resolve(process: Process, parent: Process | None) -> None:
    """Resolve the binaries of an event's process and parent (rarely needed: checked inline)."""
    process.binary = resolved_binary(process.binary)
    if parent is not None:
        parent.binary = resolved_binary(parent.binary)


class FileArg(_S):
    """``file_arg``, ``path_arg`` and ``linux_binprm_arg``: a path, absolute as read here."""

    mount: str = ""
    path: str = ""
    flags: str = ""
    permission: str = ""


class Sock(_S):
    """``sock_arg``, ``skb_arg`` and ``sockaddr_arg``: the addresses of a socket."""

    family: str = ""
    type: str = ""
    protocol: str = ""
    mark: int = 0
    priority: int = 0
    saddr: str = ""
    daddr: str = ""
    sport: int = 0
    dport: int = 0
    cookie: int | str = 0
    state: str = ""
    addr: str = ""  # sockaddr_arg
    port: int = 0  # sockaddr_arg
    hash: int = 0  # skb_arg
    len: int = 0
    proto: int = 0
    sec_path_len: int = 0
    sec_path_olen: int = 0


class TruncatedBytes(_S):
    """``truncated_bytes_arg``: the first bytes of a buffer and its original size."""

    bytes_arg: bytes = b""
    orig_size: int | str = 0

    @property
    def data(self) -> bytes:
        return self.bytes_arg

    @property
    def size(self) -> int:
        return int(self.orig_size)


class Cred(_S):
    """``cred_arg``: the capability sets of a ``struct cred``."""

    permitted: list[str] = []
    effective: list[str] = []
    inheritable: list[str] = []


class Capability(_S):
    """``capability_arg``: one capability by number and name."""

    value: int | None = None
    name: str = ""


class Namespace(_S):
    inum: int | None = None
    is_host: bool = False


class UserNamespace(_S):
    """``user_namespace_arg`` / ``user_ns_arg``: a user namespace's level, owner and inode."""

    level: int | None = None
    uid: int | None = None
    gid: int | None = None
    owner: int | None = None  # the deprecated user_namespace_arg's names
    group: int | None = None
    ns: Namespace | None = None

    @property
    def inum(self) -> int | None:
        return None if self.ns is None else self.ns.inum


class KernelModule(_S):
    """``module_arg``: a kernel module's name, signature check and taint flags."""

    name: str = ""
    signature_ok: bool | None = None
    tainted: list[str] = []


Blob = dict[str, Any]


class _Argument(_S, forbid_unknown_fields=True):
    """One ``KprobeArgument`` as written: exactly one of these kinds is set."""

    string_arg: str | None = None
    int_arg: int | None = None
    skb_arg: Sock | None = None
    size_arg: int | str | None = None
    bytes_arg: bytes | None = None
    path_arg: FileArg | None = None
    file_arg: FileArg | None = None
    truncated_bytes_arg: TruncatedBytes | None = None
    sock_arg: Sock | None = None
    cred_arg: Cred | None = None
    long_arg: int | str | None = None
    bpf_attr_arg: Blob | None = None
    perf_event_arg: Blob | None = None
    bpf_map_arg: Blob | None = None
    uint_arg: int | None = None
    user_namespace_arg: UserNamespace | None = None
    capability_arg: Capability | None = None
    process_credentials_arg: Blob | None = None
    user_ns_arg: UserNamespace | None = None
    module_arg: KernelModule | None = None
    kernel_cap_t_arg: str | None = None
    cap_inheritable_arg: str | None = None
    cap_permitted_arg: str | None = None
    cap_effective_arg: str | None = None
    linux_binprm_arg: FileArg | None = None
    net_dev_arg: Blob | None = None
    bpf_cmd_arg: str | None = None
    syscall_id: Blob | None = None
    sockaddr_arg: Sock | None = None
    bpf_prog_arg: Blob | None = None
    error_arg: Blob | None = None
    sockaddrun_arg: Blob | None = None
    label: str = ""


_ARG_KINDS = tuple(name for name in _Argument.__struct_fields__ if name != "label")
_INT_KINDS = frozenset({"size_arg", "long_arg"})
_PATH_KINDS = frozenset({"file_arg", "path_arg", "linux_binprm_arg"})


class KprobeArg(msgspec.Struct, gc=False, eq=False):
    """One ``KprobeArgument``: ``kind`` is its protobuf field (``file_arg``, ``int_arg``, ...),
    ``value`` the typed value (an int, str, bytes or one of the argument models above),
    ``label`` the policy's label for it. A struct (built in C, untracked by the collector),
    compared by identity."""

    kind: str
    value: Any
    label: str = ""

    def __repr__(self) -> str:
        return f"KprobeArg({self.kind}={self.value!r})"


#: Kinds in the order they are looked for (the common ones first); see :func:`_arg`.
_LOOKUP = ("int_arg", "file_arg", "sock_arg", "string_arg", "size_arg", "path_arg",
           "bytes_arg", "truncated_bytes_arg", "long_arg", "uint_arg", "cred_arg",
           "capability_arg", "module_arg", "user_ns_arg", "user_namespace_arg", "skb_arg",
           "linux_binprm_arg", "sockaddr_arg")  # fmt: skip
_LOOKUP_ALL = _LOOKUP + tuple(k for k in _ARG_KINDS if k not in _LOOKUP)
#: Their positions in a decoded argument's fields (:func:`msgspec.structs.astuple`).
_FIELDS = _Argument.__struct_fields__
_LOOKUP_AT = tuple(_FIELDS.index(k) for k in _LOOKUP_ALL)
_INT_AT = _FIELDS.index("int_arg")
#: A decoded argument has this many ``None`` fields when exactly one kind is set.
_ONE_KIND = len(_ARG_KINDS) - 1
_astuple = msgspec.structs.astuple


def _arg(raw: _Argument, owner: str, index: int) -> KprobeArg:
    values = _astuple(raw)
    unset = values.count(None)  # in C: exactly one kind set, or the event is malformed
    if unset != _ONE_KIND:
        where = f"{owner}.args[{index}]" if index >= 0 else f"{owner}.return"
        if unset == len(_ARG_KINDS):
            raise EventShapeError(where, "no argument kind")
        kinds = [k for k in _ARG_KINDS if getattr(raw, k) is not None]
        raise EventShapeError(where, f"two argument kinds ({', '.join(kinds)})")
    value = values[_INT_AT]
    if value is not None:  # the most common kind: nothing to convert
        return KprobeArg("int_arg", value, raw.label)
    for at in _LOOKUP_AT:
        value = values[at]
        if value is not None:
            kind = _FIELDS[at]
            break
    if kind in _INT_KINDS and type(value) is str:
        try:
            value = int(value)
        except ValueError:
            where = f"{owner}.args[{index}]" if index >= 0 else f"{owner}.return"
            raise EventShapeError(f"{where}.{kind}", f"{value[:32]!r} is not an integer") from None
    elif kind in _PATH_KINDS and value.path and value.path[0] != "/":
        value.path = "/" + value.path  # Tetragon before 1.0 dropped the leading slash
    return KprobeArg(kind, value, raw.label)


class _Exec(_S):
    process: Process
    parent: Process | None = None
    ancestors: list[Process] = []


class _Exit(_S):
    process: Process
    parent: Process | None = None
    signal: str = ""
    status: int = 0
    time: str = ""


class _Hook(_S):
    """Kprobe, tracepoint, uprobe and LSM events: a hook with arguments."""

    process: Process
    parent: Process | None = None
    function_name: str = ""
    args: list[_Argument] = []
    ret: _Argument | None = msgspec.field(default=None, name="return")
    action: str = ""
    policy_name: str = ""
    message: str = ""
    tags: list[str] = []
    subsys: str = ""  # tracepoint
    event: str = ""
    path: str = ""  # uprobe
    symbol: str = ""


class _Response(_S):
    process_exec: _Exec | None = None
    process_exit: _Exit | None = None
    process_kprobe: _Hook | None = None
    process_tracepoint: _Hook | None = None
    process_uprobe: _Hook | None = None
    process_lsm: _Hook | None = None
    node_name: str = ""
    time: str = ""
    cluster_name: str = ""


_DECODER = msgspec.json.Decoder(_Response)
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def _shape_error(exc: msgspec.ValidationError) -> EventShapeError:
    match = _AT.match(str(exc))
    problem = match.group("problem") if match else str(exc)
    where = (match.group("path") if match else "") or ""
    missing = _MISSING.match(problem)
    if missing:
        where = f"{where}.{missing.group('field')}" if where else missing.group("field")
        problem = "missing"
    return EventShapeError(where or "event", problem)


class TraceEvent(msgspec.Struct, gc=False, eq=False):
    """One Tetragon event of a type Worktrace reads.

    ``type`` is the ``GetEventsResponse`` field (``process_exec``, ...). ``function`` is the
    kprobe / LSM hook with the architecture prefix removed (``__x64_sys_ptrace`` ->
    ``sys_ptrace``), the uprobe symbol, or ``subsys/event`` of a tracepoint. :attr:`raw` decodes
    the original line again (only alerts need it). A struct: built in C (one per line, the
    cheapest object to make), untracked by the collector, compared by identity.
    """

    type: str
    process: Process
    parent: Process | None
    node_name: str = ""
    time: str = ""
    function: str = ""
    args: tuple[KprobeArg, ...] = ()
    ret: KprobeArg | None = None
    action: str = ""
    policy_name: str = ""
    line: bytes = b""

    @property
    def raw(self) -> dict[str, Any]:
        value = orjson.loads(self.line) if self.line else {}
        return value if isinstance(value, dict) else {}

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


def _unknown_kind(line: bytes) -> UnknownEvent | EventShapeError:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return EventShapeError("line", f"not JSON ({exc})")
    if not isinstance(obj, dict):
        return EventShapeError("event", "expected an object")
    for key in obj:
        if key not in {"node_name", "time", "cluster_name", "node_labels", "aggregation_info"}:
            return UnknownEvent(str(key)[:64])
    return EventShapeError("event", "no event type")


_OTHER_HOOKS = ("process_lsm", "process_tracepoint", "process_uprobe")
#: :func:`normalize_function` of the hook names seen (bounded: names come from the export).
_FUNCTIONS: dict[str, str] = {}
_MAX_FUNCTIONS = 4096


def _build(resp: _Response, line: bytes) -> TraceEvent:
    body = resp.process_exec
    if body is not None:
        if resp.process_kprobe is not None or resp.process_exit is not None:
            raise EventShapeError("event", "two event types")
        event = TraceEvent(
            "process_exec", body.process, body.parent, resp.node_name, resp.time, line=line
        )
    elif (exit_ := resp.process_exit) is not None:
        event = TraceEvent(
            "process_exit", exit_.process, exit_.parent, resp.node_name, resp.time, line=line
        )
    else:
        event = _hook_event(resp, line)
    # binaries as given to execve (``/dev//shm/x``) are resolved here, in line: a call per
    # event would cost more than the check
    process, parent = event.process, event.parent
    if (
        "/." in process.binary
        or "//" in process.binary
        or (parent is not None and ("/." in parent.binary or "//" in parent.binary))
    ):
        _resolve(process, parent)
    return event


def _hook_event(resp: _Response, line: bytes) -> TraceEvent:
    hook = resp.process_kprobe
    if hook is not None:
        kind = "process_kprobe"
        name = hook.function_name
        function = _FUNCTIONS.get(name)
        if function is None:
            function = normalize_function(name)
            if len(_FUNCTIONS) < _MAX_FUNCTIONS:
                _FUNCTIONS[name] = function
    else:
        for kind in _OTHER_HOOKS:
            hook = getattr(resp, kind)
            if hook is not None:
                break
        else:
            raise _unknown_kind(line)
        if kind == "process_tracepoint":
            function = f"{hook.subsys}/{hook.event}"
        elif kind == "process_uprobe":
            function = hook.symbol or hook.path
        else:
            function = normalize_function(hook.function_name)
    raw_args = hook.args
    if not raw_args:
        args: tuple[KprobeArg, ...] = ()
    elif len(raw_args) == 1:
        args = (_arg(raw_args[0], kind, 0),)
    else:
        args = tuple([_arg(a, kind, i) for i, a in enumerate(raw_args)])
    ret = hook.ret
    return TraceEvent(
        kind, hook.process, hook.parent, resp.node_name, resp.time, function, args,
        None if ret is None else _arg(ret, kind, -1), hook.action, hook.policy_name, line,
    )  # fmt: skip


def parse_line(line: bytes | str) -> TraceEvent:
    """Decode and validate one export line (JSON).

    Raises :class:`UnknownEvent` for another event type and :class:`EventShapeError` for a
    malformed (or too long) one.
    """
    if len(line) > MAX_LINE_BYTES:
        raise EventShapeError("line", f"{len(line)} bytes exceeds {MAX_LINE_BYTES}")
    data = line.encode() if isinstance(line, str) else line
    try:
        resp = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _shape_error(exc) from None
    except msgspec.DecodeError as exc:
        raise EventShapeError("line", f"not JSON ({exc})") from None
    except RecursionError:
        raise EventShapeError("line", "nested too deeply") from None
    return _build(resp, data)


def parse_event(obj: Any) -> TraceEvent:
    """:func:`parse_line` for an already decoded ``GetEventsResponse``."""
    if not isinstance(obj, dict):
        raise EventShapeError("event", "expected an object")
    try:
        data = orjson.dumps(obj)
    except TypeError as exc:
        raise EventShapeError("event", str(exc)) from None
    return parse_line(data)
