"""Authz decisions/s in-process: ``Authorizer.decide`` vs raw regorus ``eval_rule``.

Both evaluate the shipped bundle on the same input in the same run; the ratio is the share of
raw regorus throughput the Authorizer keeps after building a :class:`Decision` and queueing
the decision-log record (goal: >= 70%). Each side runs a few time-bounded rounds; the best
round counts, which filters out scheduler noise on a shared machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import regorus

from bench._report import record
from stockade.authz import (
    Authorizer,
    Context,
    Resource,
    Subject,
    build_input,
)
from stockade.core.events import Event
from stockade.core.settings import AuthzSettings

DECISION_RULE = "data.stockade.decision"  # the docs/architecture.md contract
ROUNDS = 10
ROUND_SECONDS = 0.15
BATCH = 500


class _NullSink:
    """Accepts decision records and drops them (the bus is not what is measured here)."""

    def __init__(self) -> None:
        self.records = 0

    async def publish(self, event: Event) -> None:
        self.records += 1


def _rates(steps: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best rate of each step over interleaved rounds (so a noisy moment hits all alike)."""
    best = dict.fromkeys(steps, 0.0)
    for _ in range(ROUNDS):
        for name, step in steps.items():
            count = 0
            started = time.perf_counter()
            deadline = started + ROUND_SECONDS
            while (now := time.perf_counter()) < deadline:
                for _ in range(BATCH):
                    step()
                count += BATCH
            best[name] = max(best[name], count / (now - started))
    return best


def _raw_engine(bundle_dir: Path) -> regorus.Engine:
    engine = regorus.Engine()
    for path in sorted(bundle_dir.rglob("*.rego")):
        engine.add_policy_from_file(str(path))
    return engine


async def _measure() -> None:
    doc = build_input(
        "ssh.connect",
        Resource(kind="workspace", name="ws1", owner="carol"),
        Context(
            user=Subject(name="carol", roles=("contractor", "sudoer")),
            source_ip="203.0.113.7",
            auth_method="publickey",
            session_id="s-1",
        ),
    )
    sink = _NullSink()
    authorizer = Authorizer(settings=AuthzSettings(), decision_sink=sink)
    quiet = Authorizer(settings=AuthzSettings(decision_log=False))
    assert authorizer.decide(doc).allow, "the bench input must be allowed"
    raw = _raw_engine(authorizer.bundle_dir)

    def raw_step() -> object:
        raw.set_input(doc)
        return raw.eval_rule(DECISION_RULE)

    await authorizer.start()
    try:
        rates = _rates(
            {
                "raw": raw_step,
                "logged": lambda: authorizer.decide(doc),
                "quiet": lambda: quiet.decide(doc),
            }
        )
    finally:
        await authorizer.stop()
    raw_rate, logged_rate, quiet_rate = rates["raw"], rates["logged"], rates["quiet"]
    anchor = f"raw regorus eval_rule {raw_rate:,.0f}/s"
    record(
        "Authorizer.decide, decision log on",
        value=f"{logged_rate:,.0f} decisions/s",
        anchor=anchor,
        ratio=logged_rate / raw_rate,
        goal=">= 0.7x",
        met=logged_rate / raw_rate >= 0.7,
    )
    record(
        "Authorizer.decide, decision log off",
        value=f"{quiet_rate:,.0f} decisions/s",
        anchor=anchor,
        ratio=quiet_rate / raw_rate,
    )
    record("decision records published (folded)", value=f"{sink.records:,}")


def main() -> None:
    asyncio.run(_measure())
