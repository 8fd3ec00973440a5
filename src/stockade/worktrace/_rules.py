"""Detection rules and attack paths: YAML in k8shell's shape, validated with ``file:line``.

A rules file holds ``rules`` and ``attack_paths``::

    rules:
      - id: nsenter-target           # unique; attack paths and alerts name it
        name: Namespace entry into another process
        confidence: 0.9              # 0..1: how strongly a match signals malicious intent
        report: true                 # alert on a match (false: only feeds attack paths)
        global: false                # also events with no Pod and no local session
        process:                     # exactly one of process / file / syscall
          binary: [nsenter]          # exact basenames, and/or
          path: ["/tmp/*"]           # globs on the binary's full path (``*`` spans ``/``)
          args: [{values: ["-t", "--target*"]}]   # index: N for a position; none: any
          parent: [bash]             # parent's basename
          capabilities: [CAP_SYS_ADMIN]           # all in the effective set
          not_in_image: false        # true: binary absent from the image's SBOM file list
          stdio_socket: false        # true: its (or its parent's) stdin is a connected
                                     # network socket, by the process's descriptor table
                                     # (alone, without binary or path: any binary)
        file:                        # paths opened (kprobe ``fd_install`` by default)
          path: ["*/release_agent"]
          foreign_proc: false        # /proc/<pid>/... of a process of another user
        syscall:                     # kernel functions (``sys_*`` are syscalls)
          call: [sys_ptrace]
          binary: [bash]             # optional: only these processes
          args:                      # index in the function's prototype and Tetragon's type
            - {index: 0, type: int, values: [16, 16902]}
            - {index: 0, type: sock, dport: [443], daddr: ["10.96.0.1/32"]}

    attack_paths:
      - id: escape-chain
        name: Container escape chain
        time_window: 10m
        rules: [a, b, c]             # every rule seen for one workspace within the window

A directory is read as every visible ``*.yaml``/``*.yml`` in it, sorted; ids are unique across
files. :class:`RuleSet` is the compiled, immutable form the engine matches with;
:class:`RuleSource` re-reads the files when they change (hot reload) and keeps the rule set in
service when the new one is invalid.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stockade.core.durations import parse_duration
from stockade.core.errors import InvalidInput
from stockade.core.logging import get_logger

from ._yaml import Located, load_located

__all__ = [
    "DEFAULT_RULES_DIR",
    "AttackPath",
    "CompiledRule",
    "RuleSet",
    "RuleSource",
    "load_rules",
    "parse_rules",
]

_log = get_logger("stockade.worktrace")

#: The default rule set shipped with Stockade.
DEFAULT_RULES_DIR = Path(__file__).parent / "rules"

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

INT_TYPES = frozenset(
    [
        "int",
        "sint8",
        "int8",
        "uint8",
        "sint16",
        "int16",
        "uint16",
        "uint32",
        "sint32",
        "int32",
        "ulong",
        "uint64",
        "size_t",
        "long",
        "sint64",
        "int64",
        "syscall64",
    ]
)
#: Tetragon's argument types (``spec.kprobes[].args[].type`` of the TracingPolicy schema).
ARG_TYPES = INT_TYPES | frozenset(
    [
        "auto",
        "char_buf",
        "char_iovec",
        "skb",
        "sock",
        "sockaddr",
        "socket",
        "sockaddr_un",
        "string",
        "fd",
        "file",
        "filename",
        "path",
        "nop",
        "bpf_attr",
        "perf_event",
        "bpf_map",
        "user_namespace",
        "capability",
        "kiocb",
        "iov_iter",
        "cred",
        "const_buf",
        "load_info",
        "module",
        "kernel_cap_t",
        "cap_inheritable",
        "cap_permitted",
        "cap_effective",
        "linux_binprm",
        "data_loc",
        "net_device",
        "bpf_cmd",
        "dentry",
        "bpf_prog",
    ]
)
STRING_TYPES = frozenset({"string", "char_buf", "filename"})
PATH_TYPES = frozenset({"file", "path", "fd", "linux_binprm", "dentry"})
SOCK_TYPES = frozenset({"sock", "skb", "sockaddr", "socket"})


#: The kprobes a ``stdio_socket`` rule needs to keep each process's descriptor table (see the
#: engine's ``_FdTable``): per call the arguments it reads and whether it asks for the return
#: value (``return: true``, ``returnArg`` int: the new descriptor, or the call's error). Socket
#: creation (``socket(family, type)`` -> fd, ``SOCK_CLOEXEC`` in ``type``); its connect (fd ->
#: 0 or ``-EINPROGRESS``); the copies (``dup(old)`` -> new, ``dup2(old, new)``, ``dup3(old, new,
#: flags)``, ``fcntl(fd, F_DUPFD[_CLOEXEC], min)`` -> new); the close-on-exec flag
#: (``fcntl(fd, F_SETFD, flags)``, ``ioctl(fd, FIOCLEX/FIONCLEX)``, ``close_range(.., CLOEXEC)``)
#: and the closes (``close(fd)``, ``close_range(first, last, flags)``).
STDIO_HOOKS: dict[str, tuple[list[tuple[int, str]], bool]] = {
    "sys_socket": ([(0, "int"), (1, "int")], True),
    "sys_connect": ([(0, "int")], True),
    "sys_dup": ([(0, "int")], True),
    "sys_dup2": ([(0, "int"), (1, "int")], True),
    "sys_dup3": ([(0, "int"), (1, "int"), (2, "int")], True),
    "sys_fcntl": ([(0, "int"), (1, "int"), (2, "int")], True),
    "sys_ioctl": ([(0, "int"), (1, "int")], False),
    "sys_close": ([(0, "int")], False),
    "sys_close_range": ([(0, "int"), (1, "int"), (2, "int")], True),
}
#: ``fcntl`` commands and ``ioctl`` requests the table needs (the policy's selectors on them):
#: F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC; FIONCLEX, FIOCLEX.
F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 2, 1030
FIONCLEX, FIOCLEX = 0x5450, 0x5451
STDIO_CMD_SELECTORS: dict[str, tuple[int, tuple[int, ...]]] = {
    "sys_fcntl": (1, (F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC)),
    "sys_ioctl": (1, (FIONCLEX, FIOCLEX)),
}
#: Calls a kernel may lack: arm64 has no ``dup2``, ``close_range`` is Linux 5.9+.
STDIO_OPTIONAL = frozenset({"sys_dup2", "sys_close_range"})
#: The descriptors that make a replaced stdio: stdin (a shell reading its commands from the
#: connection). Not stdout or stderr alone: connected programs send those to logs.
STDIO_FDS = frozenset({0})


#: File hooks: the argument list the TracingPolicy asks for, and the position of the file.
FILE_HOOKS: dict[str, tuple[list[tuple[int, str]], int]] = {
    "fd_install": ([(0, "int"), (1, "file")], 1),
    "security_file_open": ([(0, "file")], 0),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Strings = Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1)]


class ProcessArgSpec(_Model):
    index: int | None = Field(default=None, ge=0, le=255)
    """Position of the argument (0 = first after the binary); none: any argument."""
    values: Strings
    """Globs; the argument matches when it matches any of them."""


class ProcessSpec(_Model):
    binary: list[str] | None = None
    path: list[str] | None = None
    args: list[ProcessArgSpec] = []
    parent: list[str] | None = None
    capabilities: list[str] = []
    not_in_image: bool = False
    stdio_socket: bool = False
    """The process's stdin, or its parent's, is a connected network socket by the descriptor
    tables the engine keeps: the shape of a reverse shell (``socket(); connect(); dup2(s,
    0..2); exec sh``, or the dup2 in a child that inherited the socket)."""

    @model_validator(mode="after")
    def _something(self) -> ProcessSpec:
        if not (self.binary or self.path or self.not_in_image or self.stdio_socket):
            raise ValueError("needs binary, path, not_in_image or stdio_socket")
        return self


class FileSpec(_Model):
    path: Strings
    foreign_proc: bool = False
    hook: Literal["fd_install", "security_file_open"] = "fd_install"
    """The kernel function whose file argument is matched (see ``FILE_HOOKS``)."""


class SyscallArgSpec(_Model):
    index: int = Field(ge=0, le=15)
    type: str
    values: list[int | str] | None = None
    mask: int | None = Field(default=None, ge=1)
    path: list[str] | None = None
    dport: list[Annotated[int, Field(ge=0, le=65535)]] | None = None
    daddr: list[str] | None = None

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in ARG_TYPES:
            raise ValueError(f"{value!r} is not a Tetragon argument type (int, sock, file, ...)")
        return value

    @field_validator("daddr")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or CIDR") from None
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> SyscallArgSpec:
        if (self.values is not None or self.mask is not None) and self.type not in (
            INT_TYPES | STRING_TYPES
        ):
            raise ValueError(f"values/mask need an int or string type, not {self.type}")
        if self.mask is not None and self.type not in INT_TYPES:
            raise ValueError("mask needs an int type")
        if self.path is not None and self.type not in PATH_TYPES | STRING_TYPES:
            raise ValueError(f"path needs a file, path or string type, not {self.type}")
        if (self.dport is not None or self.daddr is not None) and self.type not in SOCK_TYPES:
            raise ValueError(f"dport/daddr need a sock type, not {self.type}")
        if self.values is not None and self.type in INT_TYPES:
            for item in self.values:
                if not isinstance(item, int):
                    raise ValueError(f"values of an int argument must be integers, got {item!r}")
        return self


class SyscallSpec(_Model):
    call: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]],
        Field(min_length=1),
    ]
    args: list[SyscallArgSpec] = []
    binary: list[str] | None = None
    """Only events of processes with one of these basenames (none: any process)."""


class RuleSpec(_Model):
    id: str = Field(pattern=_ID)
    name: str = Field(default="", max_length=256)
    description: str = Field(default="", max_length=4096)
    confidence: float = Field(ge=0, le=1)
    report: bool
    global_: bool = Field(alias="global")
    tags: list[str] = []
    process: ProcessSpec | None = None
    file: FileSpec | None = None
    syscall: SyscallSpec | None = None

    @model_validator(mode="after")
    def _one_pattern(self) -> RuleSpec:
        given = [k for k in ("process", "file", "syscall") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "needs exactly one of process, file, syscall"
                + (f" (has {', '.join(given)})" if given else "")
            )
        return self


def _duration(value: Any) -> timedelta:
    try:
        return parse_duration(value, field="time_window")
    except InvalidInput as exc:
        raise ValueError(exc.problem) from None


class AttackPathSpec(_Model):
    id: str = Field(pattern=_ID)
    name: str = Field(default="", max_length=256)
    time_window: Annotated[timedelta, BeforeValidator(_duration)]
    rules: Annotated[list[str], Field(min_length=2)]
    ordered: bool = False


class RulesFile(_Model):
    rules: list[RuleSpec] = []
    attack_paths: list[AttackPathSpec] = []


# --- the compiled form --------------------------------------------------------------------


def _glob(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _literal_prefix(pattern: str) -> str:
    cut = len(pattern)
    for special in "*?[":
        pos = pattern.find(special)
        if pos != -1:
            cut = min(cut, pos)
    return pattern[:cut]


def literal_suffix(pattern: str) -> str:
    """The literal tail of a glob after its last wildcard."""
    cut = -1
    for special in "*?]":
        cut = max(cut, pattern.rfind(special))
    return pattern[cut + 1 :]


class CompiledArg:
    """One syscall argument condition, at ``position`` in the event's argument list."""

    __slots__ = (
        "daddr",
        "daddr_exact",
        "dport",
        "index",
        "mask",
        "path",
        "position",
        "spec",
        "type",
        "values",
    )

    def __init__(self, spec: SyscallArgSpec, position: int) -> None:
        self.spec = spec
        self.index = spec.index
        self.type = spec.type
        self.position = position
        self.values = None if spec.values is None else frozenset(spec.values)
        self.mask = spec.mask
        self.path = None if spec.path is None else _glob(spec.path)
        self.dport = None if spec.dport is None else frozenset(spec.dport)
        self.daddr = (
            None
            if spec.daddr is None
            else tuple(ipaddress.ip_network(d, strict=False) for d in spec.daddr)
        )
        #: When every network is one host: their canonical texts, matched without parsing.
        self.daddr_exact: frozenset[str] | None = None
        if self.daddr is not None and all(n.prefixlen == n.max_prefixlen for n in self.daddr):
            self.daddr_exact = frozenset(str(n.network_address) for n in self.daddr)


