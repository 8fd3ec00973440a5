"""Target normalization and the routing table."""

from __future__ import annotations

import pytest

from stockade.broker._routing import (
    Router,
    normalize_host,
    normalize_registry,
    validate_cluster,
    validate_user,
)
from stockade.broker._types import Credential, CredentialQuery, Kind
from stockade.core.errors import ConfigError, InvalidInput
from stockade.core.settings import CredentialRoute


class Stub:
    def __init__(self, name: str) -> None:
        self.name = name

    async def get(self, query: CredentialQuery) -> Credential:
        return Credential(username="u", secret="s")

    async def list_targets(self, *, user: str, kind: Kind) -> dict[str, str]:
        return {}

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("GitHub.com", "github.com"),
        ("git.example.com:8443", "git.example.com:8443"),
        ("127.0.0.1:9418", "127.0.0.1:9418"),
        ("[::1]:8443", "[::1]:8443"),
        ("example.com.", "example.com"),
        ("localhost", "localhost"),
    ],
)
def test_normalize_host(raw: str, normal: str) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "..",
        "a..b",
        "host:99999",
        "host:0",
        "exa mple.com",
        "a\nb",
        "../../sys",
        "a" * 300,
        "%2e%2e",
    ],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("raw", "registry"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        ("http://localhost:5000/", "localhost:5000"),
    ],
)
def test_normalize_registry(raw: str, registry: str) -> None:
    assert normalize_registry(raw) == registry


@pytest.mark.parametrize(
    "raw", ["ftp://x.example.com", "https://u:p@x.example.com/", "https:///v1"]
)
def test_normalize_registry_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_registry(raw)


def test_cluster_and_user_names() -> None:
    assert validate_cluster("prod-eu.1_a") == "prod-eu.1_a"
    assert validate_user("alice") == "alice"
    for bad in ("", "a/b", "..", "-x", "a b"):
        with pytest.raises(InvalidInput):
            validate_cluster(bad)
    for bad in ("", "a/b", "a..b", "x{y}"):
        with pytest.raises(InvalidInput):
            validate_user(bad)


def test_first_matching_route_wins_then_default() -> None:
    vault, kube = Stub("vault"), Stub("kubernetes")
    router = Router(
        {"vault": vault, "kubernetes": kube},
        routes=[
            CredentialRoute(kind="kubernetes", pattern="prod-*", backend="kubernetes"),
            CredentialRoute(kind="*", pattern="*.internal", backend="vault"),
        ],
        default="vault",
    )
    assert router.choose("kubernetes", "prod-eu") is kube
    assert router.choose("kubernetes", "dev") is vault
    assert router.choose("git", "GIT.internal") is vault
    assert router.backends_for("docker") == ["vault"]
    assert router.backends_for("kubernetes") == ["kubernetes", "vault"]


def test_no_backend_configured() -> None:
    router = Router({}, default="vault")
    assert router.choose("git", "h") is None
    kube_default = Router({"kubernetes": Stub("kubernetes")}, default="kubernetes")
    assert kube_default.choose("git", "h") is None
    assert kube_default.backends_for("git") == []


def test_routes_validated_at_construction() -> None:
    with pytest.raises(
        ConfigError, match=r"broker.routes\[0\]: backend 'kubernetes' is not configured"
    ):
        Router(
            {"vault": Stub("vault")},
            routes=[CredentialRoute(backend="kubernetes", kind="kubernetes")],
        )
    with pytest.raises(ConfigError, match="serves only"):
        Router(
            {"kubernetes": Stub("kubernetes")},
            routes=[CredentialRoute(backend="kubernetes", kind="git")],
        )
