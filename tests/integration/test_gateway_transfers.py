"""Under ``record_session`` a legacy ``scp -O`` transfer is allowed only as an audited one: one
``stockade.session.transfer`` event per file with direction, path, size and SHA-256, and no file
data in any cast; sftp stays refused. ``record_input`` puts the typed input in the cast."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from gateway.harness import (
    GatewayEnv,
    ended_sessions,
    eventually,
    gateway_env,
    ssh_options,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


@pytest.fixture
async def transfers(nats_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []
    client = await nats.connect(nats_url)

    async def on_message(msg: Any) -> None:
        received.append(json.loads(msg.data))

    await client.subscribe("stockade.session.transfer", cb=on_message)
    try:
        yield received
    finally:
        await client.close()


def _scp(env: GatewayEnv, key: Path, *args: str) -> list[str]:
    return [
        "scp", "-O", *ssh_options(env.tmp / "known_hosts"), "-P", str(env.port), "-i", str(key),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "KexAlgorithms=curve25519-sha256", *args,
    ]  # fmt: skip


async def test_contractor_scp_upload_is_an_audited_transfer(
    env: GatewayEnv, transfers: list[dict[str, Any]]
) -> None:
    key = await env.add_user("cora", "contractor")
    assert key is not None
    payload = os.urandom(300_000) + b"SECRET-MARKER"
    source = env.tmp / "upload.bin"
    source.write_bytes(payload)
    result = await env.run(_scp(env, key, str(source), "cora@127.0.0.1:upload.bin"))
    assert result.returncode == 0, result.stderr
    events = await eventually(lambda: [e for e in transfers if e["username"] == "cora"])
    assert len(events) == 1, events
    (event,) = events
    assert event["direction"] == "upload"
    assert event["size"] == len(payload)
    assert event["sha256"] == hashlib.sha256(payload).hexdigest()
    assert event["path"].endswith("upload.bin")
    assert event["complete"] is True
    home = env.data_dir / "workspaces" / "cora"
    assert (home / "upload.bin").read_bytes() == payload
    for cast in (env.data_dir / "recordings").glob("*.cast"):
        assert b"SECRET-MARKER" not in cast.read_bytes()


async def test_contractor_scp_download_is_audited(
    env: GatewayEnv, transfers: list[dict[str, Any]]
) -> None:
    key = await env.add_user("cora", "contractor")
    assert key is not None
    made = await env.run(env.ssh_cmd("cora", "head -c 5000 /dev/urandom > out.bin", key=key))
    assert made.returncode == 0, made.stderr
    dest = env.tmp / "down.bin"
    result = await env.run(_scp(env, key, "cora@127.0.0.1:out.bin", str(dest)))
    assert result.returncode == 0, result.stderr
    events = await eventually(lambda: [e for e in transfers if e["direction"] == "download"])
    assert [(e["size"], e["sha256"]) for e in events] == [
        (5000, hashlib.sha256(dest.read_bytes()).hexdigest())
    ]


async def test_contractor_input_is_recorded(env: GatewayEnv) -> None:
    key = await env.add_user("ines", "contractor")
    assert key is not None
    typed = b"echo typed-$((6*7))\nexit\n"
    result = await env.run(env.ssh_cmd("ines", key=key, options=["-tt"]), stdin=typed)
    assert b"typed-42" in result.stdout, result.stderr
    (row,) = await ended_sessions(env.identity, "ines")
    assert row.recording is not None
    text = await asyncio.to_thread(Path(row.recording).read_text)
    lines = text.splitlines()[1:]
    inputs = "".join(event[2] for event in map(json.loads, lines) if event[1] == "i")
    assert "echo typed-$((6*7))" in inputs


async def test_developer_input_is_not_recorded(env: GatewayEnv) -> None:
    key = await env.add_user("dev")
    result = await env.run(env.ssh_cmd("dev", "true", key=key))
    assert result.returncode == 0
    (row,) = await ended_sessions(env.identity, "dev")
    assert row.recording is None


async def test_scp_without_recording_is_not_audited(
    env: GatewayEnv, transfers: list[dict[str, Any]]
) -> None:
    key = await env.add_user("dana")
    assert key is not None
    source = env.tmp / "f.txt"
    source.write_text("x")
    result = await env.run(_scp(env, key, str(source), "dana@127.0.0.1:f.txt"))
    assert result.returncode == 0, result.stderr
    await asyncio.sleep(0.3)
    assert transfers == []
