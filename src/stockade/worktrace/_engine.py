"""The detection engine: correlate each event, match rules, assemble attack paths, score rarity.

:meth:`Engine.process` takes one :class:`TraceEvent` and returns the alerts it raises (usually
none: the shared empty tuple). It keeps, bounded:

- a process table (``exec_id`` -> pid, uid, binary, parent, session) filled from the events, for
  ancestries and the local process-tree correlation;
- per scope (session, else workspace, else Pod, else node) and attack path, the time and
  confidence of each of the path's rules last seen; a path whose every rule was seen within its
  ``time_window`` raises an alert scored ``1 - prod(1 - c_i)`` and starts over;
- per blueprint, how often each process ancestry (``bash>python3>curl``) was executed. The first
  ``learning_events`` execs of a blueprint only count; after that an ancestry seen ``count`` times
  before scores ``1 / (1 + ln(1 + count))`` and an exec scoring at least ``anomaly_threshold``
  raises an anomaly alert.

For ``stdio_socket`` rules it keeps, per process, a descriptor table (:class:`_FdTable`): which
of its descriptors are sockets (network or local), whether each is connected and close-on-exec,
from the calls the generated policy reports with their return values (``_rules.STDIO_HOOKS``):
``socket()`` puts a socket on the descriptor it returns (``SOCK_CLOEXEC`` from its type);
``connect()`` connects it (0 or ``-EINPROGRESS``); ``dup``/``dup2``/``dup3``/``fcntl(F_DUPFD*)``
copy it (one open file: a connect through either descriptor connects both, so ``dup2(s, 0)``
before ``connect(s)`` is seen); ``close``/``close_range`` drop it; ``fcntl(F_SETFD)``,
``ioctl(FIOCLEX/FIONCLEX)``, ``dup3(O_CLOEXEC)``, ``F_DUPFD_CLOEXEC`` and ``close_range(CLOEXEC)``
set its close-on-exec flag, and an exec drops the descriptors that have it. A descriptor absent
from the table is no socket (a file, a pipe, a tty: opens and pipes are not hooked, and need not
be: they only ever replace a socket through a close or a copy, both seen). An exec of a program
whose stdin is a connected network socket, or whose parent's is (``pty.spawn`` relays the socket
on python's stdin to the shell's pty), matches.

Tetragon reports no fork: a process first seen (its first kprobe, or its exec) gets a copy of its
parent's table, by the parent's exec id (kept past the parent's exit: ``if os.fork(): exit()``),
or, when the parent is a fork that never exec'd nor made a call we follow (it has no table, and
its binary is its own parent's), the grandparent's (a double fork). A forked child has an exec id
of its own before it execs: its exec (same pid) keeps its table, even when its parent has exited
meanwhile (the exec then names the reaper as parent). A table leaves the live ones at its
process's exit, and goes unless it holds a socket: a pid is reused only after an exit (were the
exit lost, the new process would take the old one's descriptors: a false alert at worst).

A child first seen after its parent closed or replaced a socket it was forked with gets it back:
a table keeps its last sockets removed with the time of the removal, and a child whose clone
started (``start_time``) before a removal inherits what the descriptor held then. An exec whose
stdin is a network socket not yet connected waits on that socket, and the socket's connect
raises the alert: the export is not ordered across CPUs, a connect may come after the exec it
preceded.

What the events cannot tell, and the choice made: a close-on-exec flag changed by a call not
hooked (none is known besides those above) would go unseen; a socket whose creation was not seen
(opened before the policy was loaded, received over a unix socket or by ``pidfd_getfd``, created
by io_uring) is unknown until its ``connect``, and a connect of an unknown descriptor takes it for
a connected network socket (fail closed); accepted sockets (``accept``: a bind shell) are not
followed. The doubt always goes to a socket that stays open: a descriptor is only dropped by a
close, a copy over it, or an exec with its close-on-exec flag known set.

Bounded: at most ``max_fd_processes`` tables (each with at most ``max_fds`` sockets besides
stdin). A process opening more sockets than that stops being followed past them and is marked:
a copy onto its stdin of a descriptor the table does not hold is taken for a socket (fail
closed). When the tables are full, an eighth goes, the least telling first: exited processes
without a network socket on stdin, then live ones, then exited ones with one, then live ones
with one (``fd_evicted_armed`` counts those). Short-lived processes free their tables at exit,
and only a process with a socket (or whose parent has one) gets a table. Pushing out a live
reverse shell's table takes ``max_fd_processes`` live processes each with a network socket on
its stdin, and even then the evicted table leaves a mark (by pid while its process lives, and by
exec id; for 4x the tables): that process's stdin, and its children's, are taken for a connected
socket (fail closed; the only others marked are the flood's own processes).

Correlation: a Pod labelled ``stockade.dev/workspace`` / ``stockade.dev/user`` /
``stockade.dev/session`` (``stockade.dev/blueprint``) names them; for the local backends (no Pod)
a process whose pid, or an ancestor's, was registered in :class:`LocalSessions` belongs to that
session. A rule that is not ``global`` is only matched for events with a Pod or a session.

Only the Pods of the trusted namespaces (``trusted_namespaces``: where Stockade puts workspace
Pods) are believed: anyone who may create a Pod elsewhere can write ``stockade.dev/...`` labels
on it, and a label believed there would let them frame a workspace or a user (an alert that
kills the workspace's sessions or bans the user). An event of a Pod in any other namespace is
tied to no workspace, user or session: its alerts still fire, unattributed (they carry the Pod's
namespace and name), and can kill or ban nobody; its blueprint label teaches no ancestry.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import math
import re
import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ._events import (
    _DECODER,
    MAX_LINE_BYTES,
    EventShapeError,
    FileArg,
    Process,
    Sock,
    TraceEvent,
    UnknownEvent,
    _build,
    parse_line,
    resolved_binary,
)
from ._rules import (
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    F_SETFD,
    FIOCLEX,
    FIONCLEX,
    STDIO_FDS,
    CompiledArg,
    CompiledRule,
    RuleSet,
    RuleSource,
)

#: Where ``stockade.workspace`` puts workspace Pods (``RenderContext.namespace``), and so the
#: default of ``trusted_namespaces`` (``[worktrace] trusted_namespaces``).
WORKSPACE_NAMESPACE = "stockade-workspaces"

__all__ = [
    "LABEL_BLUEPRINT",
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_WORKSPACE",
    "WORKSPACE_NAMESPACE",
    "Alert",
    "AnomalyConfig",
    "Engine",
    "LocalSessions",
    "SessionInfo",
    "rarity",
]

LABEL_WORKSPACE = "stockade.dev/workspace"
LABEL_USER = "stockade.dev/user"
LABEL_USER_NAME = "stockade.dev/user-name"
LABEL_SESSION = "stockade.dev/session"
LABEL_BLUEPRINT = "stockade.dev/blueprint"

#: A raw event larger than this (serialised) is summarised in the alert instead of embedded.
MAX_ALERT_EVENT_BYTES = 32 * 1024
_NONE: tuple[Alert, ...] = ()
_DECODE = _DECODER.decode
_PATH_KINDS = frozenset({"file_arg", "path_arg", "linux_binprm_arg"})


def rarity(count: int) -> float:
    """Rarity of something seen ``count`` times before: ``1 / (1 + ln(1 + count))``."""
    return 1.0 / (1.0 + math.log1p(count))


@functools.lru_cache(maxsize=64)
def _rare_up_to(threshold: float) -> float:
    """A count above which :func:`rarity` is below ``threshold`` (it decreases with the count):
    ``rarity(n) >= t`` means ``n <= e^(1/t - 1) - 1``; a margin for rounding."""
    if threshold <= 0:
        return math.inf
    exponent = 1.0 / threshold - 1.0
    if exponent > 700:  # e^700 counts: never reached
        return math.inf
    return math.ceil(math.expm1(exponent) * 1.001) + 2


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who and where a process belongs to."""

    workspace: str | None = None
    username: str | None = None
    session_id: str | None = None
    blueprint: str | None = None


