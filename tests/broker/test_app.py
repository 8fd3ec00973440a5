"""The broker API over real HTTPS: status codes, headers, audit events, never a secret leaked."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.apiserver import ApiServer
from broker.harness import BrokerEnv, OpenBao, broker_env, broker_settings
from stockade.authz import Authorizer
from stockade.broker import VaultBackend, create_app
from stockade.broker._types import Credential, CredentialQuery, Kind
from stockade.core.errors import BusUnavailable
from stockade.core.events import CredentialRequest, Event
from stockade.core.settings import AuthzSettings, BrokerSettings
from stockade.tls import DevCA


@pytest.fixture
async def client(env: BrokerEnv) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=env.url, verify=env.tls(), timeout=30) as client:
        yield client


async def user_with_secrets(env: BrokerEnv) -> tuple[str, str]:
    user = "u" + secrets.token_hex(4)
    await env.add_user(user)
    assert env.bao is not None
    env.bao.kv_put(
        f"stockade/{user}/git/git.example.com", {"username": "gu", "password": "pw-" + user}
    )
    env.bao.kv_put(
        f"stockade/{user}/docker/registry.example.com:5000",
        {"username": "du", "secret": "ds-" + user},
    )
    env.bao.kv_put(f"stockade/{user}/kubernetes/prod", {"token": "kt-" + user})
    _sid, token = await env.session_token(user)
    return user, token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_kind(env: BrokerEnv, client: httpx.AsyncClient) -> None:
    user, token = await user_with_secrets(env)
    git = await client.post(
        "/v1/credentials/git",
        json={"protocol": "https", "host": "GIT.example.com"},
        headers=auth(token),
    )
    assert git.status_code == 200, git.text
    assert git.json() == {"username": "gu", "password": "pw-" + user, "password_expiry_utc": None}
    assert git.headers["cache-control"] == "no-store"
    docker = await client.post(
        "/v1/credentials/docker",
        json={"server_url": "https://registry.example.com:5000/v2/"},
        headers=auth(token),
    )
    assert docker.json() == {
        "server_url": "https://registry.example.com:5000/v2/",
        "username": "du",
        "secret": "ds-" + user,
    }
    listed = await client.post("/v1/credentials/docker/list", json={}, headers=auth(token))
    assert listed.json() == {"credentials": {"registry.example.com:5000": "du"}}
    kube = await client.post(
        "/v1/credentials/kubernetes", json={"cluster": "prod"}, headers=auth(token)
    )
    body = kube.json()
    assert body["token"] == "kt-" + user
    expires = datetime.fromisoformat(body["expiration_timestamp"])
    claims = await env.identity.verify_token(token)
    assert expires == claims.exp  # never outlives the session token

    events = await env.events.wait_for(4, username=user)
    assert [(e["kind"], e["target"], e["allow"]) for e in events] == [
        ("git", "git.example.com", True),
        ("docker", "registry.example.com:5000", True),
        ("docker", "*", True),
        ("kubernetes", "prod", True),
    ]
    assert all(e["session_id"].startswith("s-") and e["backend_ms"] > 0 for e in events)
    for secret in ("pw-" + user, "ds-" + user, "kt-" + user, token):
        assert secret not in json.dumps(env.events.received)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic dTpw"}, "missing"),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed"),
    ],
)
async def test_401_with_reason(
    env: BrokerEnv, client: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    response = await client.post(
        "/v1/credentials/git", json={"protocol": "https", "host": "h.example.com"}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    events = await env.events.wait_for(1, allow=False)
    assert events[0]["username"] == ""
    assert events[0]["reason"] == reason


async def test_403_without_a_session(env: BrokerEnv, client: httpx.AsyncClient) -> None:
    user, _ = await user_with_secrets(env)
    token = await env.identity.issue_token(user)  # no sid: not a session token
    response = await client.post(
        "/v1/credentials/git",
        json={"protocol": "https", "host": "git.example.com"},
        headers=auth(token),
    )
    assert response.status_code == 403
    assert response.json()["reason"] == "credential.get needs a session"
    assert "pw-" not in response.text
    events = await env.events.wait_for(1, username=user, allow=False)
    assert events[0]["backend_ms"] == 0


async def test_404_when_nothing_is_stored(env: BrokerEnv, client: httpx.AsyncClient) -> None:
    _, token = await user_with_secrets(env)
    response = await client.post(
        "/v1/credentials/docker", json={"server_url": "other.example.com"}, headers=auth(token)
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/credentials/git", {"protocol": "https", "host": "../../sys/raw"}, 422),
        ("/v1/credentials/git", {"protocol": "ftp", "host": "h"}, 422),
        ("/v1/credentials/git", {"protocol": "https", "host": "h", "extra": 1}, 422),
        ("/v1/credentials/kubernetes", {"cluster": "a/../b"}, 422),
        ("/v1/credentials/docker", {"server_url": "https://u:p@r.example.com"}, 422),
        ("/v1/credentials/ssh", {}, 404),
    ],
)
async def test_malformed_requests(
    env: BrokerEnv, client: httpx.AsyncClient, path: str, body: Any, status: int
) -> None:
    _, token = await user_with_secrets(env)
    response = await client.post(path, json=body, headers=auth(token))
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "reason", "message"}


async def test_oversized_and_unparsable_bodies(env: BrokerEnv, client: httpx.AsyncClient) -> None:
    _, token = await user_with_secrets(env)
    big = await client.post(
        "/v1/credentials/git", content=b"{" + b" " * 20000 + b"}", headers=auth(token)
    )
    assert big.status_code == 413
    bad = await client.post(
        "/v1/credentials/git",
        content=b"{nope",
        headers={**auth(token), "Content-Type": "application/json"},
    )
    assert bad.status_code == 422


async def test_openapi_published(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert set(doc["paths"]) >= {
        "/v1/credentials/git",
        "/v1/credentials/docker",
        "/v1/credentials/docker/list",
        "/v1/credentials/kubernetes",
    }
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


async def test_no_backend_configured(tmp_path: Path, nats_url: str) -> None:
    async with broker_env(tmp_path, nats_url, None) as env:
        await env.add_user("alice")
        _, token = await env.session_token("alice")
        async with httpx.AsyncClient(base_url=env.url, verify=env.tls()) as client:
            response = await client.post(
                "/v1/credentials/git",
                json={"protocol": "https", "host": "h.example.com"},
                headers=auth(token),
            )
        assert response.status_code == 503
        assert "no secrets backend configured" in response.json()["message"]


async def test_backend_down_is_503(tmp_path: Path, nats_url: str) -> None:
    dead = OpenBao(addr="http://127.0.0.1:1", token="x")
    async with broker_env(tmp_path, nats_url, dead) as env:
        await env.add_user("alice")
        _, token = await env.session_token("alice")
        async with httpx.AsyncClient(base_url=env.url, verify=env.tls()) as client:
            response = await client.post(
                "/v1/credentials/git",
                json={"protocol": "https", "host": "h.example.com"},
                headers=auth(token),
            )
        assert response.status_code == 503
        assert "cannot connect to Vault" in response.json()["message"]
        events = await env.events.wait_for(1, username="alice", allow=False)
        assert "cannot connect" in events[0]["reason"]


class FailingBus:
    async def publish(self, event: Event) -> int:
        raise BusUnavailable("NATS is down")


@pytest.mark.parametrize("publisher", [FailingBus(), None])
async def test_credential_withheld_when_audit_fails(
    env: BrokerEnv, openbao: OpenBao, publisher: FailingBus | None
) -> None:
    _user, token = await user_with_secrets(env)
    backend = VaultBackend(broker_settings(openbao).vault)
    app = create_app(
        identity=env.identity,
        authz=Authorizer(settings=AuthzSettings(decision_log=False)),
        backends={"vault": backend},
        publisher=publisher,
        settings=BrokerSettings(),
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            response = await client.post(
                "/v1/credentials/git",
                json={"protocol": "https", "host": "git.example.com"},
                headers=auth(token),
            )
        assert response.status_code == 503
        assert "audit unavailable" in response.json()["message"]
        assert "pw-" not in response.text
    finally:
        await backend.aclose()


async def test_malformed_credential_requests_are_audited(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    response = await client.post("/v1/credentials/kubernetes", json={"cluster": ""})
    assert response.status_code == 422
    events = await env.events.wait_for(1, kind="kubernetes", allow=False)
    assert events[0]["reason"] == "invalid_input: cluster"
    assert events[0]["username"] == ""


async def test_routes_send_matching_clusters_to_the_kubernetes_backend(
    tmp_path: Path, nats_url: str, openbao: OpenBao
) -> None:
    api = ApiServer(DevCA(tmp_path / "apiserver-ca"))
    token_file = tmp_path / "broker-sa-token"
    token_file.write_text("broker-sa")
    try:
        async with broker_env(
            tmp_path,
            nats_url,
            openbao,
            routes=[{"kind": "kubernetes", "pattern": "k8s-*", "backend": "kubernetes"}],
            kubernetes={
                "api_url": api.url,
                "ca_file": str(tmp_path / "apiserver-ca" / "ca.pem"),
                "token_file": str(token_file),
                "namespace": "ws",
            },
        ) as env:
            user, token = await user_with_secrets(env)
            async with httpx.AsyncClient(base_url=env.url, verify=env.tls()) as client:
                minted = await client.post(
                    "/v1/credentials/kubernetes", json={"cluster": "k8s-prod"}, headers=auth(token)
                )
                stored = await client.post(
                    "/v1/credentials/kubernetes", json={"cluster": "prod"}, headers=auth(token)
                )
            assert minted.json()["token"] == "minted-token"
            assert api.requests[0][0] == f"/api/v1/namespaces/ws/serviceaccounts/{user}/token"
            assert stored.json()["token"] == "kt-" + user  # no route matched: vault
            assert len(api.requests) == 1
    finally:
        api.close()


class SlowBackend:
    name = "vault"

    async def get(self, query: CredentialQuery) -> Credential:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    async def list_targets(self, *, user: str, kind: Kind) -> dict[str, str]:
        await asyncio.sleep(30)
        return {}

    async def aclose(self) -> None:
        return None


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/credentials/git", {"protocol": "https", "host": "git.example.com"}),
        ("/v1/credentials/docker/list", {}),
    ],
)
async def test_slow_backend_is_503_and_audited(env: BrokerEnv, path: str, body: Any) -> None:
    _user, token = await user_with_secrets(env)
    bus = RecordingBus()
    app = create_app(
        identity=env.identity,
        authz=Authorizer(settings=AuthzSettings(decision_log=False)),
        backends={"vault": SlowBackend()},
        publisher=bus,
        settings=BrokerSettings(backend_timeout=0.2),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        response = await client.post(path, json=body, headers=auth(token))
    assert response.status_code == 503
    assert "did not answer" in response.json()["message"]
    assert [e.allow for e in bus.events if isinstance(e, CredentialRequest)] == [False]