class CompiledRule:
    """A rule ready to match: globs compiled, sets built. ``kind`` is process/file/syscall."""

    __slots__ = (
        "arg_globs",
        "args",
        "binaries",
        "capabilities",
        "confidence",
        "file_hook",
        "file_path",
        "file_prefixes",
        "file_suffixes",
        "foreign_proc",
        "global_",
        "id",
        "kind",
        "name",
        "not_in_image",
        "parents",
        "path",
        "path_prefixes",
        "report",
        "spec",
        "stdio_socket",
        "syscall_binaries",
        "where",
    )

    def __init__(self, spec: RuleSpec, where: str) -> None:
        self.spec = spec
        self.where = where
        self.id = spec.id
        self.name = spec.name or spec.id
        self.confidence = spec.confidence
        self.report = spec.report
        self.global_ = spec.global_
        self.binaries: frozenset[str] | None = None
        self.path: re.Pattern[str] | None = None
        self.path_prefixes: tuple[str, ...] = ()
        self.arg_globs: tuple[tuple[int | None, re.Pattern[str]], ...] = ()
        self.parents: frozenset[str] | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.not_in_image = False
        self.stdio_socket = False
        self.file_path: re.Pattern[str] | None = None
        self.file_prefixes: tuple[str, ...] = ()
        #: The literal tail of each path pattern: a path ends with one of them to match.
        self.file_suffixes: tuple[str, ...] = ()
        self.file_hook = ""
        self.foreign_proc = False
        self.args: tuple[CompiledArg, ...] = ()
        self.syscall_binaries: frozenset[str] | None = None
        if spec.process is not None:
            self.kind = "process"
            proc = spec.process
            self.binaries = None if proc.binary is None else frozenset(proc.binary)
            if proc.path:
                self.path = _glob(proc.path)
                self.path_prefixes = tuple(_literal_prefix(p) for p in proc.path)
            self.arg_globs = tuple((a.index, _glob(a.values)) for a in proc.args)
            self.parents = None if proc.parent is None else frozenset(proc.parent)
            self.capabilities = frozenset(proc.capabilities)
            self.not_in_image = proc.not_in_image
            self.stdio_socket = proc.stdio_socket
        elif spec.file is not None:
            self.kind = "file"
            self.file_path = _glob(spec.file.path)
            self.file_prefixes = tuple(_literal_prefix(p) for p in spec.file.path)
            self.file_suffixes = tuple(literal_suffix(p) for p in spec.file.path)
            self.file_hook = spec.file.hook
            self.foreign_proc = spec.file.foreign_proc
        else:
            self.kind = "syscall"
            binaries = spec.syscall.binary if spec.syscall is not None else None
            self.syscall_binaries = None if binaries is None else frozenset(binaries)

    def __repr__(self) -> str:
        return f"<Rule {self.id} {self.kind}>"


