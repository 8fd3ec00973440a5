"""Worktrace: malicious activity in workspaces, detected from Tetragon's JSON export.

::

    rules = RuleSource()                          # default rules (or files / dirs), hot reload
    engine = Engine(rules)                        # correlation, rules, attack paths, anomalies
    for line in iter_lines(open("tetragon.log", "rb")):
        for alert in engine.feed(line): ...       # unknown / malformed lines are only counted

    docs = tracing_policies(rules.current)       # the TracingPolicy Tetragon needs
    PolicyValidator(schema_dir).check(docs[0])    # against Tetragon's own JSON Schema

    worktrace = Worktrace(rules, sinks=[BusAlertSink(bus)], responder=AlertResponder(authz, bus))
    await worktrace.run(FileFollower(path))       # or stdin_batches(), NatsSource(bus, subject)

Alerts are ``WorktraceAlert`` events on ``stockade.worktrace.alert`` (the audit stream);
:class:`AlertResponder` asks policy (``worktrace.respond``) whether to publish a
``SessionKill`` or a ``UserBan``.
"""

from ._alerts import AUDIT_STREAM, AlertSink, BusAlertSink, alert_rows, read_alerts, to_event
from ._engine import (
    LABEL_BLUEPRINT,
    LABEL_SESSION,
    LABEL_USER,
    LABEL_WORKSPACE,
    WORKSPACE_NAMESPACE,
    Alert,
    AnomalyConfig,
    Engine,
    LocalSessions,
    SessionInfo,
    rarity,
)
from ._events import (
    EVENT_TYPES,
    EventShapeError,
    KprobeArg,
    Pod,
    Process,
    TraceEvent,
    UnknownEvent,
    parse_event,
    parse_line,
)
from ._ingest import FileFollower, NatsSource, iter_lines, stdin_batches
from ._policy import PolicyValidator, dump_policies, tracing_policies
from ._respond import ACTION, AlertResponder, Response, respond_input
from ._rules import DEFAULT_RULES_DIR, AttackPath, CompiledRule, RuleSet, RuleSource, load_rules
from ._sbom import image_files, load_sbom, sbom_files
from ._service import Worktrace

__all__ = [
    "ACTION",
    "AUDIT_STREAM",
    "DEFAULT_RULES_DIR",
    "EVENT_TYPES",
    "LABEL_BLUEPRINT",
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_WORKSPACE",
    "WORKSPACE_NAMESPACE",
    "Alert",
    "AlertResponder",
    "AlertSink",
    "AnomalyConfig",
    "AttackPath",
    "BusAlertSink",
    "CompiledRule",
    "Engine",
    "EventShapeError",
    "FileFollower",
    "KprobeArg",
    "LocalSessions",
    "NatsSource",
    "Pod",
    "PolicyValidator",
    "Process",
    "Response",
    "RuleSet",
    "RuleSource",
    "SessionInfo",
    "TraceEvent",
    "UnknownEvent",
    "Worktrace",
    "alert_rows",
    "dump_policies",
    "image_files",
    "iter_lines",
    "load_rules",
    "load_sbom",
    "parse_event",
    "parse_line",
    "rarity",
    "read_alerts",
    "respond_input",
    "sbom_files",
    "stdin_batches",
    "to_event",
    "tracing_policies",
]
