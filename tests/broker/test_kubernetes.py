"""The kubernetes backend: TokenRequest shapes without I/O, the adapter on a loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.apiserver import ApiServer
from stockade.broker._kubernetes import (
    KubernetesBackend,
    TokenRequestClient,
    parse_token_response,
    token_request_body,
    token_request_path,
)
from stockade.broker._types import CredentialQuery
from stockade.core.errors import ConfigError, NotFound, SecretsBackendUnavailable
from stockade.core.settings import BrokerKubernetesSettings
from stockade.tls import DevCA


def test_token_request_body_shape() -> None:
    assert token_request_body(audiences=[], expiration_seconds=600) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    }
    body = token_request_body(audiences=["https://kubernetes.default.svc"], expiration_seconds=3600)
    assert body["spec"] == {
        "expirationSeconds": 3600,
        "audiences": ["https://kubernetes.default.svc"],
    }


def test_token_request_path() -> None:
    assert token_request_path("ws", "alice") == "/api/v1/namespaces/ws/serviceaccounts/alice/token"
    for ns, sa in (("Bad", "a"), ("ws", "a/b"), ("ws", "-a"), ("a" * 64, "a")):
        with pytest.raises(NotFound):
            token_request_path(ns, sa)


def test_parse_token_response() -> None:
    credential = parse_token_response(
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
            "status": {"token": "eyJ.x.y", "expirationTimestamp": "2030-01-02T03:04:05Z"},
        }
    )
    assert credential.secret == "eyJ.x.y"
    assert credential.expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert "eyJ" not in repr(credential)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {},
        {"status": {}},
        {"status": {"token": "t"}},
        {"status": {"token": "", "expirationTimestamp": "2030-01-02T03:04:05Z"}},
        {"status": {"token": "t", "expirationTimestamp": "yesterday"}},
        {"status": {"token": "t", "expirationTimestamp": "2030-01-02T03:04:05"}},
    ],
)
def test_parse_token_response_rejects(doc: Any) -> None:
    with pytest.raises(SecretsBackendUnavailable):
        parse_token_response(doc)


def test_templates_validated() -> None:
    with pytest.raises(ConfigError, match=r"broker\.kubernetes\.namespace"):
        KubernetesBackend(
            BrokerKubernetesSettings(api_url="https://127.0.0.1:1", namespace="{nope}")
        )


def test_in_cluster_url_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubernetesBackend(BrokerKubernetesSettings(ca_file=None))


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[tuple[ApiServer, DevCA]]:
    ca = DevCA(tmp_path / "ca")
    server = ApiServer(ca)
    try:
        yield server, ca
    finally:
        server.close()


async def test_backend_requests_a_token(apiserver: tuple[ApiServer, DevCA], tmp_path: Path) -> None:
    server, ca = apiserver
    token_file = tmp_path / "sa-token"
    token_file.write_text("broker-sa-token\n")
    settings = BrokerKubernetesSettings(
        api_url=server.url,
        token_file=token_file,
        ca_file=ca.ca_cert_path,
        namespace="ws-{cluster}",
        service_account="{user}",
        audiences=["api"],
    )
    backend = KubernetesBackend(settings)
    try:
        credential = await backend.get(
            CredentialQuery(kind="kubernetes", target="prod", user="alice")
        )
        assert credential.secret == "minted-token"
        assert credential.expires_at == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
        path, auth, body = server.requests[0]
        assert path == "/api/v1/namespaces/ws-prod/serviceaccounts/alice/token"
        assert auth == "Bearer broker-sa-token"
        assert body == token_request_body(audiences=["api"], expiration_seconds=600)
        assert await backend.list_targets(user="alice", kind="kubernetes") == {}
        with pytest.raises(NotFound):
            await backend.get(CredentialQuery(kind="git", target="h", user="alice"))
        server.status = 404
        with pytest.raises(NotFound, match="alice"):
            await backend.get(CredentialQuery(kind="kubernetes", target="prod", user="alice"))
        server.status = 403
        with pytest.raises(SecretsBackendUnavailable, match="serviceaccounts/token"):
            await backend.get(CredentialQuery(kind="kubernetes", target="prod", user="alice"))
        token_file.unlink()
        with pytest.raises(SecretsBackendUnavailable, match="token_file"):
            await backend.get(CredentialQuery(kind="kubernetes", target="prod", user="alice"))
    finally:
        await backend.aclose()


async def test_unreachable_api_is_unavailable(tmp_path: Path) -> None:
    client = TokenRequestClient("https://127.0.0.1:1", ca_file=None, timeout=2)
    try:
        with pytest.raises(SecretsBackendUnavailable, match="cannot reach the Kubernetes API"):
            await client.post("/x", {}, bearer="b")
    finally:
        await client.aclose()
    await asyncio.sleep(0)
