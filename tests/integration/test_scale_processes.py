"""Issue 13, acceptance 1 and 2: every service in its own process (``stockade serve``) against
PostgreSQL and NATS, two gateways sharing one state.

Identity, authz, broker, shield, audit and two gateways run as separate ``stockade serve``
processes (their own data dirs, one shared dev CA, gRPC over mutual TLS between them). Real
OpenSSH logs in through each gateway; a session fetches a git credential through the broker
(OpenBao behind it); a brute force through gateway A gets its source banned at gateway B.
Then ``kill -9`` of gateway A while a session is open on it: gateway B's heartbeat ends that
session in the store and its token stops fetching credentials (bounded waits).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from broker.harness import OpenBao, start_openbao
from gateway.harness import remove_workspace_netns

from stockade.tls import DevCA

STOCKADE = str(Path(sys.executable).parent / "stockade")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: A stand-in attacker: 127.0.0.1 and ::1 are allowlisted by the shield, the rest of 127/8 not.
ATTACKER = "127.0.0.77"


@dataclass
class Service:
    name: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    banner: list[str] = field(default_factory=list)
    _log: Any = None

    def launch(self) -> Service:
        self._log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("w")
        self.proc = subprocess.Popen(
            [STOCKADE, "serve", self.name, "--data-dir", str(self.data_dir)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        return self

    def wait_ready(self) -> Service:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded: the process exits or says ready (test timeout)
            self.banner.append(line)
            if "ready" in line:
                return self
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").read_text()[-3000:]
        raise AssertionError(
            f"stockade serve {self.name} did not become ready (exit {self.proc.poll()}):"
            f" {''.join(self.banner)} {log}"
        )

    def port(self, what: str) -> int:
        for line in self.banner:
            if what in line:
                match = re.search(r"127\.0\.0\.1:(\d+)", line)
                if match:
                    return int(match.group(1))
        raise AssertionError(f"{what} not in the banner of {self.name}: {self.banner}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
        self.proc = None
        remove_workspace_netns(self.data_dir)  # a gateway's sandboxes' own
        return code


@dataclass
class Cluster:
    tmp: Path
    bao: OpenBao
    db: str
    base_env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, **extra}

    def run(self, *specs: tuple[str, str, dict[str, str]]) -> list[Service]:
        """Start ``(service, data dir name, extra env)`` processes at once; wait for all."""
        started = []
        for name, data, extra in specs:
            service = Service(name, self.tmp / data, self.env(**extra)).launch()
            self.services[data] = service
            started.append(service)
        return [service.wait_ready() for service in started]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STOCKADE, *args],
            env=self.env(STOCKADE_DATA_DIR=str(self.tmp / "identity")),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def sessions(self) -> list[dict[str, object]]:
        """The session registry as the store holds it (``sessions list`` shows no gateway)."""
        query = "SELECT id, username, gateway_id, ended_at, end_reason FROM sessions"
        out = subprocess.run(
            ["psql", self.db, "-At", "-F", "\t", "-c", query],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        keys = ("id", "username", "gateway_id", "ended_at", "end_reason")
        rows = [dict(zip(keys, line.split("\t"), strict=True)) for line in out.splitlines()]
        for row in rows:
            row["ended_at"] = row["ended_at"] or None
        return rows  # type: ignore[return-value]


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str, pg_schema_url: str) -> Iterator[Cluster]:
    tls = tmp_path / "tls"
    DevCA(tls).ensure()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKADE_", "VAULT_"))}
    env.update(
        COLUMNS="200",
        STOCKADE_BUS__URL=nats_url,
        STOCKADE_STORE__URL=pg_schema_url,
        STOCKADE_TLS__DIRECTORY=str(tls),
        STOCKADE_API__PORT="0",
        STOCKADE_LOG__JSON_OUTPUT="true",
        STOCKADE_SHIELD__ENFORCERS='["denylist"]',  # never the host's nftables
        STOCKADE_SHIELD__THRESHOLD="3",
        STOCKADE_AUTHZ__DECISION_LOG="false",
    )
    with start_openbao(tmp_path) as bao:
        cluster = Cluster(tmp_path, bao, pg_schema_url, env)
        try:
            yield cluster
        finally:
            for service in reversed(list(cluster.services.values())):
                service.stop(signal.SIGKILL)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def _ssh(key: Path, port: int, known: Path, command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10",
        "dana@127.0.0.1", command,
    ]  # fmt: skip


def _fetch_git(broker_port: int, ca: Path, token: str) -> int:
    """POST /v1/credentials/git with the session token; the HTTP status."""
    request = urllib.request.Request(
        f"https://127.0.0.1:{broker_port}/v1/credentials/git",
        method="POST",
        data=json.dumps({"protocol": "https", "host": "git.example"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def _brute_force(port: int, attempts: int) -> int:
    """Failed password logins from ATTACKER; how many connections got an SSH banner."""
    answered = 0
    for i in range(attempts):
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, local_addr=(ATTACKER, 0), username=f"root{i}",
                password="hunter2", known_hosts=None, client_keys=None, agent_path=None,
                preferred_auth="password", connect_timeout=5,
            ):  # fmt: skip
                pass
        except asyncssh.PermissionDenied:
            answered += 1
        except (OSError, asyncssh.Error, TimeoutError):
            return answered  # refused before the SSH banner: banned
    return answered


def _banned_at(port: int) -> bool:
    """Does the gateway on ``port`` close a connection from ATTACKER before any SSH byte?"""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(ATTACKER, 0)
    ) as s:
        s.settimeout(5)
        try:
            return s.recv(64) == b""
        except ConnectionResetError:
            return True


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_service_in_its_own_process_and_two_gateways_share_one_state(
    cluster: Cluster, tmp_path: Path
) -> None:
    identity, authz = cluster.run(("identity", "identity", {}), ("authz", "authz", {}))
    peers = {
        "STOCKADE_PEERS__IDENTITY": f"127.0.0.1:{identity.port('internal API')}",
        "STOCKADE_PEERS__AUTHZ": f"127.0.0.1:{authz.port('internal API')}",
    }
    broker_env = {
        **peers,
        "STOCKADE_BROKER__PORT": "0",
        "VAULT_ADDR": cluster.bao.addr,
        "VAULT_TOKEN": cluster.bao.token,
    }
    broker, _, _ = cluster.run(
        ("broker", "broker", broker_env), ("audit", "audit", {}), ("shield", "shield", {})
    )
    broker_port = broker.port("credential broker")
    gateway_env = {
        **peers,
        "STOCKADE_GATEWAY__PORT": "0",
        "STOCKADE_GATEWAY__API_URL": f"https://127.0.0.1:{broker_port}",
        "STOCKADE_GATEWAY__HEARTBEAT_INTERVAL": "0.5",
        "STOCKADE_GATEWAY__HEARTBEAT_TIMEOUT": "2",
        # the broker runs in another process: sandbox sessions reach it over the host's
        # loopback (with their token), which a namespace of their own would cut off
        "STOCKADE_WORKSPACE__SANDBOX_NETWORK": "false",
    }
    gw_a, gw_b = cluster.run(
        ("gateway", "gateway-a", gateway_env), ("gateway", "gateway-b", gateway_env)
    )
    port_a, port_b = gw_a.port("SSH gateway"), gw_b.port("SSH gateway")
    assert port_a != port_b

    # every service answers health and says where it listens
    probes = {
        service.name + service.data_dir.name: subprocess.Popen(
            [STOCKADE, "status", "--json", "--data-dir", str(service.data_dir)],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for service in cluster.services.values()
    }
    for name, probe in probes.items():
        out, err = probe.communicate(timeout=120)
        assert probe.returncode == 0, (name, out, err)
        assert json.loads(out)["healthy"] is True, name

    key = tmp_path / "dana"
    pub = _keygen(key)
    added = cluster.cli("users", "add", "dana", "--role", "developer", "--ssh-key", str(pub))
    assert added.returncode == 0, added.stderr
    password = "pw-from-openbao-7f3a"
    cluster.bao.kv_put("stockade/dana/git/git.example", {"username": "dana", "password": password})
    known = tmp_path / "known_hosts"

    # 1. a real OpenSSH login through each gateway; a credential fetch through the broker
    for port in (port_a, port_b):
        result = subprocess.run(
            _ssh(key, port, known, "echo hi; printf 'protocol=https\\nhost=git.example\\n\\n'"
                 " | git credential fill"),
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("hi\n"), result.stdout
        assert f"password={password}" in result.stdout, result.stderr
    gateways = {s["gateway_id"] for s in cluster.sessions() if s["username"] == "dana"}
    assert len(gateways) == 2, gateways  # one state, two gateways with distinct ids

    # 2. a brute force through gateway A is banned at gateway B
    answered = asyncio.run(_brute_force(port_a, 12))
    assert 1 <= answered < 12
    _wait("the ban to reach gateway B", lambda: _banned_at(port_b))
    assert _banned_at(port_a)
    bystander = subprocess.run(
        _ssh(key, port_b, known, "echo still-in"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bystander.stdout == "still-in\n", bystander.stderr

    # 3. kill -9 of gateway A with a live session: ended in the store, its token revoked
    live = subprocess.Popen(
        _ssh(key, port_a, known, 'echo "$STOCKADE_TOKEN"; exec sleep 120'),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert live.stdout is not None
        token = live.stdout.readline().strip()
        assert token.count(".") == 2, token
        ca = tmp_path / "tls" / "ca.pem"
        assert _fetch_git(broker_port, ca, token) == 200  # the token fetches, for now
        ours = [s for s in cluster.sessions() if s["ended_at"] is None]
        assert len(ours) == 1, ours
        sid = ours[0]["id"]
        b_sessions_before = {
            s["id"] for s in cluster.sessions() if s["gateway_id"] != ours[0]["gateway_id"]
        }

        assert gw_a.stop(signal.SIGKILL) == -signal.SIGKILL

        def ended() -> bool:
            row = next(s for s in cluster.sessions() if s["id"] == sid)
            return row["ended_at"] is not None and row["end_reason"] == "gateway_lost"

        _wait("gateway B to end the dead gateway's session", ended)
        _wait(
            "the dead session's token to stop fetching",
            lambda: _fetch_git(broker_port, ca, token) == 401,
        )
        # gateway B's sessions were not touched, and B still serves
        assert b_sessions_before  # the earlier logins through B
        again = subprocess.run(
            _ssh(key, port_b, known, "echo after"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.stdout == "after\n", again.stderr
    finally:
        live.kill()
        live.wait(timeout=10)
        if live.stdout is not None:
            live.stdout.close()
    for service in list(cluster.services.values()):
        if service.proc is not None:
            assert service.stop() == 0, service.name