class LocalSessions:
    """Sessions of the local backends (Podman, sandbox) by the pid of their first process.

    The gateway registers a session's shell pid; every process descending from it (as seen in
    the exec events) belongs to the session. Thread-safe.
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, SessionInfo] = {}
        self._lock = threading.Lock()

    def register(self, pid: int, info: SessionInfo) -> None:
        with self._lock:
            self._by_pid[pid] = info

    def unregister(self, pid: int) -> None:
        with self._lock:
            self._by_pid.pop(pid, None)

    def get(self, pid: int | None) -> SessionInfo | None:
        return None if pid is None else self._by_pid.get(pid)

    def __len__(self) -> int:
        return len(self._by_pid)


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """Rarity scoring of process ancestries; ``enabled=False`` turns it off."""

    enabled: bool = True
    learning_events: int = 1000
    threshold: float = 1.0
    depth: int = 4
    max_ancestries: int = 50_000


class Alert:
    """One detection: a rule match, an attack path or an anomaly, with its context."""

    __slots__ = (
        "alert_id",
        "ancestry",
        "arguments",
        "binary",
        "confidence",
        "event",
        "event_time",
        "event_type",
        "kind",
        "name",
        "node",
        "pod_name",
        "pod_namespace",
        "rule_id",
        "rules",
        "session",
    )

    def __init__(
        self,
        *,
        kind: str,
        rule_id: str,
        name: str,
        confidence: float,
        event: TraceEvent,
        session: SessionInfo | None,
        ancestry: list[str],
        rules: Sequence[str] = (),
    ) -> None:
        self.alert_id = uuid.uuid4().hex
        self.kind = kind
        self.rule_id = rule_id
        self.name = name
        self.confidence = confidence
        self.session = session or SessionInfo()
        process = event.process
        pod = process.pod
        self.pod_namespace = pod.namespace if pod else None
        self.pod_name = pod.name if pod else None
        self.node = event.node_name
        self.binary = process.binary
        self.arguments = process.arguments
        self.ancestry = ancestry
        self.rules = list(rules)
        self.event_type = event.type
        self.event_time = event.timestamp()
        self.event = _embed(event)

    def __repr__(self) -> str:
        return f"<Alert {self.kind} {self.rule_id} {self.confidence:.3f} {self.binary}>"

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data (the fields of ``WorktraceAlert``)."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "rule_id": self.rule_id,
            "name": self.name,
            "confidence": self.confidence,
            "workspace": self.session.workspace,
            "username": self.session.username,
            "session_id": self.session.session_id,
            "blueprint": self.session.blueprint,
            "pod_namespace": self.pod_namespace,
            "pod_name": self.pod_name,
            "node": self.node,
            "binary": self.binary,
            "arguments": self.arguments,
            "ancestry": self.ancestry,
            "rules": self.rules,
            "event_type": self.event_type,
            "event_time": self.event_time,
            "event": self.event,
        }


def _embed(event: TraceEvent) -> dict[str, Any]:
    if len(event.line) <= MAX_ALERT_EVENT_BYTES:
        return event.raw
    return {"truncated": True, "type": event.type, "function": event.function}


class _Proc(msgspec.Struct, gc=False, eq=False):
    """A process table entry (a struct: built in C, untracked by the collector: it holds no
    reference cycle, only text, numbers and a :class:`SessionInfo`)."""

    pid: int | None
    uid: int | None
    binary: str
    parent: str
    session: Any
    ancestry: tuple[str, ...] | None = None  # basenames, this process first
    #: The exec id of the ancestor not in the table that cut ``ancestry`` short ("": none).
    above: str = ""


class _Socket:
    """A socket, as the kernel's open file: its descriptors' copies (dup, fork) share it, so a
    connect through one of them connects them all."""

    __slots__ = ("connected", "network", "waiting")

    def __init__(self, *, network: bool, connected: bool = False) -> None:
        self.network = network
        self.connected = connected
        #: Execs of programs with this socket on their stdin before it connected (the export
        #: is not ordered across CPUs: a connect may come after the exec it preceded), with
        #: their process entries; its connect matches them (``Engine._late_connect``).
        self.waiting: list[tuple[TraceEvent, _Proc]] | None = None


#: What an untracked descriptor copied onto stdin is, in a table that stopped following its
#: process's sockets (more than ``max_fds``): taken for a connected network socket.
_DOUBT = _Socket(network=True, connected=True)
#: What an evicted table's process (see ``Engine._fd_marks``) and its children are given: a
#: connected network socket on stdin, every other descriptor unknown (``overflow``).
_EVICTED_FDS: dict[int, tuple[_Socket, bool]] = {0: (_DOUBT, False)}
#: Families whose sockets are not network connections.
_LOCAL_FAMILIES = frozenset({1, 16})  # AF_UNIX, AF_NETLINK
_CONNECTING = frozenset({0, -115})  # connected, or -EINPROGRESS (a non-blocking connect)
SOCK_CLOEXEC = O_CLOEXEC = 0o2000000
FD_CLOEXEC = 1
_CLOSE_RANGE_CLOEXEC = 4
_CLOSE_RANGE_FLAGS = 2 | 4  # CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC
#: Exec ids a table answers to (a process's clone and its last execs).
_EXEC_IDS_PER_TABLE = 4
#: Sockets removed from a table remembered for the children forked before the removal.
_REMOVED_PER_TABLE = 16
#: Execs a socket not yet connected keeps waiting for its connect, and sockets with any (the
#: oldest forgets its execs first): the events are kept whole.
_WAITING_PER_SOCKET = 8
_WAITING_SOCKETS = 1024


class _FdTable:
    """The sockets among one process's descriptors, with their close-on-exec flags.

    Only sockets are held: a descriptor absent from the table is not a socket (a file, a pipe,
    a tty, a closed one). A process with no table and no parent with one holds no socket."""

    __slots__ = ("binary", "exec_ids", "fds", "key", "live", "overflow", "removed")

    def __init__(
        self,
        key: tuple[str, int],
        binary: str,
        fds: dict[int, tuple[_Socket, bool]],
        overflow: bool,
    ) -> None:
        self.key = key
        self.binary = binary
        self.exec_ids: list[str] = []
        self.fds = fds
        self.live = True
        #: More sockets than ``max_fds`` were opened: some are not followed.
        self.overflow = overflow
        #: The last sockets taken off a descriptor (close, a copy over it, close_range): (when,
        #: fd, socket, close-on-exec), oldest first, for a child forked before (see
        #: ``Engine._fd_inherit``). None until the first.
        self.removed: list[tuple[str, int, _Socket, bool]] | None = None

    def remove(self, fd: int, event: TraceEvent) -> None:
        """Take the socket off ``fd``, remembering it with the time of the ``event`` that did
        (its text: parsed only when a child needs it, rarely)."""
        held = self.fds.pop(fd, None)
        if held is None:
            return
        when = event.time or event.process.start_time
        removed = self.removed
        if removed is None:
            removed = self.removed = []
        removed.append((when, fd, held[0], held[1]))
        if len(removed) > _REMOVED_PER_TABLE:
            del removed[0]

    def put(self, fd: int, sock: _Socket, cloexec: bool, limit: int) -> None:
        fds = self.fds
        if fd not in fds and len(fds) >= limit and fd not in STDIO_FDS:
            self.overflow = True  # stdio is always followed; the rest up to the limit
            return
        fds[fd] = (sock, cloexec)

    def set_cloexec(self, fd: int, cloexec: bool) -> None:
        held = self.fds.get(fd)
        if held is not None:
            self.fds[fd] = (held[0], cloexec)

    def armed(self) -> bool:
        """A network socket (connected or not yet) is on stdin."""
        return any((held := self.fds.get(fd)) is not None and held[0].network for fd in STDIO_FDS)

    def on_socket(self) -> bool:
        """A connected network socket is on stdin."""
        for fd in STDIO_FDS:
            held = self.fds.get(fd)
            if held is not None and held[0].network and held[0].connected:
                return True
        return False


#: The stand-in parent table of a marked process (read only: children copy its descriptors).
_EVICTED = _FdTable(("", 0), "", _EVICTED_FDS, True)


def _seconds(text: str, default: float) -> float:
    """Epoch seconds of an RFC 3339 time of the export; ``default`` when it is none."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return default


