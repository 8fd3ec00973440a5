"""The vault backend against the real OpenBao dev server; httpx errors and Vault statuses mapped."""

from __future__ import annotations

import inspect
import secrets
import ssl
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from broker.harness import OpenBao
from stockade.broker._types import CredentialQuery
from stockade.broker._vault import VaultBackend, VaultStatusError, _list_path, map_vault_error
from stockade.core.errors import ConfigError, NotFound, SecretsBackendUnavailable
from stockade.core.settings import VaultSettings


def test_every_httpx_exception_has_a_mapping() -> None:
    """Each public httpx exception maps to its own message, never httpx's text."""
    from stockade.broker import _vault

    classes = [
        obj
        for _, obj in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__.startswith("httpx")
    ]
    assert classes
    for cls in classes:
        try:
            exc = cls("boom with secret-ish text")
        except TypeError:
            continue  # needs a request or response: covered by its base class below
        mapped = map_vault_error(exc, addr="http://v")
        assert isinstance(mapped, SecretsBackendUnavailable)
        assert "secret-ish" not in str(mapped)
        assert "Vault call failed" not in str(mapped), cls
    assert httpx.HTTPError in _vault._HTTPX_ERRORS


def test_transport_errors_mapped() -> None:
    assert "cannot connect" in str(map_vault_error(httpx.ConnectError("x"), addr="a"))
    assert "in time" in str(map_vault_error(httpx.ReadTimeout("x"), addr="a"))
    tls = httpx.ConnectError("x")
    tls.__cause__ = ssl.SSLCertVerificationError("bad cert")
    assert "TLS" in str(map_vault_error(tls, addr="a"))


@pytest.mark.parametrize(
    ("status", "message"),
    [(403, "denied the broker access"), (503, "sealed or down"), (429, "rate limit"),
     (500, "internal error"), (418, "HTTP 418")],
)  # fmt: skip
def test_vault_statuses_mapped(status: int, message: str) -> None:
    assert message in str(map_vault_error(VaultStatusError(status), addr="a"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"addr": None}, "vault.addr is unset"),
        ({"token": None}, "vault.token is unset"),
        ({"git_path": "secret/data/{user}/git"}, "must contain {host}"),
        ({"docker_path": "secret/data/{user}/{host}"}, "unknown placeholder {host}"),
        ({"kubernetes_path": "/secret/data/{cluster}"}, "relative path"),
        ({"git_path": "secret/data/{user/{host}"}, "malformed template"),
        ({"auth_method": "approle"}, "approle_role_id and vault.approle_secret_id"),
        ({"auth_method": "kubernetes"}, "kubernetes_role is needed"),
    ],
)
def test_settings_validated_at_construction(overrides: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"addr": "http://127.0.0.1:1", "token": SecretStr("t")}
    base.update(overrides)
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        VaultBackend(VaultSettings.model_validate(base))


def test_list_path() -> None:
    assert _list_path("secret/data/stockade/{user}/docker/{registry}", "docker") == (
        "secret/metadata/stockade/{user}/docker"
    )
    assert _list_path("secret/data/{registry}/creds", "docker") is None
    assert _list_path("kv1/{user}/{registry}", "docker") is None


def settings(bao: OpenBao, **overrides: object) -> VaultSettings:
    base: dict[str, object] = {"addr": bao.addr, "token": SecretStr(bao.token)}
    base.update(overrides)
    return VaultSettings.model_validate(base)


async def test_reads_each_kind_with_default_paths(openbao: OpenBao) -> None:
    user = "u" + secrets.token_hex(4)
    openbao.kv_put(
        f"stockade/{user}/git/git.example.com:8443", {"username": "gu", "password": "gp"}
    )
    openbao.kv_put(
        f"stockade/{user}/docker/registry.example.com", {"username": "du", "secret": "ds"}
    )
    openbao.kv_put(
        f"stockade/{user}/kubernetes/prod",
        {"token": "kt", "expiration_timestamp": "2031-01-01T00:00:00Z"},
    )
    backend = VaultBackend(settings(openbao))
    try:
        git = await backend.get(
            CredentialQuery(kind="git", target="git.example.com:8443", user=user)
        )
        assert (git.username, git.secret, git.expires_at) == ("gu", "gp", None)
        docker = await backend.get(
            CredentialQuery(kind="docker", target="registry.example.com", user=user)
        )
        assert (docker.username, docker.secret) == ("du", "ds")
        kube = await backend.get(CredentialQuery(kind="kubernetes", target="prod", user=user))
        assert kube.secret == "kt"
        assert kube.expires_at is not None
        assert kube.expires_at.year == 2031
        assert await backend.list_targets(user=user, kind="docker") == {
            "registry.example.com": "du"
        }
        assert await backend.list_targets(user="nobody", kind="docker") == {}
        with pytest.raises(NotFound):
            await backend.get(CredentialQuery(kind="git", target="other.example.com", user=user))
        assert "'gp'" not in repr(git)
        assert openbao.token not in repr(backend)
    finally:
        await backend.aclose()


