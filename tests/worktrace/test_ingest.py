"""The file follower loses and duplicates nothing across rotation; stdin and NATS sources."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import nats

from stockade.bus import Bus
from stockade.worktrace import Engine, FileFollower, NatsSource, load_rules

from .conftest import exec_event, line


def _writer(path: Path, total: int, rotate_every: int, done: threading.Event) -> int:
    """Write ``total`` numbered lines, rotating like lumberjack (rename, new file)."""
    rotations = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for n in range(total):
            os.write(fd, b'{"n": %d}\n' % n)
            if n and n % rotate_every == 0:
                os.close(fd)
                path.rename(path.with_name(f"tetragon-{rotations}.log"))
                rotations += 1
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            if n % 997 == 0:
                time.sleep(0.001)
    finally:
        os.close(fd)
        done.set()
    return rotations


async def _collect(follower: FileFollower, total: int, seconds: float) -> list[bytes]:
    got: list[bytes] = []

    async def run() -> None:
        async for batch in follower:
            got.extend(batch)
            if len(got) >= total:
                follower.close()

    await asyncio.wait_for(run(), seconds)
    return got


async def test_rotation_during_a_burst_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    path.write_bytes(b"")
    total = 60_000
    follower = FileFollower(path, poll_interval=0.001)
    done = threading.Event()
    thread = threading.Thread(target=_writer, args=(path, total, 7_000, done))
    thread.start()
    try:
        got = await _collect(follower, total, 60)
    finally:
        thread.join()
    numbers = [int(raw[6:-1]) for raw in got]
    assert numbers == list(range(total))
    assert follower.rotations >= 8


def test_follower_behind_two_rotations_reads_the_missed_file(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    (tmp_path / "tetragon-old.log").write_bytes(b"history\n")  # there before: not read
    path.write_bytes(b"1\n")
    follower = FileFollower(path)
    assert follower.poll() == [b"1"]
    with path.open("ab") as handle:
        handle.write(b"2\n")
    path.rename(tmp_path / "tetragon-a.log")
    path.write_bytes(b"3\n")
    path.rename(tmp_path / "tetragon-b.log")  # rotated again before the follower looked
    path.write_bytes(b"4\n")
    assert follower.poll() == [b"2"]  # the rest of the file it has open
    assert follower.poll() == [b"3", b"4"]  # the missed file whole, then the new one
    assert (follower.rotations, follower.missed_rotations) == (1, 1)
    assert follower.poll() == []


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    with open(path, "wb") as handle:
        handle.write(b'{"a": 1}\n{"b": ')
    follower = FileFollower(path)
    assert follower.poll() == [b'{"a": 1}']
    assert follower.poll() == []
    with open(path, "ab") as handle:
        handle.write(b"2}\n")
    assert follower.poll() == [b'{"b": 2}']


def test_truncated_file_is_read_again_and_missing_file_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    follower = FileFollower(path)
    assert follower.poll() == []  # not there yet
    path.write_bytes(b"one\ntwo\n")
    assert follower.poll() == [b"one", b"two"]
    path.write_bytes(b"3\n")  # truncated in place, then written
    assert follower.poll() == [b"3"]
    assert follower.truncations == 1


def test_from_end_skips_existing_lines(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    path.write_bytes(b"old\n")
    follower = FileFollower(path, from_start=False)
    assert follower.poll() == []
    with open(path, "ab") as handle:
        handle.write(b"new\n")
    assert follower.poll() == [b"new"]


def test_followed_export_feeds_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    path.write_bytes(line(exec_event("/usr/bin/nsenter", "-t 1 -m bash")) + b"\n")
    engine = Engine(load_rules())
    follower = FileFollower(path)
    alerts = [a for raw in follower.poll() for a in engine.feed(raw)]
    assert [a.rule_id for a in alerts] == ["nsenter-target"]


async def test_nats_source_delivers_published_events(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, name="worktrace-test")
    publisher = await nats.connect(nats_url)
    source = NatsSource(bus, "tetragon.test.events")
    await source.start()
    batches = source.__aiter__()
    try:
        for _ in range(200):  # until the subscription is live end to end (bounded)
            await publisher.publish("tetragon.test.events", b"probe")
            await publisher.flush()
            await asyncio.sleep(0.05)
            if source.received:
                break
        assert source.received, "the subscription never received anything"
        for n in range(50):
            await publisher.publish("tetragon.test.events", b'{"n": %d}' % n)
        await publisher.flush()
        got: list[bytes] = []
        async with asyncio.timeout(10):
            while len(got) < 50:
                got.extend(b for b in await batches.__anext__() if b != b"probe")
        assert got == [b'{"n": %d}' % n for n in range(50)]
    finally:
        await source.stop()
        await publisher.close()
        await bus.close()
