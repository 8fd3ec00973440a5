"""Acceptance 2: kill -9 of the shield in the middle of a burst of *batched* failure events, and
every failure is counted exactly once.

Sources of kind A fail exactly THRESHOLD times, sources of kind B THRESHOLD - 1 times, spread over
AuthFailedBatch messages. After the kill and a restart, every A source has exactly one ban whose
trigger is its THRESHOLD-th failure (a failure counted twice would have banned it earlier; one
lost would leave it unbanned), and no B source is banned (a failure counted twice would ban it).

The first test publishes the batches itself (a large burst, killed while the bans are written);
the second makes the failures real: ``ssh`` clients bound to loopback sources fail against a
real gateway, whose FailureBatcher publishes them, and the shield is killed as its first bans
land while the attempts go on.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, gateway_env, keygen

from stockade.bus import Bus, EmbeddedNats
from stockade.core.events import (
    MAX_BATCH_FAILURES,
    STREAM_AUTH,
    SUBJECT_AUTH_FAILED,
    SUBJECT_AUTH_FAILED_BATCH,
    AuthFailed,
    AuthFailedBatch,
)
from stockade.core.settings import PreAuthSettings
from stockade.shield import SEQ_SCALE, BanStore

A_SOURCES = 1500
B_SOURCES = 1500
THRESHOLD = 5

SHIELD = textwrap.dedent(
    f"""
    import asyncio, sys
    from stockade.bus import Bus
    from stockade.core.logging import configure_logging
    from stockade.core.settings import ShieldSettings
    from stockade.shield import Shield

    async def main():
        configure_logging("warning")
        bus = await Bus.connect(sys.argv[1], name="shield-under-test")
        settings = ShieldSettings(threshold={THRESHOLD}, ban_schedule=["1h"], enum_usernames=0)
        shield = Shield(bus, settings, enforcers=[], batch=16)
        await shield.start()
        print("started", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def start_shield(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SHIELD, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = ""
    while "started" not in line:
        line = proc.stdout.readline()
        assert line, "shield exited during start"
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def a_ip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def b_ip(i: int) -> str:
    return f"198.19.{i // 250}.{i % 250 + 1}"


def failures() -> list[AuthFailed]:
    """Round n: the n-th failure of every A source, and of every B source but in the last."""
    out = []
    for n in range(THRESHOLD):
        for i in range(max(A_SOURCES, B_SOURCES)):
            if i < A_SOURCES:
                out.append(_failure(a_ip(i), n))
            if i < B_SOURCES and n < THRESHOLD - 1:
                out.append(_failure(b_ip(i), n))
    return out


def _failure(ip: str, n: int) -> AuthFailed:
    return AuthFailed(
        client_ip=ip,
        client_port=30000 + n,
        username="root",
        method="password",
        reason="bad_password",
        gateway_id="burst",
    )


async def test_kill_9_mid_burst_of_batches(tmp_path: Path) -> None:
    events = failures()
    batches = [
        events[i : i + MAX_BATCH_FAILURES] for i in range(0, len(events), MAX_BATCH_FAILURES)
    ]
    expected: dict[str, int] = {}  # A source -> identity of its THRESHOLD-th failure
    async with EmbeddedNats(tmp_path / "data") as url:
        bus = await Bus.connect(url, name="burst")
        await bus.ensure_streams()
        store = await BanStore.open(bus, strike_memory=3600)
        consumer = bus.consumer(stream="STOCKADE_AUTH", durable="shield")
        seqs: list[int] = []

        async def publish(part: list[list[AuthFailed]]) -> None:
            for batch in part:
                event = AuthFailedBatch.of(batch)
                seq = await bus.publish_bytes(event.subject, event.to_bytes())
                seqs.append(seq)
                for index, failure in enumerate(batch):
                    if failure.client_port == 30000 + THRESHOLD - 1:
                        expected[failure.client_ip] = seq * SEQ_SCALE + index

        # The ban round (every A source's THRESHOLD-th failure) is the tail of the burst: the
        # first shield is killed while it decides and writes those bans, the second one gets
        # the rest of the round live, after its replay.
        ban_start = next(
            i for i, b in enumerate(batches) if any(f.client_port == 30000 + THRESHOLD - 1
                                                    for f in b)
        )  # fmt: skip
        # two thirds of the ban round before the kill, which comes once its first batch is
        # acknowledged: the kill lands with several batches of bans still to write (a third
        # left too little room on a fast run: the shield had finished them all)
        cut = ban_start + 2 * (len(batches) - ban_start) // 3
        proc = start_shield(url)
        try:
            await publish(batches[:cut])
            deadline = time.monotonic() + 60
            while (await consumer.state()).ack_floor < seqs[ban_start]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            stop(proc)
        finally:
            if proc.poll() is None:
                stop(proc)
        killed_at = (await consumer.state()).ack_floor
        proc = start_shield(url)
        try:
            await publish(batches[cut:])
            last = seqs[-1]
            deadline = time.monotonic() + 90
            while True:
                state = await consumer.state()
                if state.ack_floor >= last and state.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.05)
        finally:
            stop(proc, signal.SIGTERM)
        bans = await store.all()
        await bus.close()
    assert seqs[ban_start] <= killed_at < seqs[cut - 1]  # killed mid-burst, bans being written
    assert len(expected) == A_SOURCES
    by_source = {ban.source: ban for ban in bans}
    assert set(by_source) == set(expected)  # every A source banned, no B source
    assert {ban.strikes for ban in bans} == {1}  # none banned twice
    wrong = {s: (b.trigger_seq, expected[s]) for s, b in by_source.items()
             if b.trigger_seq != expected[s]}  # fmt: skip
    assert not wrong, list(wrong.items())[:5]  # each ban triggered by exactly the 5th failure


SSH_A = [f"127.0.1.{n}" for n in range(1, 13)]  # fail THRESHOLD times: banned once each
SSH_B = [f"127.0.2.{n}" for n in range(1, 13)]  # fail THRESHOLD - 1 times: never banned
SSH_PARALLEL = 8


async def _fail_from(env: GatewayEnv, sources: list[str], key: Path) -> None:
    """One failed login (an unknown user's key query, then the connection ends: one strike)
    from each source, SSH_PARALLEL at a time."""
    limit = asyncio.Semaphore(SSH_PARALLEL)

    async def one(source: str) -> None:
        async with limit:
            cmd = env.ssh_cmd("mallory", "true", key=key, options=["-o", f"BindAddress={source}"])
            result = await env.run(cmd)
            assert result.returncode == 255, result.stderr

    await asyncio.gather(*(one(source) for source in sources))


async def _stream_failures(bus: Bus) -> dict[str, list[int]]:
    """Every failure stored in the stream, by source: their identities, in stream order."""
    last = max([await bus.last_sequence(STREAM_AUTH, s)
                for s in (SUBJECT_AUTH_FAILED, SUBJECT_AUTH_FAILED_BATCH)])  # fmt: skip
    since = datetime.now(UTC) - timedelta(hours=1)
    found: dict[str, list[int]] = {}
    async for delivery in bus.read_stream(
        STREAM_AUTH, [SUBJECT_AUTH_FAILED, SUBJECT_AUTH_FAILED_BATCH], since=since, until_seq=last
    ):
        assert delivery.subject == SUBJECT_AUTH_FAILED_BATCH  # the gateway sent batches only
        batch = AuthFailedBatch.from_bytes(delivery.data)
        for index, ip in enumerate(batch.client_ip):
            found.setdefault(ip, []).append(delivery.stream_seq * SEQ_SCALE + index)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_mid_burst_of_real_ssh_failures(tmp_path: Path) -> None:
    preauth = PreAuthSettings(penalties=False)
    async with (
        EmbeddedNats(tmp_path / "nats") as url,
        gateway_env(tmp_path, url, preauth=preauth) as env,
    ):
        key = keygen(tmp_path / "id_mallory")
        bus = await Bus.connect(url, name="observer")
        store = await BanStore.open(bus, strike_memory=3600)
        consumer = bus.consumer(stream="STOCKADE_AUTH", durable="shield")
        proc = start_shield(url)
        try:
            for _ in range(THRESHOLD - 1):  # every source's failures but A's last
                await _fail_from(env, SSH_A + SSH_B, key)
            # A's last round: the shield dies by kill -9 as soon as its first ban is stored,
            # with this half of the round still failing; the other half fails while it is
            # down (its batches wait in the stream)
            half = len(SSH_A) // 2
            first = asyncio.ensure_future(_fail_from(env, SSH_A[:half], key))
            deadline = time.monotonic() + 60
            while not await store.all():
                assert time.monotonic() < deadline, "no ban within 60 s"
                await asyncio.sleep(0.01)
            stop(proc)
            bans_at_kill = len(await store.all())
            await first
            await _fail_from(env, SSH_A[half:], key)
        finally:
            if proc.poll() is None:
                stop(proc)
        await env.gateway.stop(grace=0)  # flushes the batcher: every failure is stored
        stored = await _stream_failures(bus)
        proc = start_shield(url)
        try:
            last = await bus.last_sequence(STREAM_AUTH, SUBJECT_AUTH_FAILED_BATCH)
            deadline = time.monotonic() + 90
            while True:
                state = await consumer.state()
                if state.ack_floor >= last and state.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.05)
        finally:
            stop(proc, signal.SIGTERM)
        bans = await store.all()
        await bus.close()
    # every attempt is in the stream exactly once (no loss at the gateway, no duplicate batch)
    assert {ip: len(ids) for ip, ids in stored.items()} == {
        **{ip: THRESHOLD for ip in SSH_A},
        **{ip: THRESHOLD - 1 for ip in SSH_B},
    }
    assert 1 <= bans_at_kill < len(SSH_A)  # killed mid-burst: some bans stored, not all
    by_source = {ban.source: ban for ban in bans}
    assert set(by_source) == set(SSH_A)  # every A source banned, no B source
    assert {ban.strikes for ban in bans} == {1}  # none banned twice
    wrong = {s: (b.trigger_seq, stored[s][THRESHOLD - 1]) for s, b in by_source.items()
             if b.trigger_seq != stored[s][THRESHOLD - 1]}  # fmt: skip
    assert not wrong, wrong  # each ban triggered by exactly its source's 5th failure
