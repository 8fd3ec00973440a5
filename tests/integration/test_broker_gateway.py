"""Acceptance 1 through the gateway: a real ``ssh`` client logs in to the Stockade gateway, whose
``local`` workspace session (bubblewrap, as the sandbox user) gets STOCKADE_TOKEN/STOCKADE_API;
inside it ``git clone`` over HTTPS asks git-credential-stockade, which asks the broker, which
verifies the gateway-issued session token and reads the password from OpenBao. Afterwards no file
under the workspace home holds the password.

The workspace home is wired with :func:`workspace_config` before the login, as the gateway's
backend will do for new sessions. The venv's interpreter lives under ``/root`` here, which the
sandbox user cannot read, so ``helper_python="/usr/bin/python3"`` has the helpers run from
``helpers.py`` (standard library only) on the system interpreter.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker.fixtures import openbao
from broker.gitserver import GitHttpServer, make_repo
from broker.harness import OpenBao, broker_settings
from gateway.harness import gateway_env

from stockade.broker import BrokerServer, VaultBackend, create_app, workspace_config
from stockade.bus import Bus
from stockade.tls import DevCA
from tests.conftest import IN_CI

__all__ = ["openbao"]

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 and not IN_CI, reason="the local backend's sandbox user needs root"
    ),
    pytest.mark.skipif(
        not Path("/usr/bin/python3").exists() and not IN_CI, reason="needs the system python3"
    ),
]

SANDBOX_UID = 65534


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[GitHttpServer, str, DevCA]]:
    password = "pw-" + secrets.token_urlsafe(24)
    repos = tmp_path / "repos"
    repos.mkdir()
    make_repo(repos, "project.git", {"README.md": "cloned through the gateway\n"})
    ca = DevCA(tmp_path / "git-ca")
    server = GitHttpServer(repos, ca, username="git-user", password=password)
    try:
        yield server, password, ca
    finally:
        server.close()


async def test_git_clone_inside_a_gateway_session(
    tmp_path: Path, nats_url: str, openbao: OpenBao, git_server: tuple[GitHttpServer, str, DevCA]
) -> None:
    server, password, git_ca = git_server
    broker_port = free_port()
    async with gateway_env(tmp_path, nats_url, api_url=f"https://127.0.0.1:{broker_port}") as gw:
        user = "dev" + secrets.token_hex(3)
        key = await gw.add_user(user)
        assert key is not None
        host = server.url.removeprefix("https://")
        openbao.kv_put(
            f"stockade/{user}/git/{host}", {"username": "git-user", "password": password}
        )

        bus = await Bus.connect(nats_url, name="broker-gw-test")
        vault = VaultBackend(broker_settings(openbao).vault)
        app = create_app(
            identity=gw.identity, authz=gw.authz, backends={"vault": vault}, publisher=bus
        )
        ca = DevCA(tmp_path / "broker-ca")
        broker = BrokerServer(app, tls=ca.issue("broker"), port=broker_port, owned={"vault": vault})
        await broker.start()
        try:
            home = gw.data_dir / "workspaces" / user
            home.mkdir(parents=True, mode=0o700)
            shutil.copy(git_ca.ca_cert_path, home / "git-server-ca.pem")
            os.chown(home, SANDBOX_UID, SANDBOX_UID)
            os.chown(home / "git-server-ca.pem", SANDBOX_UID, SANDBOX_UID)
            workspace_config(
                home,
                broker.url,
                broker.ca_path,
                owner=(SANDBOX_UID, SANDBOX_UID),
                helper_python="/usr/bin/python3",
            )

            command = (
                f"GIT_SSL_CAINFO=$HOME/git-server-ca.pem GIT_TERMINAL_PROMPT=0 "
                f"git clone -q {server.url}/project.git project && cat project/README.md && "
                'test -n "$STOCKADE_TOKEN" && echo "api=$STOCKADE_API"'
            )
            result = await gw.run(gw.ssh_cmd(user, command, key=key))
            assert result.returncode == 0, result.stderr.decode()
            assert result.stdout.decode() == f"cloned through the gateway\napi={broker.url}\n"
            # everything in the home belongs to the workspace's own uid (not root, not nobody)
            workspace_uid = home.stat().st_uid
            assert workspace_uid not in {0, SANDBOX_UID}
            assert {path.stat().st_uid for path in home.rglob("*")} == {workspace_uid}
            assert server.attempts[-1] == server.expected

            basic = base64.b64encode(f"git-user:{password}".encode())
            leaks = [
                str(path)
                for path in home.rglob("*")
                if path.is_file()
                and (password.encode() in path.read_bytes() or basic in path.read_bytes())
            ]
            assert leaks == []
        finally:
            await broker.stop()
            await bus.close()
