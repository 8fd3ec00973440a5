"""Acceptance 2 and 3: the Docker helper as docker-credential-helpers' client calls it, and a real
``kubectl`` running the exec plugin from the kubeconfig ``workspace_config`` wrote."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from broker.fixtures import env, openbao
from broker.harness import BrokerEnv

from stockade.broker import KubeCluster, workspace_config
from stockade.core.events import SessionEnded
from stockade.tls import DevCA

__all__ = ["env", "openbao"]

pytestmark = pytest.mark.timeout(120)

NOT_FOUND = "credentials not found in native keychain"


class CredentialsNotFound(Exception):
    pass


async def docker_client(
    env: BrokerEnv, session: dict[str, str], action: str, stdin: bytes | None
) -> Any:
    """docker-credential-helpers' ``client`` package, call for call: run
    ``docker-credential-<store> <action>`` with the payload on stdin, take stdout; on failure an
    output equal to the not-found message is ErrCredentialsNotFound, anything else an error."""
    result = await env.run(["docker-credential-stockade", action], env=session, stdin=stdin or b"")
    out = result.stdout.decode().strip()
    if result.returncode != 0:
        if out == NOT_FOUND:
            raise CredentialsNotFound(out)
        raise RuntimeError(
            f"error {action} credentials - err: exit status {result.returncode}, out: `{out}`"
        )
    return json.loads(out) if out else None


async def test_docker_get_and_list_follow_the_protocol(env: BrokerEnv) -> None:
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    secret = "dckr_pat_" + secrets.token_urlsafe(16)
    env.bao.kv_put(
        f"stockade/{user}/docker/registry.example.com:5000", {"username": "robot", "secret": secret}
    )
    env.bao.kv_put(
        f"stockade/{user}/docker/index.docker.io",
        {"username": "hubuser", "secret": "hub-" + secret},
    )
    _sid, token = await env.session_token(user)
    home = env.tmp / "home"
    home.mkdir()
    workspace_config(home, env.url, env.ca)
    assert json.loads((home / ".docker" / "config.json").read_text())["credsStore"] == "stockade"
    session = env.session_env(token, home)

    got = await docker_client(env, session, "get", b"registry.example.com:5000")
    assert got == {"ServerURL": "registry.example.com:5000", "Username": "robot", "Secret": secret}
    hub = await docker_client(env, session, "get", b"https://index.docker.io/v1/")
    assert hub == {
        "ServerURL": "https://index.docker.io/v1/",
        "Username": "hubuser",
        "Secret": "hub-" + secret,
    }
    listed = await docker_client(env, session, "list", None)
    assert listed == {
        "registry.example.com:5000": "robot",
        "https://index.docker.io/v1/": "hubuser",
    }
    for server_url in listed:  # every listed key works as docker's next get
        assert (await docker_client(env, session, "get", server_url.encode()))["Username"]
    with pytest.raises(CredentialsNotFound):
        await docker_client(env, session, "get", b"ghcr.io")
    store = json.dumps({"ServerURL": "ghcr.io", "Username": "u", "Secret": "s"}).encode()
    with pytest.raises(RuntimeError, match="managed by Stockade"):
        await docker_client(env, session, "store", store)
    with pytest.raises(RuntimeError, match="managed by Stockade"):
        await docker_client(env, session, "erase", b"ghcr.io")
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


class VersionEndpoint:
    """Loopback HTTPS that records Authorization headers and answers ``/version``."""

    def __init__(self, ca: DevCA) -> None:
        self.authorizations: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.authorizations.append(self.headers.get("Authorization", ""))
                if self.path.split("?")[0] != "/version":
                    self.send_error(404)
                    return
                data = json.dumps(
                    {
                        "major": "1",
                        "minor": "37",
                        "gitVersion": "v1.37.1",
                        "platform": "linux/amd64",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        issued = ca.issue("kube-apiserver")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert, issued.key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[tuple[VersionEndpoint, DevCA]]:
    ca = DevCA(tmp_path / "kube-ca")
    endpoint = VersionEndpoint(ca)
    try:
        yield endpoint, ca
    finally:
        endpoint.close()


async def test_kubectl_sends_the_token_from_the_exec_plugin(
    env: BrokerEnv, apiserver: tuple[VersionEndpoint, DevCA]
) -> None:
    endpoint, kube_ca = apiserver
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    cluster_token = "kt-" + secrets.token_urlsafe(24)
    env.bao.kv_put(f"stockade/{user}/kubernetes/loop", {"token": cluster_token})
    sid, token = await env.session_token(user)
    home = env.tmp / "home"
    home.mkdir()
    workspace_config(
        home, env.url, env.ca, clusters={"loop": KubeCluster(endpoint.url, kube_ca.ca_cert_path)}
    )
    session = env.session_env(token, home)

    result = await env.run(
        ["kubectl", "version", "-o", "json", "--request-timeout=20s"], env=session, cwd=home
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["serverVersion"]["gitVersion"] == "v1.37.1"
    assert f"Bearer {cluster_token}" in endpoint.authorizations
    assert set(endpoint.authorizations) == {f"Bearer {cluster_token}"}
    for path in home.rglob("*"):
        if path.is_file():
            assert cluster_token.encode() not in path.read_bytes(), path
    events = await env.events.wait_for(1, username=user, kind="kubernetes")
    assert events[0]["target"] == "loop"

    await env.identity.end_session(sid, reason="logout")
    # The broker holds liveness in memory; the end is announced on the bus, as the gateway does.
    await env.bus.publish(SessionEnded(session_id=sid, username=user, reason="logout"))
    sessions = env.server.sessions
    assert sessions is not None
    for _ in range(200):  # bounded
        if sessions.is_dead(sid):
            break
        await env.bus.flush()
    assert sessions.is_dead(sid)
    endpoint.authorizations.clear()
    result = await env.run(
        ["kubectl", "version", "-o", "json", "--request-timeout=20s"], env=session, cwd=home
    )
    assert result.returncode != 0
    assert (
        "kubectl-credential-stockade: session token rejected (session_ended)"
        in result.stderr.decode()
    )
    assert endpoint.authorizations == []
