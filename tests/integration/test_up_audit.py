"""Issue 11 end to end through ``stockade up`` (a real process): a recording survives ``kill -9``
and the session is marked crashed; a contractor's ``scp -O`` upload lands in the audit trail
with its SHA-256, and the contractor's typed input in the cast."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.test_up import Server, _keygen, cli

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    yield srv
    if srv.proc is not None:
        srv.stop(signal.SIGKILL)


def _ssh(port: int, key: Path, kh: Path) -> list[str]:
    return ["ssh", "-p", str(port), *_options(key, kh)]


def _options(key: Path, kh: Path) -> list[str]:
    return [
        "-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "KexAlgorithms=curve25519-sha256", "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def _sessions(data_dir: Path) -> list[dict[str, object]]:
    listed = cli(data_dir, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, object]] = json.loads(listed.stdout)
    return rows


def _until(check: object, within: float = 30.0) -> object:
    deadline = time.monotonic() + within
    while True:
        value = check()  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_kill_9_during_a_recorded_session_keeps_the_cast_and_marks_it_crashed(
    server: Server, tmp_path: Path
) -> None:
    server.start()
    port = server.listening("SSH gateway")
    key = tmp_path / "carl"
    pub = _keygen(key)
    added = cli(server.data_dir, "users", "add", "carl", "--role", "contractor", "--ssh-key",
                str(pub))  # fmt: skip
    assert added.returncode == 0, added.stderr
    script = "for i in $(seq 1 40); do echo line-$i; sleep 0.5; done"
    client = subprocess.Popen(
        [*_ssh(port, key, tmp_path / "kh"), "carl@127.0.0.1", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        first = client.stdout.readline()
        assert first == b"line-1\n", first
        time.sleep(4)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        client.kill()
        client.communicate()  # reaps it and closes its pipes
    server.start()
    # the restart's sweep ends it ("crashed") when the dead boot is silent beyond its timeout
    # by then, else the restart's heartbeat does moments later ("gateway_lost"): a boot that
    # may still beat is never swept
    (row,) = _until(
        lambda: [r for r in _sessions(server.data_dir) if r["username"] == "carl" and r["ended_at"]]
    )
    assert row["end_reason"] in ("crashed", "gateway_lost"), row
    assert row["recording"], row
    played = cli(server.data_dir, "sessions", "play", str(row["session_id"]), "--speed", "100")
    assert played.returncode == 0, played.stderr
    lines = [ln for ln in played.stdout.replace("\r", "").splitlines() if ln.startswith("line-")]
    assert lines[:6] == [f"line-{i}" for i in range(1, 7)], played.stdout
    assert server.stop() == 0


def test_contractor_scp_upload_is_in_the_audit_trail(server: Server, tmp_path: Path) -> None:
    server.start()
    port = server.listening("SSH gateway")
    key = tmp_path / "cora"
    pub = _keygen(key)
    added = cli(server.data_dir, "users", "add", "cora", "--role", "contractor", "--ssh-key",
                str(pub))  # fmt: skip
    assert added.returncode == 0, added.stderr
    payload = os.urandom(70_000)
    source = tmp_path / "report.bin"
    source.write_bytes(payload)
    scp = subprocess.run(
        ["scp", "-O", "-P", str(port), *_options(key, tmp_path / "kh"),
         str(source), "cora@127.0.0.1:report.bin"],
        capture_output=True, env=CLEAN, timeout=60, check=False,
    )  # fmt: skip
    assert scp.returncode == 0, scp.stderr

    def uploads() -> list[dict[str, object]]:
        found = cli(server.data_dir, "audit", "search", "--action", "file.upload", "--json")
        assert found.returncode == 0, found.stderr
        return list(json.loads(found.stdout)["events"])

    events = _until(uploads)
    assert events, "the upload never reached the audit trail"
    event = events[0]["event"]  # type: ignore[index]
    assert event["sha256"] == hashlib.sha256(payload).hexdigest()
    assert event["size"] == len(payload)
    assert event["username"] == "cora"
    typed = subprocess.run(
        [*_ssh(port, key, tmp_path / "kh"), "-tt", "cora@127.0.0.1"],
        input=b"echo typed-$((6*7))\nexit\n", capture_output=True, env=CLEAN, timeout=60,
        check=False,
    )  # fmt: skip
    assert b"typed-42" in typed.stdout, typed.stderr

    def recorded() -> list[dict[str, object]]:
        rows = _sessions(server.data_dir)
        return [r for r in rows if r["username"] == "cora" and r["recording"] and r["ended_at"]]

    rows = _until(recorded)
    cast = Path(str(rows[0]["recording"]))  # type: ignore[index]
    text = cast.read_text() if cast.exists() else ""
    inputs = "".join(e[2] for e in map(json.loads, text.splitlines()[1:]) if e[1] == "i")
    assert "echo typed-$((6*7))" in inputs
    assert server.stop() == 0
