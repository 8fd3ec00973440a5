"""The data dir lock, the status file and listener probes behind `stockade up` / `status`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.cli._instance import (
    InstanceLock,
    lock_holder,
    probe_listener,
    read_status,
    remove_status,
    write_status,
)
from stockade.core import StockadeError, UserError

HOLDER = """
import sys, time
from pathlib import Path
from stockade.cli._instance import InstanceLock
lock = InstanceLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


def test_second_lock_names_the_holder_pid_and_dies_with_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path) == proc.pid
        with pytest.raises(UserError) as err:
            InstanceLock(tmp_path).acquire()
        assert f"pid {proc.pid}" in str(err.value)
        assert err.value.exit_code == 2
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert lock_holder(tmp_path) is None  # the kernel dropped the lock with the process
    with InstanceLock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()
    assert lock_holder(tmp_path) is None


def test_status_file_round_trip_and_private(tmp_path: Path) -> None:
    path = write_status(tmp_path, [("SSH gateway", "127.0.0.1:2222")], nft_table="stockade_x")
    assert path.stat().st_mode & 0o777 == 0o600
    doc = read_status(tmp_path)
    assert doc is not None
    assert doc["pid"] == os.getpid()
    assert doc["listeners"] == [{"service": "SSH gateway", "address": "127.0.0.1:2222"}]
    assert doc["nft_table"] == "stockade_x"
    remove_status(tmp_path)
    assert read_status(tmp_path) is None


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"listeners": 3}', b"\xff"])
def test_malformed_status_file_is_one_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_bytes(content)
    with pytest.raises(StockadeError, match="status file"):
        read_status(tmp_path)


def test_probes(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert probe_listener(f"127.0.0.1:{port}").state == "up"
        assert probe_listener(f"https://127.0.0.1:{port}").state == "up"
        assert probe_listener(f"nats://127.0.0.1:{port}/x").state == "up"
    assert probe_listener(f"127.0.0.1:{port}").state == "down"
    path = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(path))
        unix.listen()
        assert probe_listener(str(path)).state == "up"
    assert probe_listener(str(path)).state == "down"
    assert probe_listener("sqlite:////x/stockade.db").state == "-"
    assert probe_listener("enforcers: denylist").state == "-"
    json.dumps(probe_listener("[::1]:1").__dict__)


@pytest.mark.parametrize(
    "document",
    [
        {"listeners": [{"service": "ssh", "address": "127.0.0.1:99999"}]},  # no such port
        {"listeners": [], "versions": "stockade 1"},
        {"listeners": [], "versions": {"stockade": ["1"]}, "pid": "1; x", "started": 5},
        {"listeners": [{"service": ["x"], "address": 7}], "tls_errors": ["x"]},
    ],
    ids=["port", "versions", "types", "listener-types"],
)
def test_status_reads_an_odd_status_file_without_a_traceback(
    tmp_path: Path, document: dict[str, object]
) -> None:
    """``stockade status`` reads a file another process wrote: odd fields (a port out of range,
    a text where a table goes, a pid that is not the lock holder's) are reported or ignored,
    never a traceback."""
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "run" / "status.json").write_text(json.dumps(document))
    env = {**os.environ, "STOCKADE_DATA_DIR": str(tmp_path)}
    with InstanceLock(tmp_path):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "stockade"), "status", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), (done.returncode, done.stdout, done.stderr)
    # the pid is the lock holder's (the kernel's word), not what the file says
    assert f"stockade up: pid {os.getpid()}," in done.stdout, done.stdout
