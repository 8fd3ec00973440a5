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

import regorus

from stockade.authz import (
    DECISION_RULE,
    DEFAULT_BUNDLE_DIR,
    Authorizer,
    Context,
    Resource,
    Subject,
    build_input,
)
from stockade.core.events import Event
from stockade.core.settings import AuthzSettings

ROUNDS = 2
ROUND_SECONDS = 0.75
BATCH = 500


class _NullSink:
    """Accepts decision records and drops them (the bus is not what is measured here)."""

    def __init__(self) -> None:
        self.records = 0

    async def publish(self, event: Event) -> None:
        self.records += 1


def _rate(step: Callable[[], object]) -> float:
    best = 0.0
    for _ in range(ROUNDS):
        count = 0
        started = time.perf_counter()
        deadline = started + ROUND_SECONDS
        while (now := time.perf_counter()) < deadline:
            for _ in range(BATCH):
                step()
            count += BATCH
        best = max(best, count / (now - started))
    return best


def _raw_engine() -> regorus.Engine:
    engine = regorus.Engine()
    for path in sorted(DEFAULT_BUNDLE_DIR.rglob("*.rego")):
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
    raw = _raw_engine()

    def raw_step() -> object:
        raw.set_input(doc)
        return raw.eval_rule(DECISION_RULE)

    sink = _NullSink()
    authorizer = Authorizer(settings=AuthzSettings(), decision_sink=sink)
    quiet = Authorizer(settings=AuthzSettings(decision_log=False))
    assert authorizer.decide(doc).allow, "the bench input must be allowed"
    await authorizer.start()
    try:
        raw_rate = _rate(raw_step)
        logged_rate = _rate(lambda: authorizer.decide(doc))
        quiet_rate = _rate(lambda: quiet.decide(doc))
    finally:
        await authorizer.stop()
    print(f"raw regorus eval_rule:           {raw_rate:>9,.0f} decisions/s")
    print(
        f"Authorizer.decide (log on):      {logged_rate:>9,.0f} decisions/s "
        f"({logged_rate / raw_rate:.0%} of raw, goal >= 70%)"
    )
    print(
        f"Authorizer.decide (log off):     {quiet_rate:>9,.0f} decisions/s "
        f"({quiet_rate / raw_rate:.0%} of raw)"
    )
    print(f"decision records published:      {sink.records:>9,} (folded)")


def main() -> None:
    asyncio.run(_measure())