class AttackPath:
    """An attack path: every rule of ``rules`` matched for one scope within ``window`` seconds."""

    __slots__ = ("id", "name", "ordered", "rules", "window")

    def __init__(self, spec: AttackPathSpec) -> None:
        self.id = spec.id
        self.name = spec.name or spec.id
        self.window = spec.time_window.total_seconds()
        self.rules = tuple(spec.rules)
        self.ordered = spec.ordered


class RuleSet:
    """Compiled rules and attack paths, indexed for the engine. Immutable once built.

    ``syscall_args[call]`` lists the argument specs (sorted by index) that the generated
    TracingPolicy asks Tetragon for; an event's argument list follows that order.
    """

    def __init__(
        self, rules: Sequence[CompiledRule], paths: Sequence[AttackPath], revision: str
    ) -> None:
        self.rules = tuple(rules)
        self.paths = tuple(paths)
        self.revision = revision
        self.by_id = {r.id: r for r in self.rules}
        self.exec_by_binary: dict[str, list[CompiledRule]] = {}
        self.exec_by_path: list[CompiledRule] = []
        self.exec_path_prefixes: tuple[str, ...] = ()
        self.exec_not_in_image: list[CompiledRule] = []
        #: Process rules on ``stdio_socket`` alone: any binary run on a socket's stdin.
        self.exec_stdio: list[CompiledRule] = []
        self.file_rules: dict[str, list[CompiledRule]] = {}
        self.syscall_rules: dict[str, list[SyscallBinding]] = {}
        self.syscall_args: dict[str, list[SyscallArgSpec]] = {}
        self.paths_by_rule: dict[str, list[AttackPath]] = {}
        #: ``stdio_socket`` rules in the set; when any: each of their kprobes and the positions,
        #: in its events' arguments, of the arguments :data:`STDIO_HOOKS` names for it.
        self.stdio_rules = tuple(r for r in self.rules if r.stdio_socket)
        self.stdio_calls: dict[str, tuple[int, ...]] = {}
        prefixes: list[str] = []
        for rule in self.rules:
            if rule.kind == "process":
                if rule.binaries is not None:
                    for name in rule.binaries:
                        self.exec_by_binary.setdefault(name, []).append(rule)
                elif rule.path is not None:
                    self.exec_by_path.append(rule)
                    prefixes.extend(rule.path_prefixes)
                elif rule.not_in_image:
                    self.exec_not_in_image.append(rule)
                else:
                    self.exec_stdio.append(rule)
            elif rule.kind == "file":
                self.file_rules.setdefault(rule.file_hook, []).append(rule)
        self.exec_path_prefixes = tuple(sorted(set(prefixes)))
        self._compile_syscalls()
        for path in self.paths:
            for rule_id in path.rules:
                self.paths_by_rule.setdefault(rule_id, []).append(path)

    def _compile_syscalls(self) -> None:
        merged: dict[str, dict[int, SyscallArgSpec]] = {}
        needs: list[tuple[CompiledRule, str, SyscallArgSpec]] = []
        for rule in self.rules:
            if rule.spec.syscall is None:
                continue
            for call in rule.spec.syscall.call:
                merged.setdefault(call, {})
                needs.extend((rule, call, arg) for arg in rule.spec.syscall.args)
        if self.stdio_rules:
            for call, (args, _) in STDIO_HOOKS.items():
                merged.setdefault(call, {})
                needs.extend(
                    (self.stdio_rules[0], call, SyscallArgSpec(index=i, type=t)) for i, t in args
                )
        for rule, call, arg in needs:
            slots = merged[call]
            known = slots.get(arg.index)
            if known is not None and known.type != arg.type:
                raise InvalidInput(
                    rule.where,
                    f"rule {rule.id}: argument {arg.index} of {call} is {arg.type} here "
                    f"but {known.type} in another rule",
                )
            slots.setdefault(arg.index, arg)
        for call, slots in merged.items():
            ordered = [slots[i] for i in sorted(slots)]
            self.syscall_args[call] = ordered
        if self.stdio_rules:
            for call, (args, _) in STDIO_HOOKS.items():
                indexes = [a.index for a in self.syscall_args[call]]
                self.stdio_calls[call] = tuple(indexes.index(i) for i, _ in args)
        for rule in self.rules:
            if rule.spec.syscall is None:
                continue
            for call in rule.spec.syscall.call:
                positions = {a.index: n for n, a in enumerate(self.syscall_args[call])}
                compiled = tuple(CompiledArg(a, positions[a.index]) for a in rule.spec.syscall.args)
                self.syscall_rules.setdefault(call, []).append(SyscallBinding(rule, compiled))

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def file_hooks(self) -> list[str]:
        return sorted(self.file_rules)


