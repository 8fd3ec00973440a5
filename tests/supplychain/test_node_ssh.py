"""`stockade node keys|harden|users` against a real sshd started by the test on loopback.

The sshd runs as root with a clean environment (``env -i``) on a free 127.0.0.1 port, its own host
key, pid file and a drop-in directory this test controls. A throw-away local account (``useradd``,
removed afterwards) has a password, so "password login fails after harden" is tested for real.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stockade.cli import node as node_cli
from stockade.supplychain._nodekeys import render_add_keys, render_harden, render_remove_tagged
from tests.conftest import IN_CI

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 and not IN_CI, reason="starts sshd and adds a local user: needs root"
    ),
]

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
root_app = typer.Typer()
root_app.add_typer(node_cli.app, name="node")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """The running test sshd and what the test needs to reach it."""

    dir: Path
    port: int
    config: Path
    dropin: Path
    user: str
    password: str
    root_key: Path
    known_hosts: Path
    askpass: Path

    @property
    def reload(self) -> str:
        return f'kill -HUP "$(cat {self.dir}/sshd.pid)"'

    def base(self, *extra: str) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ConnectTimeout=5",
            "-F",
            "/dev/null",
            *extra,
        ]

    def key_login(self, key: Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = self.base("-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes")
        cmd += ["-o", "PasswordAuthentication=no", f"{user or self.user}@127.0.0.1", "echo ok"]
        return subprocess.run(cmd, capture_output=True, text=True, env={}, check=False)

    def password_login(self) -> subprocess.CompletedProcess[str]:
        cmd = self.base("-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1")
        cmd += ["-o", "PreferredAuthentications=password,keyboard-interactive"]
        cmd += [f"{self.user}@127.0.0.1", "echo ok"]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=self.askpass_env(), check=False
        )

    def askpass_env(self) -> dict[str, str]:
        return {"SSH_ASKPASS": str(self.askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}

    def authorized_keys(self) -> str:
        return Path(f"/home/{self.user}/.ssh/authorized_keys").read_text()

    def connection_args(self, user: str | None = None) -> list[str]:
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--known-hosts"]
        return [*args, str(self.known_hosts), "--user", user or self.user]


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True
    )
    return path


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A real sshd on 127.0.0.1:free-port plus a local account with a password."""
    work = tmp_path / "sshd"
    (work / "sshd_config.d").mkdir(parents=True)
    (work / "authorized").mkdir()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    _keygen(work / "host_ed25519")
    root_key = _keygen(work / "root_key")
    shutil.copy(work / "root_key.pub", work / "authorized" / "root")
    port = _free_port()
    config = work / "sshd_config"
    config.write_text(
        f"Include {work}/sshd_config.d/*.conf\n"
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {work}/host_ed25519\n"
        f"PidFile {work}/sshd.pid\n"
        f"AuthorizedKeysFile .ssh/authorized_keys {work}/authorized/%u\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PasswordAuthentication yes\n"
        "KbdInteractiveAuthentication yes\n"
        "PermitRootLogin prohibit-password\n"
    )
    user = f"stk{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
    askpass = work / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
    askpass.chmod(0o700)
    proc = None
    log = (work / "sshd.log").open("w")
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        proc = subprocess.Popen(
            ["env", "-i", SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log
        )
        node = Node(
            dir=work,
            port=port,
            config=config,
            dropin=work / "sshd_config.d",
            user=user,
            password=password,
            root_key=root_key,
            known_hosts=work / "known_hosts",
            askpass=askpass,
        )
        _wait_for_login(node, root_key, "root")
        yield node
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        log.close()
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def _wait_for_login(node: Node, key: Path, user: str) -> None:
    """sshd re-execs on start and on SIGHUP: retry a key login until it answers."""
    deadline = time.monotonic() + 20
    while True:
        done = node.key_login(key, user)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr + (node.dir / "sshd.log").read_text()
            return
        time.sleep(0.1)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(root_app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_keys_generate_is_ed25519_0600_with_owner_and_host(tmp_path: Path) -> None:
    key = tmp_path / "k" / "id_ed25519"
    code, out, err = run(
        "node", "keys", "generate", "-o", str(key), "--owner", "ops", "--host", "node1"
    )
    assert code == 0, err
    assert out.startswith("ssh-ed25519 ")
    assert out.strip().endswith("stockade:ops@node1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=True
    )
    assert "(ED25519)" in listed.stdout
    code, _, err = run("node", "keys", "generate", "-o", str(key))
    assert code == 2
    assert "already exists" in err


def test_deploy_harden_then_password_fails_and_key_works(node: Node) -> None:
    key = node.dir / "node_key"
    code, _, err = run(
        "node", "keys", "generate", "-o", str(key), "--owner", "ops", "--host", "testnode"
    )
    assert code == 0, err
    # Someone else's key already there, without a trailing newline: it must survive intact.
    ssh_dir = Path(f"/home/{node.user}/.ssh")
    ssh_dir.mkdir(mode=0o700)
    other = _keygen(node.dir / "other_key")
    other_line = (node.dir / "other_key.pub").read_text().strip()
    (ssh_dir / "authorized_keys").write_text(other_line)
    shutil.chown(ssh_dir, node.user, node.user)
    shutil.chown(ssh_dir / "authorized_keys", node.user, node.user)

    before = node.password_login()
    assert before.returncode == 0, before.stderr  # the test can tell a password login works

    env = {**node.askpass_env(), "SSH_AUTH_SOCK": ""}
    deploy = ["node", "keys", "deploy", *node.connection_args(), "--key", f"{key}.pub"]
    code, out, err = run(*deploy, env=env)
    assert code == 0, err
    assert "key added" in out
    code, out, err = run(*deploy, env=env)
    assert code == 0, err
    assert "key present" in out
    lines = node.authorized_keys().splitlines()
    assert lines[0] == other_line
    assert len(lines) == 2
    assert lines[1].endswith("stockade:ops@testnode")
    assert node.key_login(key).returncode == 0
    assert node.key_login(other).returncode == 0

    harden = ["node", "harden", *node.connection_args("root"), "--identity", str(node.root_key)]
    harden += ["--sshd-config", str(node.config), "--dropin-dir", str(node.dropin)]
    harden += ["--reload-command", node.reload]

    # Induced `sshd -t` failure: the previous drop-in comes back, the node keeps working.
    previous = node.dropin / "00-stockade-hardening.conf"
    previous.write_text("# previous drop-in\n")
    broken = node.dropin / "zz-broken.conf"
    broken.write_text("ThisIsNotADirective yes\n")
    code, _, err = run(*harden)
    assert code == 1
    assert "sshd -t rejected the configuration; previous drop-in kept" in err
    assert previous.read_text() == "# previous drop-in\n"
    assert sorted(p.name for p in node.dropin.iterdir()) == [previous.name, broken.name]
    assert node.password_login().returncode == 0

    broken.unlink()
    code, out, err = run(*harden)
    assert code == 0, err
    assert "hardened" in out
    assert "PasswordAuthentication no" in previous.read_text()
    _wait_for_login(node, key, node.user)

    after = node.password_login()
    assert after.returncode == 255
    assert "Permission denied (publickey)" in after.stderr
    assert node.key_login(key).returncode == 0
    root_login = node.key_login(node.root_key, "root")
    assert root_login.returncode == 255
    effective = subprocess.run(
        [SSHD, "-T", "-f", str(node.config)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for expected in ("passwordauthentication no", "kbdinteractiveauthentication no"):
        assert expected in effective
    assert "permitrootlogin no" in effective


def test_users_add_list_remove(node: Node, tmp_path: Path) -> None:
    login = node.dir / "login_key"
    _keygen(login)
    ssh_dir = Path(f"/home/{node.user}/.ssh")
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text((node.dir / "login_key.pub").read_text())
    shutil.chown(ssh_dir, node.user, node.user)
    shutil.chown(ssh_dir / "authorized_keys", node.user, node.user)
    conn = [*node.connection_args(), "--identity", str(login)]
    keys_dir = tmp_path / "users"

    for name in ("alice", "bob"):
        code, out, err = run("node", "users", "add", name, *conn, "--keys-dir", str(keys_dir))
        assert code == 0, err
        assert f"{name}: key added" in out
    code, out, _ = run("node", "users", "add", "alice", *conn, "--keys-dir", str(keys_dir))
    assert "alice: key present" in out
    alice_key = keys_dir / "alice_ed25519"
    assert stat.S_IMODE(alice_key.stat().st_mode) == 0o600
    assert node.key_login(alice_key).returncode == 0

    code, out, err = run("node", "users", "list", *conn, "--json")
    assert code == 0, err
    users = json.loads(out)
    assert [u["name"] for u in users] == ["alice", "bob"]
    assert all(
        u["key_type"] == "ssh-ed25519" and u["fingerprint"].startswith("SHA256:") for u in users
    )

    code, out, err = run("node", "users", "remove", "alice", *conn)
    assert code == 0, err
    assert "1 key(s) revoked" in out
    assert node.key_login(alice_key).returncode == 255
    assert node.key_login(keys_dir / "bob_ed25519").returncode == 0
    assert node.key_login(login).returncode == 0
    remaining = node.authorized_keys()
    assert "stockade-user:alice" not in remaining
    assert (node.dir / "login_key.pub").read_text().strip() in remaining

    code, _, err = run("node", "users", "remove", "alice", *conn)
    assert code == 1
    assert "alice: no key" in err


def test_unreachable_node_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k"
    run("node", "keys", "generate", "-o", str(key))
    code, _, err = run(
        "node",
        "keys",
        "deploy",
        "--host",
        "127.0.0.1",
        "--port",
        str(_free_port()),
        "--user",
        "nobody",
        "--key",
        f"{key}.pub",
        "--known-hosts",
        str(tmp_path / "kh"),
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "ssh nobody@127.0.0.1" in err


def test_bad_host_name_is_refused(tmp_path: Path) -> None:
    code, _, err = run("node", "harden", "--host", "-oProxyCommand=x")
    assert code == 2
    assert "--host" in err


def test_scripts_quote_their_inputs() -> None:
    script = render_add_keys(["ssh-ed25519 AAAAC3Nza stockade-user:o'brien"])
    assert "'ssh-ed25519 AAAAC3Nza stockade-user:o'\"'\"'brien'" in script
    assert "tag='stockade-user:x y'" in render_remove_tagged("stockade-user:x y")
    harden = render_harden(config="/etc/ssh/sshd config", dropin_dir="/d")
    assert "cfg='/etc/ssh/sshd config'" in harden
    assert "f=/d/00-stockade-hardening.conf" in harden