async def test_deleted_and_malformed_secrets(openbao: OpenBao) -> None:
    user = "u" + secrets.token_hex(4)
    openbao.kv_put(f"stockade/{user}/git/gone.example.com", {"username": "a", "password": "b"})
    openbao._call("DELETE", f"/v1/secret/data/stockade/{user}/git/gone.example.com", None)
    openbao.kv_put(f"stockade/{user}/git/bad.example.com", {"username": "a", "pass": "b"})
    backend = VaultBackend(settings(openbao))
    try:
        with pytest.raises(NotFound):
            await backend.get(CredentialQuery(kind="git", target="gone.example.com", user=user))
        with pytest.raises(SecretsBackendUnavailable, match="no string field 'password'"):
            await backend.get(CredentialQuery(kind="git", target="bad.example.com", user=user))
    finally:
        await backend.aclose()


async def test_custom_path_template(openbao: OpenBao) -> None:
    user = "u" + secrets.token_hex(4)
    openbao.kv_put(f"teams/{user}/{user}-gitlab.example.com", {"username": "x", "password": "y"})
    backend = VaultBackend(settings(openbao, git_path="secret/data/teams/{user}/{user}-{host}"))
    try:
        got = await backend.get(CredentialQuery(kind="git", target="gitlab.example.com", user=user))
        assert got.secret == "y"
    finally:
        await backend.aclose()


async def test_wrong_token_and_down_are_unavailable(openbao: OpenBao) -> None:
    wrong = VaultBackend(settings(openbao, token=SecretStr("not-the-token")))
    down = VaultBackend(settings(openbao, addr="http://127.0.0.1:1", timeout=2))
    try:
        with pytest.raises(SecretsBackendUnavailable, match="denied the broker access"):
            await wrong.get(CredentialQuery(kind="git", target="h.example.com", user="alice"))
        with pytest.raises(SecretsBackendUnavailable, match="cannot connect to Vault"):
            await down.get(CredentialQuery(kind="git", target="h.example.com", user="alice"))
    finally:
        await wrong.aclose()
        await down.aclose()
    with pytest.raises(SecretsBackendUnavailable, match="closed"):
        await down.get(CredentialQuery(kind="git", target="h.example.com", user="alice"))


async def test_approle_login(openbao: OpenBao) -> None:
    mount = "approle-" + secrets.token_hex(3)
    openbao._call("POST", f"/v1/sys/auth/{mount}", {"type": "approle"})
    openbao._call(
        "PUT",
        "/v1/sys/policies/acl/stockade-broker",
        {
            "policy": 'path "secret/data/stockade/*" { capabilities = ["read"] }\n'
            'path "secret/metadata/stockade/*" { capabilities = ["list"] }'
        },
    )
    openbao._call(
        "POST",
        f"/v1/auth/{mount}/role/broker",
        {"token_policies": ["stockade-broker"], "token_ttl": "1m"},
    )
    role_id = openbao._call("GET", f"/v1/auth/{mount}/role/broker/role-id", None)["data"]["role_id"]
    secret_id = openbao._call("POST", f"/v1/auth/{mount}/role/broker/secret-id", {})["data"][
        "secret_id"
    ]
    user = "u" + secrets.token_hex(4)
    openbao.kv_put(
        f"stockade/{user}/git/h.example.com", {"username": "a", "password": "approle-pw"}
    )
    backend = VaultBackend(
        VaultSettings(
            addr=openbao.addr,
            auth_method="approle",
            approle_role_id=role_id,
            approle_secret_id=SecretStr(secret_id),
            approle_mount=mount,
        )
    )
    try:
        got = await backend.get(CredentialQuery(kind="git", target="h.example.com", user=user))
        assert got.secret == "approle-pw"
        # A revoked login token is replaced by a new login on the 403.
        openbao._call("POST", "/v1/auth/token/revoke", {"token": backend._token})
        again = await backend.get(CredentialQuery(kind="git", target="h.example.com", user=user))
        assert again.secret == "approle-pw"
    finally:
        await backend.aclose()


async def test_kubernetes_login_reads_the_jwt_file(openbao: OpenBao, tmp_path: Path) -> None:
    backend = VaultBackend(
        VaultSettings(
            addr=openbao.addr,
            auth_method="kubernetes",
            kubernetes_role="broker",
            kubernetes_jwt_file=tmp_path / "missing-token",
        )
    )
    try:
        with pytest.raises(SecretsBackendUnavailable, match="kubernetes_jwt_file"):
            await backend.get(CredentialQuery(kind="git", target="h.example.com", user="alice"))
        (tmp_path / "missing-token").write_text("jwt")
        with pytest.raises(SecretsBackendUnavailable, match="Vault"):
            await backend.get(CredentialQuery(kind="git", target="h.example.com", user="alice"))
    finally:
        await backend.aclose()