class SyscallBinding:
    """A syscall rule bound to one call, with argument positions for that call's events."""

    __slots__ = ("args", "rule")

    def __init__(self, rule: CompiledRule, args: tuple[CompiledArg, ...]) -> None:
        self.rule = rule
        self.args = args


# --- loading --------------------------------------------------------------------------------


def _validation_error(exc: ValidationError, doc: Located) -> InvalidInput:
    first = exc.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = first["msg"].removeprefix("Value error, ")
    return InvalidInput(doc.where(loc), f"{key or 'document'}: {message}")


def parse_rules(
    text: str, source: str
) -> tuple[list[CompiledRule], list[tuple[AttackPathSpec, str]]]:
    """Validate one rules file's text; errors are :class:`InvalidInput` at ``source:line``.

    Returns the compiled rules and each attack path with its ``file:line``.
    """
    doc = load_located(text, source)
    if doc.value is None:
        return [], []
    if not isinstance(doc.value, dict):
        raise InvalidInput(f"{source}:1", "a rules file is a mapping with rules and attack_paths")
    try:
        parsed = RulesFile.model_validate(doc.value)
    except ValidationError as exc:
        raise _validation_error(exc, doc) from None
    rules = [CompiledRule(spec, doc.where(("rules", i))) for i, spec in enumerate(parsed.rules)]
    paths = [(p, doc.where(("attack_paths", i))) for i, p in enumerate(parsed.attack_paths)]
    return rules, paths


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InvalidInput(str(root), "no such rules file or directory")
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".") and p.is_file()
    )


