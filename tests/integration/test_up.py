"""`stockade up` as a real process: admin commands from a second shell, kill -9 loses nothing."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway.harness import remove_workspace_netns

STOCKADE = str(Path(sys.executable).parent / "stockade")


# serial: whole `stockade up` processes, each bounded in time; another worker's load skews them
pytestmark = pytest.mark.serial


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update(
        STOCKADE_DATA_DIR=str(data_dir),
        STOCKADE_API__PORT="0",
        STOCKADE_GATEWAY__PORT="0",
        STOCKADE_BROKER__PORT="0",
        STOCKADE_LOG__JSON_OUTPUT="true",
        STOCKADE_SHIELD__ENFORCERS='["denylist"]',  # never touch the host's nftables here
    )
    return env


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.banner: list[str] = []
        self.extra_env: dict[str, str] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [STOCKADE, "up"],
            env={**_env(self.data_dir), **self.extra_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        self.banner = []
        for line in self.proc.stdout:
            self.banner.append(line)
            if "ready" in line:
                return
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"stockade up did not become ready (exit {self.proc.poll()})")

    def listening(self, service: str) -> int:
        """The port the start-up banner shows for ``service``."""
        for line in self.banner:
            if service in line:
                match = re.search(r"127\.0\.0\.1:(\d+)", line)
                if match:
                    return int(match.group(1))
        raise AssertionError(f"{service} not in banner: {self.banner}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None
        remove_workspace_netns(self.data_dir)  # its gateway keeps them for its next start
        return code


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    yield srv
    if srv.proc is not None:
        srv.stop(signal.SIGKILL)


def cli(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKADE, *args],
        env=_env(data_dir),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def test_users_from_second_shell_and_kill_9_keeps_them(server: Server, tmp_path: Path) -> None:
    server.start()
    socket = server.data_dir / "run" / "admin.sock"
    assert socket.exists()
    pub = _keygen(tmp_path / "alice")

    added = cli(
        server.data_dir, "users", "add", "alice", "--role", "developer", "--ssh-key", str(pub)
    )
    assert added.returncode == 0, added.stderr
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    server.start()
    listed = cli(server.data_dir, "users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    users = json.loads(listed.stdout)
    assert [u["name"] for u in users] == ["alice"]
    expected = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert users[0]["keys"][0]["fingerprint"] == expected
    assert server.stop() == 0
    assert not socket.exists()


def test_ssh_login_through_stockade_up(server: Server, tmp_path: Path) -> None:
    server.start()
    port = server.listening("SSH gateway")
    key = tmp_path / "dana"
    pub = _keygen(key)
    assert cli(server.data_dir, "users", "add", "dana", "--ssh-key", str(pub)).returncode == 0
    result = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "dana@127.0.0.1", "echo hi",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    sessions = json.loads(cli(server.data_dir, "sessions", "list", "--json").stdout)
    assert [s["username"] for s in sessions] == ["dana"]

    # The session's home was wired to the credential helpers by stockade up (configuration only).
    wired = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "dana@127.0.0.1",
            "git config --get-all credential.helper; cat ~/.docker/config.json;"
            " command -v docker-credential-stockade; printf 'protocol=https\\nhost=h\\n\\n'"
            " | git credential fill",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "git-credential-stockade" in wired.stdout, wired.stderr
    assert '"credsStore": "stockade"' in wired.stdout
    assert "/.stockade/bin/docker-credential-stockade" in wired.stdout
    # the helper ran and reached the broker, which has no secrets backend configured here
    assert "git-credential-stockade:" in wired.stderr
    assert "no secrets backend configured for git h (set VAULT_ADDR)" in wired.stderr


def test_clean_shutdown_on_sigterm_and_sigint(server: Server) -> None:
    server.start()
    assert server.stop(signal.SIGINT) == 0
    server.start()
    assert server.stop(signal.SIGTERM) == 0


def test_admin_commands_work_with_nothing_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(data, "users", "add", "bob", "--role", "contractor").returncode == 0
    shown = cli(data, "users", "show", "bob", "--json")
    assert json.loads(shown.stdout)["roles"] == ["contractor"]
    token = cli(data, "token", "issue", "bob", "--ttl", "5m")
    assert token.returncode == 0, token.stderr
    verified = cli(data, "token", "verify", "--json", "-", stdin=token.stdout)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["sub"] == "bob"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["users", "show", "ghost"], "user 'ghost' not found"),
        (["users", "add", "Bad Name"], "name"),
        (["users", "add", "dave", "--ssh-key", "/nonexistent.pub"], "/nonexistent.pub"),
        (["token", "issue", "ghost", "--ttl", "soon"], "--ttl"),
        (["users", "add", "erin", "--ssh-key", "-"], "unsupported key type"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = cli(tmp_path / "data", *args, stdin="not a key\n")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_weak_and_duplicate_keys_write_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rsa = tmp_path / "weak"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True
    )
    good = _keygen(tmp_path / "good")
    weak = cli(data, "users", "add", "frank", "--ssh-key", str(good), "--ssh-key", f"{rsa}.pub")
    assert weak.returncode == 2
    assert "3072" in weak.stderr
    assert json.loads(cli(data, "users", "list", "--json").stdout) == []  # nothing partial

    assert cli(data, "users", "add", "grace", "--ssh-key", str(good)).returncode == 0
    dup = cli(data, "users", "add", "heidi", "--ssh-key", str(good))
    assert dup.returncode == 2
    assert "grace" in dup.stderr
    names = [u["name"] for u in json.loads(cli(data, "users", "list", "--json").stdout)]
    assert names == ["grace"]


def test_shield_metrics_on_the_broker(server: Server) -> None:
    server.start()
    port = server.listening("credential broker")
    ca = server.data_dir / "tls" / "ca.pem"
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/metrics", context=context, timeout=10
    ) as response:
        body = response.read().decode()
    assert response.status == 200
    assert "stockade_shield_events_consumed_total" in body
    assert "stockade_shield_active_bans" in body


def test_second_up_on_same_data_dir_exits_2_naming_the_holder(server: Server) -> None:
    server.start()
    assert server.proc is not None
    second = subprocess.run(
        [STOCKADE, "up"],
        env=_env(server.data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"pid {server.proc.pid}" in lines[0]
    # the refused instance touched nothing of the first: its admin socket still answers
    assert cli(server.data_dir, "users", "add", "carol").returncode == 0
    assert (server.data_dir / "run" / "admin.sock").exists()


def _status_until(data_dir: Path, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``stockade status --json`` once ``ready`` holds for it (bounded: 30 s)."""
    for _ in range(60):
        doc: dict[str, Any] = json.loads(cli(data_dir, "status", "--json").stdout)
        if ready(doc):
            return doc
        time.sleep(0.5)
    raise AssertionError(f"status never became ready: {doc}")


