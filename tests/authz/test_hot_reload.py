"""Acceptance 5: policy files swapped while decisions run; none fails, none is torn.

Two variants of the shipped bundle differ in obligations (allowed requests) and in reasons
(denied ones). Worker threads and the event loop decide continuously while the bundle file is
atomically replaced back and forth and the watcher reloads it; every decision must equal, as a
whole, what one variant alone answers for that request. Bounded by the number of swaps.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from stockade.authz import Authorizer, Decision
from stockade.authz._bundle import DEFAULT_BUNDLE_DIR
from stockade.core.settings import AuthzSettings

from .conftest import ssh_request

SWAPS = 16
WORKERS = 4
SOURCE = (DEFAULT_BUNDLE_DIR / "stockade.rego").read_text()
VARIANT_A = SOURCE
VARIANT_B = (
    SOURCE.replace("max_session_seconds := 28800", "max_session_seconds := 3600")
    .replace('"agent_forwarding": true', '"agent_forwarding": false')
    .replace('"X11 forwarding is disabled"', '"X11 is off in variant B"')
    .replace('"workspace %s is owned by %s"', '"workspace %s belongs to %s"')
)
REQUESTS = [
    ssh_request(roles=("contractor",)),
    ssh_request(roles=("sudoer", "tunneler")),
    ssh_request("ssh.direct-tcpip", roles=("tunneler",)),
    ssh_request("ssh.x11"),
    ssh_request(owner="bob"),
    ssh_request(user="root", roles=("admin",), owner="bob"),
]


def replace_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def fixed(root: Path, text: str) -> Authorizer:
    root.mkdir()
    (root / "stockade.rego").write_text(text)
    return Authorizer(settings=AuthzSettings(), bundle_dir=root)


@pytest.fixture
def variants(tmp_path: Path) -> tuple[Authorizer, Authorizer]:
    return fixed(tmp_path / "a", VARIANT_A), fixed(tmp_path / "b", VARIANT_B)


def test_variants_differ_on_every_request(variants: tuple[Authorizer, Authorizer]) -> None:
    a, b = variants
    assert a.revision != b.revision
    for doc in REQUESTS:
        assert a.decide(doc) != b.decide(doc)


async def test_swaps_under_load_never_fail_or_tear(
    tmp_path: Path, variants: tuple[Authorizer, Authorizer]
) -> None:
    a, b = variants
    expected = [(a.decide(doc), b.decide(doc)) for doc in REQUESTS]
    live = tmp_path / "live"
    live.mkdir()
    (live / "stockade.rego").write_text(VARIANT_A)
    authz = Authorizer(settings=AuthzSettings(reload_interval=0.005), bundle_dir=live)
    problems: list[Any] = []
    seen: set[str] = set()
    done = threading.Event()
    counts = [0] * WORKERS

    def check(doc_index: int, decision: Decision) -> None:
        from_a, from_b = expected[doc_index]
        if decision == from_a:
            seen.add("a")
        elif decision == from_b:
            seen.add("b")
        else:
            problems.append((doc_index, decision))

    def worker(slot: int) -> None:
        while not done.is_set():
            for index, doc in enumerate(REQUESTS):
                check(index, authz.decide(doc))
                counts[slot] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    await authz.start()
    try:
        for swap in range(SWAPS):
            target = b if swap % 2 == 0 else a
            replace_atomically(live / "stockade.rego", VARIANT_B if target is b else VARIANT_A)
            for _ in range(2000):  # bounded wait for the watcher, deciding meanwhile
                for index, doc in enumerate(REQUESTS):
                    check(index, authz.decide(doc))
                if authz.revision == target.revision:
                    break
                await asyncio.sleep(0.005)
            assert authz.revision == target.revision, f"swap {swap} was never picked up"
    finally:
        done.set()
        await authz.stop()
        for thread in threads:
            await asyncio.to_thread(thread.join)
    assert problems == []
    assert seen == {"a", "b"}
    assert all(counts), counts


async def test_broken_swaps_under_load_keep_serving(
    tmp_path: Path, variants: tuple[Authorizer, Authorizer]
) -> None:
    a, _ = variants
    expected = [a.decide(doc) for doc in REQUESTS]
    live = tmp_path / "live"
    live.mkdir()
    (live / "stockade.rego").write_text(VARIANT_A)
    authz = Authorizer(settings=AuthzSettings(), bundle_dir=live)
    problems: list[Any] = []
    done = threading.Event()

    def worker() -> None:
        while not done.is_set():
            for index, doc in enumerate(REQUESTS):
                decision = authz.decide(doc)
                if decision != expected[index]:
                    problems.append(decision)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for swap in range(SWAPS // 2):
            broken = VARIANT_B.replace("package stockade", f"package stockade\n\nbroken {swap} :=")
            replace_atomically(live / "stockade.rego", broken)
            assert await asyncio.to_thread(authz.reload) is False
            replace_atomically(live / "stockade.rego", VARIANT_A)
            assert await asyncio.to_thread(authz.reload) is False  # back to what is serving
    finally:
        done.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
    assert problems == []
    assert authz.revision == a.revision
