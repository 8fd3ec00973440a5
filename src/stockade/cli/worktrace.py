"""``stockade worktrace``: TracingPolicy generation, offline scans and the alerts stored.

- ``policy`` writes the TracingPolicy documents the loaded rules need (``--schema-dir`` checks
  them against Tetragon's JSON Schemas first; exit 1 when one is invalid);
- ``scan FILE|-`` runs the rules over a Tetragon export offline and prints the alerts (exit 1
  when any fired);
- ``alerts`` lists the alerts stored on the bus (``stockade.worktrace.alert`` in the audit
  stream), from ``STOCKADE_NATS_URL``, a running ``stockade up``, or the data dir's JetStream.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.bus import Bus, EmbeddedNats
from stockade.core import InvalidInput, parse_duration
from stockade.core.settings import Settings
from stockade.worktrace import (
    Alert,
    AnomalyConfig,
    Engine,
    PolicyValidator,
    RuleSet,
    alert_rows,
    dump_policies,
    image_files,
    iter_lines,
    load_rules,
    read_alerts,
    to_event,
    tracing_policies,
)

from ._common import (
    JSON_OPTION,
    console,
    err_console,
    handle_errors,
    print_json,
    print_table,
    run_async,
    settings,
)

__all__ = ["app"]

app = typer.Typer(help="Worktrace: detections from Tetragon's events.", no_args_is_help=True)

RULES_OPTION = typer.Option(
    "--rules",
    help="Rule file or directory (repeatable); default: [worktrace] rules, else the shipped set.",
)


def _ruleset(paths: list[Path] | None, cfg: Settings) -> RuleSet:
    chosen = list(paths or cfg.worktrace.rules)
    return load_rules(*chosen)


@app.command("policy")
@handle_errors
def policy(
    rules: Annotated[list[Path] | None, RULES_OPTION] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    schema_dir: Annotated[
        Path | None,
        typer.Option(help="Tetragon's pkg/tracingpolicy/schemas: validate before writing."),
    ] = None,
    name: Annotated[str, typer.Option(help="metadata.name of the policy.")] = "stockade-worktrace",
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the TracingPolicy that makes Tetragon emit exactly what the rules need."""
    cfg = settings()
    docs = tracing_policies(_ruleset(rules, cfg), name=name)
    if schema_dir is not None:
        validator = PolicyValidator(schema_dir)
        for doc in docs:
            problems = validator.errors(doc)
            if problems:
                err_console.print(f"error: {doc['metadata']['name']}: {problems[0]}", markup=False)
                raise typer.Exit(1)
    text = json.dumps(docs, indent=2) + "\n" if as_json else dump_policies(docs)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(str(out), f"cannot write: {exc.strerror}") from None
        console.print(f"wrote {len(docs)} TracingPolicy document(s) to {out}", markup=False)


@contextlib.contextmanager
def _lines(source: str) -> Iterator[Iterator[bytes]]:
    if source == "-":
        yield iter_lines(sys.stdin.buffer)
        return
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InvalidInput(source, f"cannot read: {exc.strerror}") from None
    with handle:
        yield iter_lines(handle)


def _alert_table(rows: list[dict[str, Any]]) -> None:
    print_table(
        "Worktrace alerts",
        ["time", "kind", "rule", "confidence", "user", "workspace", "session", "pod", "binary"],
        (
            [
                r["event_time"],
                r["kind"],
                r["rule_id"],
                f"{r['confidence']:.3f}",
                r["username"],
                r["workspace"],
                r["session_id"],
                f"{r['pod_namespace']}/{r['pod_name']}" if r["pod_name"] else None,
                r["binary"],
            ]
            for r in rows
        ),
    )


@app.command("scan")
@handle_errors
def scan(
    source: Annotated[str, typer.Argument(help="Tetragon export (one event a line), or -.")],
    rules: Annotated[list[Path] | None, RULES_OPTION] = None,
    anomalies: Annotated[
        bool, typer.Option(help="Score rare ancestries (after the learning phase).")
    ] = False,
    sbom: Annotated[
        list[str] | None,
        typer.Option(help="IMAGE=CYCLONEDX.json: the image's file list (repeatable)."),
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the rules over an export offline and print the alerts; exit 1 when any fired."""
    cfg = settings()
    engine = Engine(
        _ruleset(rules, cfg),
        image_files=image_files(sbom or []),
        anomaly=AnomalyConfig(
            enabled=anomalies,
            learning_events=cfg.worktrace.learning_events,
            threshold=cfg.worktrace.anomaly_threshold,
            depth=cfg.worktrace.ancestry_depth,
        ),
        trusted_namespaces=cfg.worktrace.trusted_namespaces,
    )
    found: list[Alert] = []
    with _lines(source) as lines:
        for line in lines:
            found.extend(engine.feed(line))
    rows = alert_rows(to_event(a) for a in found)
    stats = engine.stats()
    if as_json:
        print_json({"alerts": rows, "stats": stats})
    else:
        if rows:
            _alert_table(rows)
        err_console.print(
            f"{stats['events']} events, {stats['unknown']} of unknown types, "
            f"{stats['malformed']} malformed, {len(rows)} alerts",
            markup=False,
        )
    if rows:
        raise typer.Exit(1)


@contextlib.asynccontextmanager
async def _bus(cfg: Settings) -> AsyncIterator[Bus]:
    timeout = cfg.bus.connect_timeout
    url = cfg.bus.url or await EmbeddedNats.running_url(cfg.data_dir)
    if url is not None:
        token = None if cfg.bus.url else EmbeddedNats.read_token(cfg.data_dir)
        bus = await Bus.connect(url, name="stockade-cli", connect_timeout=timeout, token=token)
        try:
            yield bus
        finally:
            await bus.close()
        return
    embedded = EmbeddedNats(cfg.data_dir, connect_timeout=timeout, auth=True)
    async with embedded as local:
        bus = await Bus.connect(
            local, name="stockade-cli", connect_timeout=timeout, token=embedded.token
        )
        try:
            await bus.ensure_streams()
            yield bus
        finally:
            await bus.close()


@app.command("alerts")
@handle_errors
def alerts(
    since: Annotated[str, typer.Option(help="How far back, e.g. 15m, 24h, 7d.")] = "24h",
    as_json: bool = JSON_OPTION,
) -> None:
    """List the alerts stored since --since (oldest first)."""
    cfg = settings()
    start = datetime.now(UTC) - parse_duration(since, field="--since")

    async def run() -> list[dict[str, Any]]:
        async with _bus(cfg) as bus:
            return alert_rows(await read_alerts(bus, since=start))

    rows = run_async(run())
    if as_json:
        print_json(rows)
        return
    _alert_table(rows)