def test_status_reports_what_runs_and_probes_it(server: Server) -> None:
    server.start()
    assert server.proc is not None
    result = cli(server.data_dir, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["running"] is True
    assert doc["pid"] == server.proc.pid
    assert doc["healthy"] is True
    assert doc["versions"]["stockade"]
    services = {item["service"]: item for item in doc["listeners"]}
    assert services["SSH gateway"]["state"] == "up"
    assert services["credential broker (HTTPS)"]["state"] == "up"
    assert services["admin API (gRPC, unix socket 0600)"]["state"] == "up"
    assert doc["nft_table"].startswith("stockade_")
    table = cli(server.data_dir, "status")
    assert "SSH gateway" in table.stdout
    # a certificate replaced by garbage: the old one keeps serving, and status says why
    cert = server.data_dir / "tls" / "api.pem"
    good = cert.read_bytes()
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    doc = _status_until(server.data_dir, lambda doc: bool(doc["tls_errors"]))
    assert doc["healthy"] is False
    assert "api.pem" in doc["tls_errors"]["certificate"]
    shown = cli(server.data_dir, "status")
    assert shown.returncode == 1
    assert "TLS certificate" in shown.stdout
    assert "previous certificate stays in use" in shown.stdout
    cert.write_bytes(good)
    assert _status_until(server.data_dir, lambda doc: not doc["tls_errors"])["healthy"] is True
    server.stop()
    after = cli(server.data_dir, "status", "--json")
    assert after.returncode == 1
    assert json.loads(after.stdout)["running"] is False
    assert not (server.data_dir / "run" / "status.json").exists()


def test_session_kubeconfig_from_broker_clusters(server: Server, tmp_path: Path) -> None:
    ca = tmp_path / "prod-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIBprodCA\n-----END CERTIFICATE-----\n")
    server.extra_env = {
        "STOCKADE_BROKER__CLUSTERS": json.dumps(
            [
                {"name": "prod", "server": "https://10.0.0.1:6443", "ca_file": str(ca)},
                {"name": "dev", "server": "https://dev.example:443"},
            ]
        )
    }
    server.start()
    port = server.listening("SSH gateway")
    key = tmp_path / "erin"
    pub = _keygen(key)
    assert cli(server.data_dir, "users", "add", "erin", "--ssh-key", str(pub)).returncode == 0
    result = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "erin@127.0.0.1", "cat ~/.kube/config",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kube = json.loads(result.stdout)
    clusters = {c["name"]: c["cluster"] for c in kube["clusters"]}
    assert clusters["prod"]["server"] == "https://10.0.0.1:6443"
    assert base64.b64decode(clusters["prod"]["certificate-authority-data"]) == ca.read_bytes()
    assert clusters["dev"] == {"server": "https://dev.example:443"}
    users = {u["name"]: u["user"]["exec"] for u in kube["users"]}
    assert users["stockade@prod"]["args"] == ["--cluster", "prod"]
    assert "token" not in result.stdout.lower()  # configuration only: the helper brings tokens