def _read(paths: Sequence[Path]) -> tuple[list[tuple[str, str]], str]:
    digest = hashlib.sha256()
    texts = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(str(path), f"cannot read: {exc}") from None
        digest.update(str(path).encode() + b"\0" + text.encode() + b"\0")
        texts.append((str(path), text))
    return texts, digest.hexdigest()


def build_ruleset(texts: Sequence[tuple[str, str]], revision: str) -> RuleSet:
    rules: list[CompiledRule] = []
    paths: list[tuple[AttackPathSpec, str]] = []
    for source, text in texts:
        more_rules, more_paths = parse_rules(text, source)
        rules.extend(more_rules)
        paths.extend(more_paths)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen:
            raise InvalidInput(rule.where, f"rule id {rule.id} already defined at {seen[rule.id]}")
        seen[rule.id] = rule.where
    path_ids: dict[str, str] = {}
    for path, where in paths:
        if path.id in path_ids or path.id in seen:
            raise InvalidInput(where, f"attack path id {path.id} is already used")
        path_ids[path.id] = where
        for rule_id in path.rules:
            if rule_id not in seen:
                raise InvalidInput(where, f"attack path {path.id}: no rule {rule_id}")
        if len(set(path.rules)) != len(path.rules):
            raise InvalidInput(where, f"attack path {path.id}: a rule is listed twice")
    return RuleSet(rules, [AttackPath(p) for p, _ in paths], revision[:12])


