"""`stockade up` as a real process with a ``container`` workspace: the image built by
``stockade workspaces build-image``, the workspace added from a second shell, a real ``ssh``
login landing in the Pod, and ``git credential fill`` inside it answered from OpenBao through the
session's broker socket (the static helper the runtime mounts)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao

from stockade.workspace import PodmanRuntime
from stockade.workspace._volumes import unmount_below
from tests.conftest import IN_CI, files_holding
from tests.integration.test_up import Server, _keygen, cli

__all__ = ["openbao"]

pytestmark = [
    pytest.mark.root,
    pytest.mark.serial,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="rootful Podman needs root"),
    pytest.mark.timeout(300),
]


@pytest.fixture
def server(tmp_path: Path, openbao: OpenBao) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    srv.extra_env = {"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.token}
    yield srv
    if srv.proc is not None:
        srv.stop()
    podman = PodmanRuntime(data_dir=srv.data_dir).podman
    podman.run_sync("pod", "rm", "--all", "--force", "--time", "0")
    unmount_below(srv.data_dir)  # the Pods' sized volumes: pod rm leaves them mounted
    runroot = podman.argv[podman.argv.index("--runroot") + 1]
    subprocess.run([*podman.argv, "system", "reset", "--force"], env=podman.env, check=False)
    shutil.rmtree(runroot, ignore_errors=True)
    shutil.rmtree(srv.data_dir / "podman", ignore_errors=True)


def test_a_container_workspace_under_stockade_up(
    server: Server, tmp_path: Path, openbao: OpenBao
) -> None:
    built = cli(server.data_dir, "workspaces", "build-image", "--program", "/usr/bin/git")
    assert built.returncode == 0, built.stderr
    server.start()
    port = server.listening("SSH gateway")
    pub = _keygen(tmp_path / "cara")
    assert cli(server.data_dir, "users", "add", "cara", "--ssh-key", str(pub)).returncode == 0
    added = cli(server.data_dir, "workspaces", "add", "lab", "--owner", "cara",
                "--backend", "container")  # fmt: skip
    assert added.returncode == 0, added.stderr
    password = "pw-" + secrets.token_hex(12)
    openbao.kv_put("stockade/cara/git/git.example.test", {"username": "cara", "password": password})
    script = (
        "id -u; grep ^CapEff /proc/self/status;"
        "printf 'protocol=https\\nhost=git.example.test\\n\\n' | GIT_TERMINAL_PROMPT=0 "
        "git credential fill"
    )
    result = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(tmp_path / "cara"), "-p", str(port),
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-o", "LogLevel=ERROR",
         "-o", "IdentitiesOnly=yes", "cara+lab@127.0.0.1", script],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert int(lines[0]) >= 200000  # the workspace's own uid
    assert lines[1] == "CapEff:\t0000000000000000"
    assert f"password={password}" in lines
    # nothing of the secret was written anywhere in the data dir
    assert files_holding(server.data_dir, password.encode(), skip=("podman",)) == []
