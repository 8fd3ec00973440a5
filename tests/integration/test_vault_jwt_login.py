"""A service logs in to OpenBao with its projected token (JWT auth, the same JWKS as the callee's).

Real ``bao server -dev``; the loopback issuer of ``tls.jwks`` plays kube-apiserver. OpenBao's
JWT auth method is configured with ``jwks_url`` (its ``oidc_discovery_url`` insists on issuer ==
URL, see NOTES.md); a role binds the broker's service account and the ``vault`` audience.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao
from tls.jwks import Issuer, serve_issuer

from stockade.core import InvalidInput, SecretsBackendUnavailable
from stockade.tls import ProjectedToken, vault_jwt_login

__all__ = ["openbao"]

SA = "system:serviceaccount:stockade:stockade-broker"


def _vault(bao: OpenBao, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(
        method, f"{bao.addr}/v1/{path}", json=body, headers={"X-Vault-Token": bao.token}
    )
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as running:
        yield running


@pytest.fixture(scope="module")
def jwt_auth(openbao: OpenBao, issuer: Issuer) -> JwtAuth:
    mounts = _vault(openbao, "GET", "sys/auth")
    mount = f"jwt-{issuer.url.rsplit(':', 1)[1]}"
    if f"{mount}/" not in mounts:
        _vault(openbao, "POST", f"sys/auth/{mount}", {"type": "jwt"})
    _vault(
        openbao,
        "POST",
        f"auth/{mount}/config",
        {
            "jwks_url": issuer.url + "/jwks.json",
            "bound_issuer": issuer.url,
            "jwt_supported_algs": ["ES256"],
        },
    )
    _vault(
        openbao,
        "POST",
        f"auth/{mount}/role/stockade-broker",
        {
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "bound_subject": SA,
            "bound_claims": {"/kubernetes.io/namespace": "stockade"},
            "user_claim": "sub",
            "token_policies": ["stockade-broker"],
            "token_ttl": "10m",
        },
    )
    _vault(
        openbao,
        "PUT",
        "sys/policies/acl/stockade-broker",
        {"policy": 'path "secret/data/broker/*" { capabilities = ["read"] }'},
    )
    openbao.kv_put("broker/db", {"password": "s3cret-from-vault"})
    openbao.kv_put("other/db", {"password": "not-yours"})
    return JwtAuth(addr=openbao.addr, mount=mount)


@dataclass(frozen=True)
class JwtAuth:
    addr: str
    mount: str


async def _login(bao: JwtAuth, tmp_path: Path, token: str) -> str:
    path = tmp_path / "vault-token"
    path.write_text(token)
    client_token, lease = await vault_jwt_login(
        bao.addr, role="stockade-broker", token=ProjectedToken(path), mount=bao.mount
    )
    assert lease > 0
    return client_token


async def test_broker_logs_in_and_reads_its_secret(
    jwt_auth: JwtAuth, issuer: Issuer, tmp_path: Path
) -> None:
    vault_token = await _login(
        jwt_auth, tmp_path, issuer.token(audience="vault", service_account="stockade-broker")
    )
    async with httpx.AsyncClient(headers={"X-Vault-Token": vault_token}) as http:
        ours = await http.get(f"{jwt_auth.addr}/v1/secret/data/broker/db")
        assert ours.json()["data"]["data"]["password"] == "s3cret-from-vault"
        theirs = await http.get(f"{jwt_auth.addr}/v1/secret/data/other/db")
        assert theirs.status_code == 403


@pytest.mark.parametrize(
    ("case", "claims"),
    [
        ("wrong-audience", {"audience": "stockade-api", "service_account": "stockade-broker"}),
        ("wrong-service-account", {"audience": "vault", "service_account": "stockade-gateway"}),
        (
            "wrong-namespace",
            {
                "audience": "vault",
                "service_account": "stockade-broker",
                "namespace": "other",
                "sub": SA,
            },
        ),
        (
            "expired",
            {"audience": "vault", "service_account": "stockade-broker", "now": time.time() - 7200},
        ),
    ],
)
async def test_login_refused(
    jwt_auth: JwtAuth, issuer: Issuer, tmp_path: Path, case: str, claims: dict[str, Any]
) -> None:
    with pytest.raises(SecretsBackendUnavailable, match="refused"):
        await _login(jwt_auth, tmp_path, issuer.token(**claims))


async def test_foreign_signed_login_refused(
    jwt_auth: JwtAuth, issuer: Issuer, tmp_path: Path
) -> None:
    stranger = Issuer(url=issuer.url)
    stranger.add_key()
    token = stranger.token(audience="vault", service_account="stockade-broker")
    with pytest.raises(SecretsBackendUnavailable, match="refused"):
        await _login(jwt_auth, tmp_path, token)


async def test_token_file_missing(jwt_auth: JwtAuth, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="vault-token"):
        await vault_jwt_login(
            jwt_auth.addr,
            role="stockade-broker",
            token=ProjectedToken(tmp_path / "vault-token"),
            mount=jwt_auth.mount,
        )