def _exact_name(value: str | None) -> str | None:
    """The name a ``stockade.dev/user-name`` label holds (``B32`` + base32, see
    ``stockade.workspace.reversible_label``); ``None`` when it holds none."""
    if value is None or not value.startswith("B32"):
        return value
    body = value[3:]
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _session_from_labels(labels: Mapping[str, str]) -> SessionInfo | None:
    workspace = labels.get(LABEL_WORKSPACE)
    # the exact owner when the Pod's user label had to be a hashed stand-in (``_svc``); one
    # that does not decode names nobody (never the stand-in: a real user may be called that)
    exact = labels.get(LABEL_USER_NAME)
    user = _exact_name(exact) if exact is not None else labels.get(LABEL_USER)
    session = labels.get(LABEL_SESSION)
    if workspace is None and user is None and session is None:
        return None
    return SessionInfo(workspace, user, session, labels.get(LABEL_BLUEPRINT))


class Engine:
    """Matches events against the rules in service (a :class:`RuleSet`, or a
    :class:`RuleSource` whose current set is read per event, so a hot reload applies at once).

    ``image_files`` maps an image name (as in ``pod.container.image.name``) to the files its SBOM
    lists, for ``not_in_image`` rules. Not thread-safe: one engine per ingestion loop.
    """

    def __init__(
        self,
        rules: RuleSet | RuleSource,
        *,
        sessions: LocalSessions | None = None,
        image_files: Mapping[str, frozenset[str]] | None = None,
        anomaly: AnomalyConfig | None = None,
        max_processes: int = 200_000,
        trusted_namespaces: Collection[str] = (WORKSPACE_NAMESPACE,),
        max_fd_processes: int = 16_384,
        max_fds: int = 64,
    ) -> None:
        #: Namespaces whose Pods' ``stockade.dev/...`` labels are believed (see the module).
        self.trusted_namespaces = frozenset(trusted_namespaces)
        self._source = rules if isinstance(rules, RuleSource) else None
        self._rules = rules if isinstance(rules, RuleSet) else rules.current
        self.sessions = sessions if sessions is not None else LocalSessions()
        self.image_files = image_files or {}
        self.anomaly = anomaly or AnomalyConfig()
        self._anomalies = self.anomaly.enabled
        self._session_pids = self.sessions._by_pid  # the live map: a register shows at once
        self._max_processes = max_processes
        self._procs: dict[str, _Proc] = {}
        #: (node, pid) -> session of the live processes of local sessions, forgotten at their
        #: exit: the process table drops its oldest entries when full, live or not, and a
        #: process whose parent's entry went must still find its session.
        self._live_sessions: dict[tuple[str, int], SessionInfo] = {}
        self._pid_uid: dict[int, int] = {}
        self._paths: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
        self._ancestries: dict[str, dict[tuple[str, ...], int]] = {}
        self._learned: dict[str, int] = {}
        self._bases: dict[str, str] = {}
        #: Descriptor tables (see :class:`_FdTable`): every table once, oldest first (the
        #: eviction order within a tier); the live ones by (node, pid); every table by each exec
        #: id it was seen under, kept past the process's exit for its late children.
        self._max_fd_processes = max(8, max_fd_processes)
        self._max_fds = max(4, max_fds)
        self._fd_tables: dict[_FdTable, None] = {}
        self._fd_live: dict[tuple[str, int], _FdTable] = {}
        self._fd_exec: dict[str, _FdTable] = {}
        #: Processes (by (node, pid) while live, and by exec id) whose table was evicted with
        #: a network socket on its stdin: their stdin, and their children's, is taken for a
        #: connected socket (fail closed). For 4x the tables at most, oldest dropped first.
        self._fd_marks: dict[tuple[str, int] | str, None] = {}
        #: Sockets with execs waiting for their connect (``_Socket.waiting``), oldest first.
        self._waiting: dict[_Socket, None] = {}
        #: The table of the process_exec being matched (its descriptors after the exec).
        self._exec_fds: _FdTable | None = None
        #: The event whose parent's table ``_fd_lookup`` just looked up, and found (or not)
        #: without changing any table: ``_stdio_on_socket`` takes it from there, for that event.
        self._parent_of: TraceEvent | None = None
        self._parent_fds: _FdTable | None = None
        self.fd_evicted_armed = 0
        self.events = 0
        self.unknown = 0
        self.malformed = 0
        self.alerts = 0
        self.last_error = ""

    @property
    def rules(self) -> RuleSet:
        return self._source.current if self._source is not None else self._rules

    def stats(self) -> dict[str, int]:
        return {
            "events": self.events,
            "unknown": self.unknown,
            "malformed": self.malformed,
            "alerts": self.alerts,
            "processes": len(self._procs),
            "fd_tables": len(self._fd_tables),
            "fd_evicted_armed": self.fd_evicted_armed,
        }

    # --- entry points -------------------------------------------------------------------

    def feed(self, line: bytes | str) -> Sequence[Alert]:
        """Parse one export line and :meth:`process` it; unknown and malformed lines are
        counted (``unknown``, ``malformed``) and raise nothing."""
        if not line:
            return _NONE
        try:
            if type(line) is bytes and len(line) <= MAX_LINE_BYTES:
                try:
                    resp = _DECODE(line)
                except (msgspec.DecodeError, RecursionError):
                    event = parse_line(line)  # raises it as an EventShapeError
                else:
                    event = _build(resp, line)
            else:
                event = parse_line(line)
        except UnknownEvent:
            self.unknown += 1
            return _NONE
        except EventShapeError as exc:
            if not line.strip():  # a blank line is nothing, not a malformed event
                return _NONE
            self.malformed += 1
            self.last_error = str(exc)
            return _NONE
        return self.process(event)

    def process(self, event: TraceEvent) -> Sequence[Alert]:
        self.events += 1
        rules = self._rules if self._source is None else self._source.current
        proc = event.process
        entry = self._procs.get(proc.exec_id)
        if entry is None:
            entry = self._remember(proc, event.parent, event.node_name)
        kind = event.type
        alerts: list[Alert] | None = None
        if kind == "process_exec":
            if rules.stdio_calls:
                if not self._fd_tables:
                    self._exec_fds = None
                elif self._fd_none(event):
                    # neither this process nor its parent has a table (what ``_fd_lookup``
                    # would find, looked up in place: most execs)
                    self._exec_fds = None
                    self._parent_of, self._parent_fds = event, None
                else:
                    self._exec_fds = self._fd_exec_event(event)
            hits = self._match_exec(rules, event, entry)
            self._parent_of = None
            if self._exec_fds is not None and rules.exec_stdio:
                self._wait_for_connect(self._exec_fds, event, entry)
            if hits:
                alerts = self._on_hits(rules, hits, event, entry)
            if self._anomalies:
                anomaly = self._score(event, entry)
                if anomaly is not None:
                    alerts = alerts or []
                    alerts.append(anomaly)
        elif kind == "process_exit":
            pid = proc.pid
            if pid is not None:
                self._pid_uid.pop(pid, None)
            if self._live_sessions:
                self._live_sessions.pop((event.node_name, pid or 0), None)
            if self._fd_marks or (
                self._fd_tables  # most exits: no table to let go of, looked up in place
                and (proc.exec_id in self._fd_exec or (event.node_name, pid) in self._fd_live)
            ):
                self._fd_exit(event)
        else:
            stdio = rules.stdio_calls
            function = event.function
            if stdio and kind == "process_kprobe":
                positions = stdio.get(function)
                if positions is not None:
                    late = self._track_fd(event, positions)
                    if late is not None:
                        alerts = self._late_connect(rules, late)
            if function not in rules.syscall_rules and function not in rules.file_rules:
                hits = None  # no rule for this hook
            else:
                hits = self._match_kprobe(rules, event, entry)
            if hits:
                more = self._on_hits(rules, hits, event, entry)
                alerts = more if not alerts else [*alerts, *(more or ())]
        if not alerts:
            return _NONE
        self.alerts += len(alerts)
        return alerts

    # --- process table and correlation ----------------------------------------------------

    def _remember(self, proc: Process, parent: Process | None, node: str) -> _Proc:
        """The entry of a process not in the table yet (``process`` looked), made now."""
        procs = self._procs
        if len(procs) >= self._max_processes:  # drop the oldest eighth (insertion order)
            for key in list(procs)[: self._max_processes // 8]:
                del procs[key]
        parent_id = proc.parent_exec_id
        parent_entry = procs.get(parent_id) if parent_id else None
        sessions = self._session_pids
        if parent_entry is None and parent is not None and parent.exec_id:
            parent_entry = _Proc(parent.pid, parent.uid, parent.binary, parent.parent_exec_id, None)
            if sessions:
                ppid = parent.pid or 0
                parent_entry.session = sessions.get(ppid) or self._live_sessions.get((node, ppid))
            procs[parent.exec_id] = parent_entry
        session = None
        if sessions:
            session = sessions.get(proc.pid) or (  # type: ignore[arg-type]
                parent_entry.session if parent_entry is not None else None
            )
            if session is not None and proc.pid is not None:
                _bounded_set(self._live_sessions, (node, proc.pid), session, self._max_processes)
        entry = _Proc(proc.pid, proc.uid, proc.binary, parent_id, session)
        procs[proc.exec_id] = entry
        if proc.pid is not None and proc.uid is not None:
            self._pid_uid[proc.pid] = proc.uid
        return entry

    # --- descriptor tables (stdio_socket rules) ----------------------------------------

    def _track_fd(self, event: TraceEvent, positions: tuple[int, ...]) -> _Socket | None:
        """Apply one descriptor-table call (:data:`STDIO_HOOKS`) to the process's table; the
        socket a connect just connected when execs wait for it (see ``_Socket.waiting``).

        A call that failed (a negative return value) changed nothing; one whose return value
        the event lacks (a policy that did not ask for it) is taken as done when the change
        needs no new descriptor, else skipped."""
        args = event.args
        values: list[int] = []
        for position in positions:
            if position >= len(args):
                values.append(0)  # an older policy's event without it (dup3's flags)
                continue
            value = args[position].value
            if type(value) is not int:
                return None
            values.append(value)
        ret = event.ret.value if event.ret is not None else None
        if type(ret) is not int:
            ret = None
        function = event.function
        if function == "sys_connect":
            if ret is not None and ret not in _CONNECTING:
                return None  # refused, unreachable, not a socket: not connected
            table = self._fd_lookup(event, create=True)
            if table is None:
                return None
            fd = values[0]
            held = table.fds.get(fd)
            if held is None:  # a socket whose creation was not seen (older, received): doubt
                table.put(fd, _Socket(network=True, connected=True), False, self._max_fds)
            elif held[0].network:
                sock = held[0]
                if not sock.connected:
                    sock.connected = True
                    if sock.waiting:
                        return sock
            return None
        if ret is not None and ret < 0:
            return None
        if function == "sys_socket":
            if ret is None:
                return None
            family, kind = values
            table = self._fd_lookup(event, create=True)
            if table is not None:
                sock = _Socket(network=family not in _LOCAL_FAMILIES)
                table.put(ret, sock, bool(kind & SOCK_CLOEXEC), self._max_fds)
            return None
        table = self._fd_lookup(event, create=False)
        if table is None:
            return None  # no socket in this process nor in its parent: nothing to follow
        if function == "sys_close":
            if values[0] in table.fds:
                table.remove(values[0], event)
        elif function in ("sys_dup2", "sys_dup3"):
            old, new = values[0], values[1]
            if old != new:
                cloexec = function == "sys_dup3" and bool(values[2] & O_CLOEXEC)
                self._fd_copy(table, old, new, cloexec, event)
        elif function == "sys_dup":
            if ret is not None:
                self._fd_copy(table, values[0], ret, False, event)
        elif function == "sys_fcntl":
            fd, cmd, arg = values
            if cmd == F_SETFD:
                table.set_cloexec(fd, bool(arg & FD_CLOEXEC))
            elif cmd in (F_DUPFD, F_DUPFD_CLOEXEC) and ret is not None:
                self._fd_copy(table, fd, ret, cmd == F_DUPFD_CLOEXEC, event)
        elif function == "sys_ioctl":
            fd, cmd = values
            if cmd in (FIOCLEX, FIONCLEX):
                table.set_cloexec(fd, cmd == FIOCLEX)
        elif function == "sys_close_range":
            first, last, flags = values
            if flags & ~_CLOSE_RANGE_FLAGS:
                return None  # EINVAL: nothing closed
            first &= 0xFFFFFFFF  # unsigned int in the kernel; Tetragon's int is signed
            last &= 0xFFFFFFFF
            for fd in [fd for fd in table.fds if first <= fd <= last]:
                if flags & _CLOSE_RANGE_CLOEXEC:
                    table.set_cloexec(fd, True)
                else:
                    table.remove(fd, event)
        return None

    def _wait_for_connect(self, table: _FdTable, event: TraceEvent, entry: _Proc) -> None:
        """A program exec'd with a network socket not yet connected on its stdin waits on it:
        the connect may have come first and be exported after (see ``_Socket.waiting``)."""
        for fd in STDIO_FDS:
            held = table.fds.get(fd)
            if held is None or not held[0].network or held[0].connected:
                continue
            sock = held[0]
            if sock.waiting is None:
                sock.waiting = []
                waiting = self._waiting
                waiting[sock] = None
                if len(waiting) > _WAITING_SOCKETS:
                    oldest = next(iter(waiting))
                    del waiting[oldest]
                    oldest.waiting = None
            if len(sock.waiting) < _WAITING_PER_SOCKET:
                sock.waiting.append((event, entry))

    def _late_connect(self, rules: RuleSet, sock: _Socket) -> list[Alert] | None:
        """The alerts of the execs that waited on ``sock``, now connected: each as its exec
        would have raised it (the ``stdio_socket`` rules its process matches)."""
        waiting, sock.waiting = sock.waiting or [], None
        self._waiting.pop(sock, None)
        alerts: list[Alert] = []
        saved = self._exec_fds
        try:
            for event, entry in waiting:
                # its stdin as at its exec: this socket, connected
                self._exec_fds = _FdTable(("", 0), event.process.binary, {0: (sock, False)}, False)
                hits = [
                    rule
                    for rule in rules.exec_stdio
                    if self._process_matches(rule, event) and self._scoped(rule, event, entry)
                ]
                if hits:
                    alerts.extend(self._on_hits(rules, hits, event, entry) or ())
        finally:
            self._exec_fds = saved
        return alerts or None

    def _fd_copy(
        self, table: _FdTable, old: int, new: int, cloexec: bool, event: TraceEvent
    ) -> None:
        """``new`` is now a copy of ``old`` (dup2/dup3/dup/F_DUPFD)."""
        held = table.fds.get(old)
        if held is not None:
            if new in table.fds:
                table.remove(new, event)
            table.put(new, held[0], cloexec, self._max_fds)
        elif table.overflow and new in STDIO_FDS:
            # the table stopped following this process's sockets: an untracked descriptor on
            # stdin may be one of them (fail closed)
            table.put(new, _DOUBT, cloexec, self._max_fds)
        elif new in table.fds:  # a copy of something that is not a socket
            table.remove(new, event)

    def _fd_lookup(self, event: TraceEvent, *, create: bool) -> _FdTable | None:
        """The descriptor table of the event's process; a process first seen gets a copy of
        its parent's (Tetragon reports no fork: a child's first event stands for it), or,
        with ``create``, an empty one. ``None``: no socket in the process nor its parent."""
        proc = event.process
        exec_id = proc.exec_id
        if exec_id:
            table = self._fd_exec.get(exec_id)
            if table is not None:
                return table
        pid = proc.pid
        if pid is None:
            return None
        key = (event.node_name, pid)
        table = self._fd_live.get(key)
        if table is not None:
            # the same process under another exec id: its exec, or its clone's (a forked child
            # has an exec id of its own before it execs), even with another parent (its own
            # exited: the exec names the reaper). Only an exit ends it, a pid is reused after
            # one; were the exit lost, the new process would take the old one's descriptors
            # (fail closed: a false alert at worst, never a missed one)
            self._fd_alias(table, exec_id)
            return table
        marks = self._fd_marks
        if marks and (key in marks or exec_id in marks):
            source: _FdTable | None = _EVICTED
        else:
            source = self._fd_parent(event)
            if not create:  # no table changes below before a return None: reusable
                self._parent_of, self._parent_fds = event, source
        if source is None or not (source.fds or source.overflow or source.removed):
            if not create:
                return None
            fds: dict[int, tuple[_Socket, bool]] = {}
            overflow = False
        else:
            fds, overflow = self._fd_inherit(source, proc), source.overflow
            if not (fds or overflow or create):
                return None
        self._parent_of = None
        if len(self._fd_tables) >= self._max_fd_processes:
            self._fd_evict()
        table = _FdTable(key, proc.binary, fds, overflow)
        self._fd_tables[table] = None
        self._fd_live[key] = table
        self._fd_alias(table, exec_id)
        return table

    @staticmethod
    def _fd_inherit(source: _FdTable, proc: Process) -> dict[int, tuple[_Socket, bool]]:
        """The descriptors a child first seen now got from ``source`` at its fork: the parent's
        as they are, and those the parent took off a descriptor after the child's clone began
        (its ``start_time``: a fork server's ``close(s)`` of its copy right after the fork,
        before the child's first hooked call). The first removal after the clone of each
        descriptor is what it held then; a socket the parent opened after the fork is given
        too (the doubt goes to a socket that stays open)."""
        fds = dict(source.fds)
        removed = source.removed
        if removed:
            started = _seconds(proc.start_time, 0.0)  # unknown: before every removal
            restored: set[int] = set()
            for when, fd, sock, cloexec in removed:
                if fd not in restored and _seconds(when, float("inf")) > started:
                    restored.add(fd)
                    fds[fd] = (sock, cloexec)
        return fds

    def _fd_parent(self, event: TraceEvent) -> _FdTable | None:
        """The table of the event's parent process: by its exec id (live, or kept past its
        exit); else, when the parent is a fork that did not exec (its binary is its own
        parent's) and that changed no descriptor we follow (it has no table), its parent's
        (a double fork); else the live table of the parent's pid (an exec id we missed)."""
        tables = self._fd_exec
        parent_id = event.process.parent_exec_id
        table = tables.get(parent_id) if parent_id else None
        if table is not None:
            return table
        parent = event.parent
        marks = self._fd_marks
        if parent is None:
            return _EVICTED if marks and parent_id in marks else None
        if parent.parent_exec_id:
            grand = tables.get(parent.parent_exec_id)
            if grand is not None and grand.binary == parent.binary:
                return grand
        if parent.pid is not None:
            table = self._fd_live.get((event.node_name, parent.pid))
            if table is not None:
                return table
        if marks and (
            parent_id in marks
            or parent.exec_id in marks
            or (event.node_name, parent.pid or 0) in marks
        ):
            return _EVICTED
        return None

    def _fd_none(self, event: TraceEvent) -> bool:
        """No table for the event's process, and none for ``_fd_parent`` to find, for sure
        (no marks; no table under its exec id or its parent's, its pid or its parent's, nor
        under its grandparent's exec id): ``_fd_lookup(event, create=False)`` would be None.
        False when unsure."""
        if self._fd_marks:
            return False
        proc = event.process
        pid = proc.pid
        if pid is None:
            return False
        fd_exec = self._fd_exec  # exec ids are never empty there (``_fd_alias``)
        fd_live = self._fd_live
        node = event.node_name
        if proc.exec_id in fd_exec or (node, pid) in fd_live or proc.parent_exec_id in fd_exec:
            return False
        parent = event.parent
        return parent is None or (
            parent.parent_exec_id not in fd_exec
            and (parent.pid is None or (node, parent.pid) not in fd_live)
        )

    def _fd_exec_event(self, event: TraceEvent) -> _FdTable | None:
        """The exec'ing process's table after the exec: its close-on-exec descriptors go."""
        table = self._fd_lookup(event, create=False)
        if table is None:
            return None
        fds = table.fds
        for fd in [fd for fd, (_, cloexec) in fds.items() if cloexec]:
            del fds[fd]
        table.binary = event.process.binary
        return table

    def _fd_exit(self, event: TraceEvent) -> None:
        """The process is gone: its table leaves the live ones, and is dropped unless it holds
        a socket (a child seen after its parent's exit still inherits it)."""
        proc = event.process
        if self._fd_marks and proc.pid is not None:  # a pid is reused only after an exit
            self._fd_marks.pop((event.node_name, proc.pid), None)
        table = self._fd_exec.get(proc.exec_id) if proc.exec_id else None
        if table is None and proc.pid is not None:
            table = self._fd_live.get((event.node_name, proc.pid))
        if table is None:
            return
        if self._fd_live.get(table.key) is table:
            del self._fd_live[table.key]
        table.live = False
        if not table.fds and not table.overflow:
            self._fd_drop(table)

    def _fd_alias(self, table: _FdTable, exec_id: str) -> None:
        if not exec_id or exec_id in table.exec_ids:
            return
        table.exec_ids.append(exec_id)
        self._fd_exec[exec_id] = table
        if len(table.exec_ids) > _EXEC_IDS_PER_TABLE:  # a process exec'ing in a loop
            old = table.exec_ids.pop(0)
            if self._fd_exec.get(old) is table:
                del self._fd_exec[old]

    def _fd_drop(self, table: _FdTable) -> None:
        self._fd_tables.pop(table, None)
        if self._fd_live.get(table.key) is table:
            del self._fd_live[table.key]
        for exec_id in table.exec_ids:
            if self._fd_exec.get(exec_id) is table:
                del self._fd_exec[exec_id]

    def _fd_evict(self) -> None:
        """Make room: drop an eighth of the tables, the least telling first (oldest first
        within each tier): exited without a socket on stdin, live without one, exited with
        one, live with one. Pushing out a live process with a socket on its stdin takes that
        many live processes with a socket on theirs (each a reverse shell of its own)."""
        batch = max(1, self._max_fd_processes // 8)
        tiers: tuple[list[_FdTable], ...] = ([], [], [], [])
        for table in self._fd_tables:
            tiers[2 * table.armed() + table.live].append(table)
        dropped = 0
        for tier, tables in enumerate(tiers):
            for table in tables:
                if dropped >= batch:
                    return
                if tier >= 2:
                    self.fd_evicted_armed += 1
                    self._fd_mark(table)
                self._fd_drop(table)
                dropped += 1

    def _fd_mark(self, table: _FdTable) -> None:
        """Remember that ``table``'s process had a network socket on its stdin (its table is
        being evicted): by its exec ids, and by its pid while it lives."""
        marks = self._fd_marks
        limit = 8 * self._max_fd_processes  # two keys a process: 4x the tables
        keys: list[tuple[str, int] | str] = list(table.exec_ids)
        if table.live:
            keys.append(table.key)
        for key in keys:
            _bounded_set(marks, key, None, limit)

    def _stdio_on_socket(self, event: TraceEvent) -> bool:
        """The exec'd program's stdin is a connected network socket, or its parent's is
        (``pty.spawn``: the parent relays the socket on its stdin to the shell's pty)."""
        table = self._exec_fds
        if table is not None and table.on_socket():
            return True
        parent = self._parent_fds if self._parent_of is event else self._fd_parent(event)
        return parent is not None and parent.on_socket()

    def _forget(self, proc: Process) -> None:
        if proc.pid is not None:
            self._pid_uid.pop(proc.pid, None)

    def _context(self, event: TraceEvent, entry: _Proc) -> SessionInfo | None:
        pod = event.process.pod
        if pod is not None:
            if pod.namespace not in self.trusted_namespaces:
                return None  # labels anyone may write there: tied to nobody, never a kill
            if pod.pod_labels:
                info = _session_from_labels(pod.pod_labels)
                if info is not None:
                    return info
        session: SessionInfo | None = entry.session
        return session

    def _ancestry(self, entry: _Proc, depth: int) -> list[str]:
        chain = [entry.binary]
        parent = entry.parent
        while parent and len(chain) < depth:
            found = self._procs.get(parent)
            if found is None:
                break
            chain.append(found.binary)
            parent = found.parent
        return chain

    def _ancestry_key(self, entry: _Proc, depth: int) -> tuple[str, ...]:
        """Basenames of the process and its ancestors (``depth`` at most), cached per process.

        The walk also caches the key of each ancestor it fully saw (the walk goes on up to
        ``2 * depth - 1`` processes for that), so the siblings of a process and their children
        find their parent's key at once instead of walking the same ancestors again; a key is
        what a walk from that process would have found at the time, kept as a process's own
        key is. A key cut short by an ancestor not in the table (its events come later, or the
        table dropped it) is *open*: it names that ancestor (``_Proc.above``) and is walked
        again once the ancestor is known, else it would stay short for good and every later
        child would be scored on the short ancestry. Bounded walk: a hostile export whose exec
        ids form a cycle cannot loop."""
        procs = self._procs
        key = entry.ancestry
        if key is not None and (not entry.above or entry.above not in procs):
            return key
        get = procs.get
        bases = self._bases
        binary = entry.binary
        base = bases.get(binary) or _base(bases, binary)
        parent = entry.parent
        if parent and depth >= 1:
            current = get(parent)
            if current is not None:
                tail = current.ancestry
                if tail is not None:
                    above = current.above
                    if not above:  # the common case
                        key = entry.ancestry = (base, *tail[: depth - 1])
                        return key
                    if above not in procs:  # still unknown: the key stays open
                        key = entry.ancestry = (base, *tail[: depth - 1])
                        entry.above = above if len(tail) < depth - 1 else ""
                        return key
        chain = [entry]
        names = [base]
        tail = None  # the key of the cached ancestor the walk met
        ended = False  # the walk met the top of the known ancestry (no parent, or unknown)
        gap = -1  # where in ``names`` the ancestor not in the table would be, if the walk met one
        above = ""  # ... and its exec id
        limit = 2 * depth - 1
        while True:
            if len(chain) >= limit:
                break
            current = get(parent) if parent else None
            if current is None:
                ended = True
                if parent:
                    gap, above = len(chain), parent
                break
            cached = current.ancestry
            if cached is not None:
                up = current.above
                if not up or up not in procs:
                    tail = cached
                    if up:
                        gap, above = len(chain) + len(cached), up
                    ended = True
                    break
                # an open key whose missing ancestor is known now: walked again (and cached)
            binary = current.binary
            chain.append(current)
            names.append(bases.get(binary) or _base(bases, binary))
            parent = current.parent
        if tail is not None:
            names.extend(tail[: depth - 1])
        last = len(chain) - 1
        for index in range(1, last + 1):
            if ended or index + depth - 1 <= last:
                ancestor = chain[index]
                ancestor.ancestry = tuple(names[index : index + depth])
                ancestor.above = above if 0 <= gap - index < depth else ""
        key = entry.ancestry = tuple(names[: max(1, depth)])
        entry.above = above if 0 <= gap < max(1, depth) else ""
        return key

    # --- matching -----------------------------------------------------------------------

    def _scoped(self, rule: CompiledRule, event: TraceEvent, entry: _Proc) -> bool:
        return rule.global_ or event.process.pod is not None or entry.session is not None

    def _match_exec(self, rules: RuleSet, event: TraceEvent, entry: _Proc) -> list[CompiledRule]:
        hits: list[CompiledRule] = []
        proc = event.process
        binary = proc.binary
        base = binary[binary.rfind("/") + 1 :]
        if base in rules.exec_by_binary or (
            rules.exec_path_prefixes and binary.startswith(rules.exec_path_prefixes)
        ):
            self._match_program(rules, event, entry, proc, hits)
        if _indirect(base):
            program = _indirect_program(proc)
            if program is not None:  # what the loader or the multi-call binary runs
                self._match_program(rules, event, entry, program, hits)
        if (
            rules.exec_stdio
            and self._fd_tables
            # every one needs a socket on stdin: none when neither this process nor its
            # parent has a table (``_fd_lookup`` just looked, ``_stdio_on_socket`` would again)
            and not (
                self._exec_fds is None and self._parent_of is event and self._parent_fds is None
            )
        ):
            for rule in rules.exec_stdio:
                if self._process_matches(rule, event) and self._scoped(rule, event, entry):
                    hits.append(rule)
        if rules.exec_not_in_image and self.image_files:
            for rule in rules.exec_not_in_image:
                if self._process_matches(rule, event) and self._scoped(rule, event, entry):
                    hits.append(rule)
        return hits

    def _match_program(
        self,
        rules: RuleSet,
        event: TraceEvent,
        entry: _Proc,
        proc: Process,
        hits: list[CompiledRule],
    ) -> None:
        """Add to ``hits`` the binary and path rules that ``proc`` (the exec'd process, or the
        program a loader or busybox runs for it) matches."""
        binary = proc.binary
        indirect = proc is not event.process
        candidates = rules.exec_by_binary.get(binary[binary.rfind("/") + 1 :])
        if candidates:
            for rule in candidates:
                if indirect and (rule.not_in_image or rule in hits):
                    continue
                if self._process_matches(rule, event, proc) and self._scoped(rule, event, entry):
                    hits.append(rule)
        if rules.exec_path_prefixes and binary.startswith(rules.exec_path_prefixes):
            for rule in rules.exec_by_path:
                if indirect and (rule.not_in_image or rule in hits):
                    continue
                pattern = rule.path
                if (
                    pattern is not None
                    and pattern.match(binary)
                    and self._process_matches(rule, event, proc)
                    and self._scoped(rule, event, entry)
                ):
                    hits.append(rule)

    def _process_matches(
        self, rule: CompiledRule, event: TraceEvent, proc: Process | None = None
    ) -> bool:
        proc = proc or event.process
        if rule.path is not None and rule.binaries is not None and not rule.path.match(proc.binary):
            return False
        if rule.arg_globs and not any(_args_match(rule, argv) for argv in _argvs(proc.arguments)):
            return False
        if rule.parents is not None:
            parent = event.parent
            if parent is None or parent.binary.rpartition("/")[2] not in rule.parents:
                return False
        if rule.capabilities:
            caps = proc.cap_effective
            if caps is None or not rule.capabilities.issubset(caps):
                return False
        if rule.stdio_socket and not self._stdio_on_socket(event):
            return False
        if rule.not_in_image:
            pod = proc.pod
            files = self.image_files.get(pod.image) if pod is not None else None
            if files is None or proc.binary in files:
                return False
        return True

    def _match_kprobe(self, rules: RuleSet, event: TraceEvent, entry: _Proc) -> list[CompiledRule]:
        hits: list[CompiledRule] = []
        function = event.function
        bindings = rules.syscall_rules.get(function)
        if bindings:
            binary = event.process.binary
            base = binary[binary.rfind("/") + 1 :]
            args = event.args
            for binding in bindings:
                rule = binding.rule
                if rule.syscall_binaries is not None and base not in rule.syscall_binaries:
                    continue
                for cond in binding.args:
                    if not _arg_matches(cond, args):
                        break
                else:
                    if self._scoped(rule, event, entry):
                        hits.append(rule)
        file_rules = rules.file_rules.get(function)
        if file_rules:
            for arg in event.args:
                if arg.kind not in _PATH_KINDS:
                    continue
                path = arg.value.path
                for rule in file_rules:
                    pattern = rule.file_path
                    if (
                        pattern is not None
                        and path.startswith(rule.file_prefixes)
                        and path.endswith(rule.file_suffixes)
                        and pattern.match(path)
                        and (not rule.foreign_proc or self._foreign(path, event.process))
                        and self._scoped(rule, event, entry)
                        and rule not in hits
                    ):
                        hits.append(rule)
        return hits

    def _foreign(self, path: str, proc: Process) -> bool:
        """``/proc/<pid>/...`` of a process of another user (or whose user is unknown)."""
        parts = path.split("/", 3)
        if len(parts) < 3 or not parts[2].isdigit():
            return False
        pid = int(parts[2])
        if pid == proc.pid:
            return False
        owner = self._pid_uid.get(pid)
        return owner is None or owner != proc.uid

    # --- alerts, attack paths, anomalies --------------------------------------------------

    def _on_hits(
        self, rules: RuleSet, hits: list[CompiledRule], event: TraceEvent, entry: _Proc
    ) -> list[Alert] | None:
        session = self._context(event, entry)
        alerts: list[Alert] = []
        ancestry: list[str] | None = None
        for rule in hits:
            if rule.report:
                ancestry = ancestry or self._ancestry(entry, 16)
                alerts.append(
                    Alert(
                        kind="rule",
                        rule_id=rule.id,
                        name=rule.name,
                        confidence=rule.confidence,
                        event=event,
                        session=session,
                        ancestry=ancestry,
                    )
                )
            for path in rules.paths_by_rule.get(rule.id, ()):
                scored = self._advance(path, rule, event, session)
                if scored is not None:
                    ancestry = ancestry or self._ancestry(entry, 16)
                    alerts.append(
                        Alert(
                            kind="attack_path",
                            rule_id=path.id,
                            name=path.name,
                            confidence=scored,
                            event=event,
                            session=session,
                            ancestry=ancestry,
                            rules=path.rules,
                        )
                    )
        return alerts

    def _scope(self, event: TraceEvent, session: SessionInfo | None) -> str:
        if session is not None:
            if session.session_id:
                return f"session:{session.session_id}"
            if session.workspace:
                return f"workspace:{session.workspace}"
        pod = event.process.pod
        if pod is not None:
            return f"pod:{pod.namespace}/{pod.name}"
        return f"node:{event.node_name}"

    def _advance(
        self, path: Any, rule: CompiledRule, event: TraceEvent, session: SessionInfo | None
    ) -> float | None:
        key = (self._scope(event, session), path.id)
        seen = self._paths.setdefault(key, {})
        now = event.timestamp()
        seen[rule.id] = (now, rule.confidence)
        for rule_id, (at, _) in list(seen.items()):
            if now - at > path.window:
                del seen[rule_id]
        if len(seen) < len(path.rules):
            return None
        if path.ordered:
            times = [seen[r][0] for r in path.rules]
            if times != sorted(times):
                return None
        product = 1.0
        for _, confidence in seen.values():
            product *= 1.0 - confidence
        del self._paths[key]
        return 1.0 - product

    def _score(self, event: TraceEvent, entry: _Proc) -> Alert | None:
        pod = event.process.pod
        if pod is not None:
            if pod.namespace not in self.trusted_namespaces:
                return None  # an untrusted Pod neither teaches nor is scored against a blueprint
            blueprint = pod.pod_labels.get(LABEL_BLUEPRINT)
        else:
            blueprint = None
        session = None
        if blueprint is None:
            session = entry.session
            blueprint = session.blueprint if session is not None else None
            if blueprint is None:
                return None
        config = self.anomaly
        key = entry.ancestry
        if key is None or entry.above:
            key = self._ancestry_key(entry, config.depth)
        counts = self._ancestries.get(blueprint)
        if counts is None:
            counts = self._ancestries[blueprint] = {}
            self._learned[blueprint] = 0
        count = counts.get(key, 0)
        if count or len(counts) < config.max_ancestries:
            counts[key] = count + 1
        seen = self._learned[blueprint]
        if seen < config.learning_events:
            self._learned[blueprint] = seen + 1
            return None
        if count > _rare_up_to(config.threshold):
            return None  # seen too often to score the threshold (rarity decreases with count)
        score = rarity(count)
        if score < config.threshold:
            return None
        return Alert(
            kind="anomaly",
            rule_id="rare-ancestry",
            name=f"Rare process ancestry for blueprint {blueprint}: {'>'.join(reversed(key))}",
            confidence=score,
            event=event,
            session=session or self._context(event, entry),
            ancestry=self._ancestry(entry, 16),
        )


#: Programs that run another one named in their arguments: the dynamic loaders
#: (``ld.so /usr/bin/nsenter -t 1``), known by the shape of their names, which Tetragon reports
#: resolved (Debian 11's ``/lib64/ld-linux-x86-64.so.2`` is ``ld-2.31.so``; musl's
#: ``ld-musl-<arch>.so.1``), and the multi-call binaries (``busybox nc -e``).
_LOADER = re.compile(r"ld(?:-[\w.+-]+)?\.so(?:\.\d+)*")
_MULTICALL = frozenset({"busybox", "toybox"})


def _indirect(base: str) -> bool:
    """Whether the program ``base`` (a basename) runs another one named in its arguments."""
    return base in _MULTICALL or (base.startswith("ld") and _LOADER.fullmatch(base) is not None)


#: ld.so options followed by a value, and those that run nothing.
_LOADER_VALUE_OPTIONS = frozenset(
    {
        "--library-path",
        "--preload",
        "--audit",
        "--argv0",
        "--inhibit-rpath",
        "--glibc-hwcaps-prepend",
        "--glibc-hwcaps-mask",
    }
)
_LOADER_NO_RUN = frozenset(
    {"--list", "--verify", "--help", "--version", "--list-tunables", "--list-diagnostics"}
)


def _indirect_program(proc: Process) -> Process | None:
    """The program a loader or a multi-call binary was asked to run, as a process of its own
    (binary and arguments), or None when it runs none."""
    argv = proc.arguments.split()
    if proc.basename in _MULTICALL:
        if not argv or argv[0].startswith("-") or "/" in argv[0]:
            return None
        return msgspec.structs.replace(
            proc, binary=resolved_binary(argv[0]), arguments=" ".join(argv[1:])
        )
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _LOADER_VALUE_OPTIONS:
            index += 2
        elif arg in _LOADER_NO_RUN:
            return None
        elif arg.startswith("--"):  # --inhibit-cache and the like: no value
            index += 1
        else:
            rest = " ".join(argv[index + 1 :])
            return msgspec.structs.replace(proc, binary=resolved_binary(arg), arguments=rest)
    return None


_QUOTED = re.compile(r'"([^"]*)"|(\S+)')


def _argvs(arguments: str) -> tuple[list[str], ...]:
    """The argument vectors ``arguments`` may stand for: Tetragon joins them with spaces and
    puts one that holds a space in double quotes (``"-at 1" sh``). Both the plain split and the
    quote-aware one are tried, so an argument holding a lone quote cannot hide the next ones."""
    plain = arguments.split()
    if '"' not in arguments:
        return (plain,)
    return plain, [quoted or bare for quoted, bare in _QUOTED.findall(arguments)]


def _args_match(rule: CompiledRule, argv: list[str]) -> bool:
    for index, pattern in rule.arg_globs:
        if index is None:
            if not any(pattern.match(arg) for arg in argv):
                return False
        elif index >= len(argv) or not pattern.match(argv[index]):
            return False
    return True


#: Basenames kept per binary path for the ancestries (the same string each time: hashed once).
_MAX_BASES = 4096


def _base(bases: dict[str, str], binary: str) -> str:
    base = binary.rpartition("/")[2]
    if len(bases) < _MAX_BASES:
        bases[binary] = base
    return base


def _bounded_set(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if key not in table and len(table) >= limit:  # drop the oldest eighth (insertion order)
        for old in list(table)[: max(1, limit // 8)]:
            del table[old]
    table[key] = value


#: The argument values a rule's ``values`` may hold (ints and strings; bytes never equal one).
_HASHABLE = frozenset({int, str, bytes})


def _arg_matches(cond: CompiledArg, args: Sequence[Any]) -> bool:
    if cond.position >= len(args):
        return False
    value = args[cond.position].value
    if cond.values is not None and (
        # an argument of another kind there (another policy's event on the call, a buffer
        # Tetragon truncated): a struct, a dict or a list, unhashable, never one of the values
        type(value) not in _HASHABLE or value not in cond.values
    ):
        return False
    if cond.mask is not None and not (isinstance(value, int) and value & cond.mask):
        return False
    if cond.path is not None:
        text = value.path if isinstance(value, FileArg) else value
        if not isinstance(text, str) or not cond.path.match(text):
            return False
    if cond.dport is not None and not (isinstance(value, Sock) and value.dport in cond.dport):
        return False
    if cond.daddr is not None:
        if not isinstance(value, Sock):
            return False
        exact = cond.daddr_exact
        if exact is not None and ":" not in value.daddr:  # IPv4 text is canonical as written
            return value.daddr in exact
        try:
            address = ipaddress.ip_address(value.daddr)
        except ValueError:
            return False
        if not any(address in net for net in cond.daddr):
            return False
    return True
