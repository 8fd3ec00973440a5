"""Acceptance 1: a real ``git clone`` over HTTPS (git http-backend behind Basic auth) with the
password read from OpenBao through the broker, in a workspace home configured by
``workspace_config`` and the environment a gateway session gets; afterwards no file holds it."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker.fixtures import env, openbao
from broker.gitserver import GitHttpServer, make_repo
from broker.harness import BrokerEnv

from stockade.broker import workspace_config
from stockade.tls import DevCA

__all__ = ["env", "openbao"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[GitHttpServer, str, DevCA]]:
    password = "pw-" + secrets.token_urlsafe(24)
    repos = tmp_path / "repos"
    repos.mkdir()
    make_repo(repos, "project.git", {"README.md": "hello from the loopback git server\n"})
    ca = DevCA(tmp_path / "git-ca")
    server = GitHttpServer(repos, ca, username="git-user", password=password)
    try:
        yield server, password, ca
    finally:
        server.close()


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {needle[:6]!r}..." for needle in needles if needle in data]
    return hits


async def test_git_clone_with_a_credential_from_openbao(
    env: BrokerEnv, git_server: tuple[GitHttpServer, str, DevCA]
) -> None:
    server, password, git_ca = git_server
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    host = server.url.removeprefix("https://")
    assert env.bao is not None
    env.bao.kv_put(f"stockade/{user}/git/{host}", {"username": "git-user", "password": password})
    _sid, token = await env.session_token(user)
    home = env.tmp / "workspaces" / user
    home.mkdir(parents=True)
    workspace_config(home, env.url, env.ca)

    session = env.session_env(
        token, home, GIT_SSL_CAINFO=str(git_ca.ca_cert_path), GIT_TERMINAL_PROMPT="0"
    )
    result = await env.run(
        ["git", "clone", "-q", f"{server.url}/project.git", "project"], env=session, cwd=home
    )
    assert result.returncode == 0, result.stderr.decode()
    assert (home / "project" / "README.md").read_text() == "hello from the loopback git server\n"
    assert server.attempts[0] == ""  # git asked for credentials after the 401
    assert server.attempts[-1] == server.expected

    basic = base64.b64encode(f"git-user:{password}".encode())
    assert files_containing(home, [password.encode(), basic, token.encode()]) == []
    assert files_containing(env.tmp / "workspaces", [password.encode(), basic]) == []

    events = await env.events.wait_for(1, username=user, kind="git")
    assert events[0]["target"] == host
    assert events[0]["allow"] is True


async def test_git_clone_fails_cleanly_once_the_session_ended(
    env: BrokerEnv, git_server: tuple[GitHttpServer, str, DevCA]
) -> None:
    server, password, git_ca = git_server
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    env.bao.kv_put(
        f"stockade/{user}/git/{server.url.removeprefix('https://')}",
        {"username": "git-user", "password": password},
    )
    sid, token = await env.session_token(user)
    await env.identity.end_session(sid, reason="test")
    home = env.tmp / "home"
    home.mkdir()
    workspace_config(home, env.url, env.ca)
    session = env.session_env(
        token, home, GIT_SSL_CAINFO=str(git_ca.ca_cert_path), GIT_TERMINAL_PROMPT="0"
    )
    result = await env.run(
        ["git", "clone", "-q", f"{server.url}/project.git", "project"], env=session, cwd=home
    )
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "git-credential-stockade: session token rejected (session_ended)" in stderr
    assert not (home / "project").exists()
    assert files_containing(home, [password.encode()]) == []