def load_rules(*roots: Path) -> RuleSet:
    """Load and compile rules from files or directories (default: the shipped rule set).

    Raises :class:`InvalidInput` naming ``file:line`` and the key of the first problem.
    """
    paths: list[Path] = []
    for root in roots or (DEFAULT_RULES_DIR,):
        paths.extend(_files(root))
    texts, revision = _read(paths)
    return build_ruleset(texts, revision)


class RuleSource:
    """The rule set in service, re-read from ``roots`` by :meth:`reload` when files change.

    A rule set that fails to load keeps the one in service; the failure is logged once per
    broken revision with its ``file:line`` (as the authz bundle reload does).
    """

    def __init__(self, *roots: Path) -> None:
        self.roots = roots or (DEFAULT_RULES_DIR,)
        self._lock = threading.Lock()
        self.current = load_rules(*self.roots)
        self._digest = self._fingerprint()
        self._failed = ""
        self.last_error: str = ""

    def _fingerprint(self) -> str:
        paths: list[Path] = []
        for root in self.roots:
            paths.extend(_files(root))
        return _read(paths)[1]

    def reload(self) -> bool:
        """Swap in the rules on disk if they changed and are valid; True when swapped."""
        with self._lock:
            try:
                digest = self._fingerprint()
            except InvalidInput as exc:
                self._reject("unreadable", str(exc))
                return False
            if digest == self._digest or digest == self._failed:
                return False
            try:
                ruleset = load_rules(*self.roots)
            except InvalidInput as exc:
                self._reject(digest, str(exc))
                return False
            if ruleset.revision != digest[:12]:
                return False  # changed between the reads; the next poll sees it settled
            self.current = ruleset
            self._digest = digest
            self._failed = ""
            self.last_error = ""
        _log.info("worktrace.rules_reloaded", revision=ruleset.revision, rules=len(ruleset))
        return True

    def _reject(self, digest: str, error: str) -> None:
        self.last_error = error
        if digest == self._failed:
            return
        self._failed = digest
        _log.error("worktrace.rules_reload_failed", error=error, keeping=self.current.revision)
