"""TracingPolicy generation: exactly the kprobes the loaded rules need, and a validator.

:func:`tracing_policies` turns a :class:`RuleSet` into Tetragon ``TracingPolicy`` documents:

- process rules need no kprobe (Tetragon always emits ``process_exec``);
- each syscall rule's calls become kprobes (``sys_*`` with ``syscall: true``) whose ``args`` are
  the union of what the rules read (sorted by index, so the event's argument list has the order
  the engine expects), with one selector per rule built from its conditions (``Equal``,
  ``Mask``, ``DPort``, ``DAddr``, ``Prefix``/``Postfix`` of the globs' literal parts). A rule with
  no condition, or more than Tetragon's 5 selectors, drops the selectors: Tetragon then emits
  every call and the engine filters;
- file rules become their hook (``fd_install`` by default) with ``Prefix``/``Postfix`` selectors;
- a process rule with ``stdio_socket`` needs the calls that keep a process's descriptor table
  (``STDIO_HOOKS``: socket, connect, dup/dup2/dup3, fcntl's F_DUPFD/F_SETFD/F_DUPFD_CLOEXEC,
  ioctl's FIOCLEX/FIONCLEX, close, close_range), those that create or copy a descriptor with
  ``return: true`` and an int ``returnArg`` (the new descriptor, or the error). Every call of
  each, whatever its descriptor (the engine cannot tell Tetragon which descriptors are sockets),
  but fcntl and ioctl only for their commands (a selector on ``cmd``). ``sys_dup2`` and
  ``sys_close_range`` are ignored where the kernel has no such syscall (arm64 has only
  ``dup3``; ``close_range`` is Linux 5.9+).

Rules that are not ``global`` go into a policy whose ``podSelector`` requires the
``stockade.dev/workspace`` label; global ones into a second policy without a selector.

:class:`PolicyValidator` checks documents against Tetragon's own JSON Schemas of the CRDs
(``tracingpolicy-cilium.io.json``, ``tracingpolicynamespaced-cilium.io.json``: strict, unknown
fields rejected) with ``jsonschema``'s Draft 7 validator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from stockade.core.errors import InvalidInput

from ._engine import LABEL_WORKSPACE
from ._rules import (
    FILE_HOOKS,
    STDIO_CMD_SELECTORS,
    STDIO_HOOKS,
    STDIO_OPTIONAL,
    CompiledRule,
    RuleSet,
    literal_suffix,
)

if TYPE_CHECKING:
    import jsonschema

__all__ = ["MAX_SELECTORS", "PolicyValidator", "dump_policies", "tracing_policies"]

#: Tetragon accepts at most this many selectors per hook.
MAX_SELECTORS = 5
API_VERSION = "cilium.io/v1alpha1"


def _prefix(pattern: str) -> str:
    cut = len(pattern)
    for special in "*?[":
        pos = pattern.find(special)
        if pos != -1:
            cut = min(cut, pos)
    return pattern[:cut]


def _path_selector(index: int, patterns: Sequence[str]) -> list[dict[str, Any]] | None:
    """matchArgs for globs: per glob its longer literal end; None when one has neither."""
    groups: dict[str, list[str]] = {}
    for pattern in patterns:
        head, tail = _prefix(pattern), literal_suffix(pattern)
        if head == pattern:  # no wildcard
            groups.setdefault("Equal", []).append(pattern)
        elif len(head) >= len(tail) and head:
            groups.setdefault("Prefix", []).append(head)
        elif tail:
            groups.setdefault("Postfix", []).append(tail)
        else:
            return None
    if len(groups) != 1:
        return None  # one matchArgs entry per operator would AND them: do not filter
    operator, values = next(iter(groups.items()))
    return [{"index": index, "operator": operator, "values": sorted(set(values))}]


def _syscall_selector(rule: CompiledRule) -> dict[str, Any] | None:
    assert rule.spec.syscall is not None
    match: list[dict[str, Any]] = []
    for arg in rule.spec.syscall.args:
        if arg.values is not None:
            values = sorted({str(v) for v in arg.values})
            match.append({"index": arg.index, "operator": "Equal", "values": values})
        if arg.mask is not None:
            match.append({"index": arg.index, "operator": "Mask", "values": [str(arg.mask)]})
        if arg.dport is not None:
            values = sorted({str(p) for p in arg.dport})
            match.append({"index": arg.index, "operator": "DPort", "values": values})
        if arg.daddr is not None:
            match.append({"index": arg.index, "operator": "DAddr", "values": list(arg.daddr)})
        if arg.path is not None:
            paths = _path_selector(arg.index, arg.path)
            if paths is not None:
                match.extend(paths)
    return {"matchArgs": match} if match else None


def _kprobe(
    call: str,
    args: Sequence[tuple[int, str]],
    selectors: list[dict[str, Any]] | None,
    rule_ids: Sequence[str],
    *,
    returns: bool = False,
) -> dict[str, Any]:
    probe: dict[str, Any] = {"call": call, "syscall": call.startswith("sys_")}
    if args:
        probe["args"] = [{"index": i, "type": t} for i, t in args]
    if returns:  # one event at the return: the arguments and the return value
        probe["return"] = True
        probe["returnArg"] = {"index": 0, "type": "int"}
    if selectors and len(selectors) <= MAX_SELECTORS:
        probe["selectors"] = selectors
    probe["message"] = ("stockade worktrace: " + ", ".join(sorted(set(rule_ids))))[:256]
    return probe


def _stdio_selector(call: str) -> dict[str, Any] | None:
    """What a ``stdio_socket`` rule needs of ``call``: every call (the descriptor table changes
    whatever the descriptor), but only the fcntl and ioctl commands that copy a descriptor or
    set its close-on-exec flag."""
    cmd = STDIO_CMD_SELECTORS.get(call)
    if cmd is None:
        return None
    index, values = cmd
    match = {"index": index, "operator": "Equal", "values": [str(v) for v in values]}
    return {"matchArgs": [match]}


def _kprobes(rules: RuleSet, members: Sequence[CompiledRule]) -> list[dict[str, Any]]:
    ids = {r.id for r in members}
    stdio = [r for r in rules.stdio_rules if r.id in ids]
    probes: list[dict[str, Any]] = []
    for call, specs in rules.syscall_args.items():
        users = [b.rule for b in rules.syscall_rules.get(call, ()) if b.rule.id in ids]
        stdio_users = stdio if call in rules.stdio_calls else []
        if not users and not stdio_users:
            continue
        selectors: list[dict[str, Any]] | None = []
        wanted = [_syscall_selector(rule) for rule in users]
        if stdio_users:
            wanted.append(_stdio_selector(call))
        for selector in wanted:
            if selector is None:
                selectors = None
                break
            assert selectors is not None
            if selector not in selectors:
                selectors.append(selector)
        args = [(a.index, a.type) for a in specs]
        returns = bool(stdio_users) and STDIO_HOOKS[call][1]  # the new descriptor, the error
        probe = _kprobe(call, args, selectors, [r.id for r in users + stdio_users], returns=returns)
        if stdio_users and call in STDIO_OPTIONAL:
            probe["ignore"] = {"callNotFound": True}
        probes.append(probe)
    for hook, hook_rules in sorted(rules.file_rules.items()):
        users = [r for r in hook_rules if r.id in ids]
        if not users:
            continue
        args, position = FILE_HOOKS[hook]
        index = args[position][0]
        selectors = []
        for rule in users:
            assert rule.spec.file is not None
            match = _path_selector(index, rule.spec.file.path)
            if match is None:
                selectors = None
                break
            selectors.append({"matchArgs": match})
        probes.append(_kprobe(hook, args, selectors, [r.id for r in users]))
    return probes


def tracing_policies(rules: RuleSet, *, name: str = "stockade-worktrace") -> list[dict[str, Any]]:
    """The TracingPolicy documents for ``rules`` (one for workspace Pods, one for global rules
    when any needs a kprobe)."""
    probed = [r for r in rules.rules if r.kind != "process" or r.stdio_socket]
    scoped = [r for r in probed if not r.global_]
    global_ = [r for r in probed if r.global_]
    docs: list[dict[str, Any]] = []
    probes = _kprobes(rules, scoped)
    if probes or not global_:
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "TracingPolicy",
                "metadata": {
                    "name": name,
                    "labels": {"app.kubernetes.io/managed-by": "stockade"},
                    "annotations": {"stockade.dev/rules-revision": rules.revision},
                },
                "spec": {
                    "podSelector": {
                        "matchExpressions": [{"key": LABEL_WORKSPACE, "operator": "Exists"}]
                    },
                    "kprobes": probes,
                },
            }
        )
    global_probes = _kprobes(rules, global_)
    if global_probes:
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "TracingPolicy",
                "metadata": {
                    "name": f"{name}-global",
                    "labels": {"app.kubernetes.io/managed-by": "stockade"},
                    "annotations": {"stockade.dev/rules-revision": rules.revision},
                },
                "spec": {"kprobes": global_probes},
            }
        )
    return docs


def dump_policies(docs: Sequence[Mapping[str, Any]]) -> str:
    """The documents as multi-document YAML (what ``kubectl apply -f`` takes)."""
    return yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False, explicit_start=True)


class PolicyValidator:
    """Validates TracingPolicy / TracingPolicyNamespaced documents against Tetragon's schemas
    in ``schema_dir`` (``pkg/tracingpolicy/schemas`` of the Tetragon tree)."""

    FILES: ClassVar[dict[str, str]] = {
        "TracingPolicy": "tracingpolicy-cilium.io.json",
        "TracingPolicyNamespaced": "tracingpolicynamespaced-cilium.io.json",
    }

    def __init__(self, schema_dir: Path) -> None:
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        for kind, filename in self.FILES.items():
            path = schema_dir / filename
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise InvalidInput(str(path), f"cannot read the schema: {exc.strerror}") from None
            except ValueError as exc:
                raise InvalidInput(str(path), f"not JSON: {exc}") from None
            import jsonschema  # slow to import; only the validator needs it

            jsonschema.Draft7Validator.check_schema(schema)
            self._validators[kind] = jsonschema.Draft7Validator(schema)

    def errors(self, doc: Any) -> list[str]:
        """Every problem of ``doc`` as ``path: message``; empty when it is valid."""
        if not isinstance(doc, dict):
            return ["document: not a mapping"]
        kind = doc.get("kind")
        validator = self._validators.get(kind) if isinstance(kind, str) else None
        if validator is None:
            return [f"kind: {kind!r} is not TracingPolicy or TracingPolicyNamespaced"]
        out = []
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "document"
            out.append(f"{where}: {error.message}")
        return out

    def check(self, doc: Any, *, source: str = "policy") -> None:
        """Raise :class:`InvalidInput` naming the first problem."""
        problems = self.errors(doc)
        if problems:
            raise InvalidInput(source, problems[0])
