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
