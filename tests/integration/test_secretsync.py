"""Issue 14, acceptance 2: the VaultSecret controller against a real OpenBao.

OpenBao (``bao server -dev``) has JWT auth configured with the loopback issuer's JWKS; the
controller logs in with a projected-token-shaped JWT from a file, reads KV v2 (``secret``) and
KV v1 (a ``kv`` mount), and writes through the :class:`RecordingAdapter`, which records each write.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao
from tls.jwks import Issuer, serve_issuer

from stockade.core import InvalidInput
from stockade.secretsync import (
    FORCE_SYNC_ANNOTATION,
    RecordingAdapter,
    SecretObject,
    SecretSyncController,
    VaultReader,
    VaultSecret,
)
from stockade.tls import ProjectedToken

__all__ = ["openbao"]

NS = "stockade"


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


@dataclass
class Bao:
    bao: OpenBao
    mount: str

    def put(self, path: str, data: dict[str, str]) -> None:
        self.bao.kv_put(path, data)

    def put_v1(self, path: str, data: dict[str, str]) -> None:
        _vault(self.bao, "POST", f"kv1/{path}", data)


@pytest.fixture(scope="module")
def bao(openbao: OpenBao, issuer: Issuer) -> Bao:
    mount = f"jwt-sync-{issuer.url.rsplit(':', 1)[1]}"
    auths = _vault(openbao, "GET", "sys/auth")
    if f"{mount}/" not in auths:
        _vault(openbao, "POST", f"sys/auth/{mount}", {"type": "jwt"})
    _vault(
        openbao,
        "POST",
        f"auth/{mount}/config",
        {"jwks_url": issuer.url + "/jwks.json", "bound_issuer": issuer.url,
         "jwt_supported_algs": ["ES256"]},
    )  # fmt: skip
    _vault(
        openbao,
        "POST",
        f"auth/{mount}/role/secretsync",
        {
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "bound_subject": f"system:serviceaccount:{NS}:stockade-secretsync",
            "user_claim": "sub",
            "token_policies": ["secretsync"],
            "token_ttl": "10m",
        },
    )
    _vault(
        openbao,
        "PUT",
        "sys/policies/acl/secretsync",
        {"policy": 'path "secret/data/apps/*" { capabilities = ["read"] }\n'
                   'path "kv1/apps/*" { capabilities = ["read"] }'},
    )  # fmt: skip
    mounts = _vault(openbao, "GET", "sys/mounts")
    if "kv1/" not in mounts:
        _vault(openbao, "POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
    return Bao(openbao, mount)


@dataclass
class Env:
    kube: RecordingAdapter
    controller: SecretSyncController
    reader: VaultReader
    bao: Bao
    path: str


@pytest.fixture
async def env(bao: Bao, issuer: Issuer, tmp_path: Path) -> AsyncIterator[Env]:
    token = tmp_path / "vault-token"
    token.write_text(issuer.token(audience="vault", service_account="stockade-secretsync"))
    reader = VaultReader(
        bao.bao.addr, role="secretsync", token=ProjectedToken(token), auth_mount=bao.mount
    )
    kube = RecordingAdapter()
    controller = SecretSyncController(kube=kube, vault=reader, hmac_key=secrets.token_bytes(32))
    try:
        yield Env(kube, controller, reader, bao, f"apps/{secrets.token_hex(4)}")
    finally:
        await reader.aclose()


def _resource(env: Env, **spec: Any) -> VaultSecret:
    annotations = spec.pop("annotations", {})
    body = {
        "mount": "secret",
        "path": env.path,
        "type": "kv-v2",
        "refreshAfter": "1s",
        "destination": {"name": "app-db", "create": True},
    }
    body.update(spec)
    return VaultSecret.from_object(
        {
            "apiVersion": "secretsync.stockade.dev/v1alpha1",
            "kind": "VaultSecret",
            "metadata": {"name": "app-db", "namespace": NS, "uid": "uid-1",
                         "annotations": annotations},
            "spec": body,
        }
    )  # fmt: skip


def _stored(env: Env) -> VaultSecret:
    return env.kube.vault_secrets[(NS, "app-db")]


def _secret(env: Env) -> SecretObject | None:
    return env.kube.secrets.get((NS, "app-db"))


async def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_create_then_value_change_within_refresh_after(env: Env) -> None:
    env.bao.put(env.path, {"password": "one", "user": "app"})
    env.kube.apply(_resource(env, rolloutRestartTargets=[{"kind": "Deployment", "name": "app"}]))
    stop = asyncio.Event()
    loop = asyncio.create_task(env.controller.run(stop, tick=0.2))
    try:
        await _wait(lambda: _secret(env) is not None, "the Secret")
        secret = _secret(env)
        assert secret is not None
        assert secret.data == {"password": "one", "user": "app"}
        assert secret.labels["app.kubernetes.io/managed-by"] == "stockade-secretsync"
        status = _stored(env).status
        assert status.created
        assert status.conditions[0].status == "True"
        assert len(status.secret_mac) == 64
        assert "one" not in status.model_dump_json()
        changed_at = time.monotonic()
        env.bao.put(env.path, {"password": "two", "user": "app"})
        await _wait(
            lambda: (s := _secret(env)) is not None and s.data["password"] == "two",
            "the new value",
        )
        waited = time.monotonic() - changed_at
    finally:
        stop.set()
        await loop
    assert waited < 1 + 0.2 + 2  # refreshAfter + one tick + slack for a loaded machine
    verbs = [w.verb for w in env.kube.writes]
    assert verbs.count("create") == 1
    assert verbs.count("replace") == 1
    assert [w.detail for w in env.kube.writes if w.verb == "restart"] == ["Deployment"]


async def test_no_write_when_unchanged(env: Env) -> None:
    env.bao.put(env.path, {"password": "same"})
    resource = env.kube.apply(_resource(env))
    await env.controller.reconcile(resource)
    result = await env.controller.reconcile(
        _stored(env).model_copy(update={"status": _stored(env).status.model_copy(
            update={"last_synced_at": None})})
    )  # fmt: skip
    assert result.read
    assert not result.synced
    assert [w.verb for w in env.kube.secret_writes()] == ["create"]


async def test_created_once_never_updates(env: Env) -> None:
    env.bao.put(env.path, {"password": "first"})
    env.kube.apply(_resource(env, refreshPolicy="CreatedOnce"))
    await env.controller.reconcile(_stored(env))
    env.bao.put(env.path, {"password": "second"})
    await asyncio.sleep(1.1)  # past refreshAfter
    result = await env.controller.reconcile(_stored(env))
    assert not result.read
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "first"}


async def test_force_sync_annotation(env: Env) -> None:
    env.bao.put(env.path, {"password": "first"})
    env.kube.apply(_resource(env, refreshPolicy="OnChange"))
    await env.controller.reconcile(_stored(env))
    env.bao.put(env.path, {"password": "second"})
    assert not (await env.controller.reconcile(_stored(env))).read  # OnChange: spec unchanged
    forced = _stored(env).model_copy(update={"annotations": {FORCE_SYNC_ANNOTATION: "t1"}})
    result = await env.controller.reconcile(forced)
    assert result.synced
    assert result.reason == "forced"
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "second"}
    again = _stored(env).model_copy(update={"annotations": {FORCE_SYNC_ANNOTATION: "t1"}})
    assert not (await env.controller.reconcile(again)).read  # the same value acts once


async def test_delete_removes_only_what_we_created(env: Env) -> None:
    env.bao.put(env.path, {"password": "x"})
    env.kube.apply(_resource(env))
    await env.controller.reconcile(_stored(env))
    assert await env.controller.finalize(_stored(env))
    assert _secret(env) is None

    # A Secret that was there before: taken over only with overwrite, and left on delete.
    env.kube.secrets[(NS, "app-db")] = SecretObject(NS, "app-db", {"password": "theirs"})
    env.kube.vault_secrets.clear()
    env.kube.apply(_resource(env, destination={"name": "app-db", "create": True}))
    result = await env.controller.reconcile(_stored(env))
    assert result.reason == "DestinationExists"
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "theirs"}
    env.kube.vault_secrets.clear()
    env.kube.apply(_resource(env, destination={"name": "app-db", "overwrite": True}))
    await env.controller.reconcile(_stored(env))
    assert not _stored(env).status.created
    assert not await env.controller.finalize(_stored(env))
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "x"}


async def test_kv_v1(env: Env) -> None:
    env.bao.put_v1(env.path, {"token": "v1-value"})
    env.kube.apply(_resource(env, mount="kv1", type="kv-v1"))
    result = await env.controller.reconcile(_stored(env))
    assert result.synced
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"token": "v1-value"}


async def test_kv_v2_pinned_version(env: Env) -> None:
    env.bao.put(env.path, {"password": "v1"})
    env.bao.put(env.path, {"password": "v2"})
    env.kube.apply(_resource(env, version=1))
    await env.controller.reconcile(_stored(env))
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "v1"}


async def test_missing_path_condition_no_secret_change(env: Env) -> None:
    env.kube.apply(_resource(env, path="apps/does-not-exist"))
    result = await env.controller.reconcile(_stored(env))
    assert result.reason == "SecretPathMissing"
    condition = _stored(env).status.conditions[0]
    assert (condition.type, condition.status, condition.reason) == (
        "SecretSynced",
        "False",
        "SecretPathMissing",
    )
    assert env.kube.secret_writes() == []


async def test_template_missing_key_condition_no_secret_change(env: Env) -> None:
    env.bao.put(env.path, {"user": "app", "password": "pw"})
    templates = {"url": {"text": "postgres://{{ .Secrets.user }}:{{ .Secrets.pass }}@db/app"}}
    env.kube.apply(
        _resource(env, destination={"name": "app-db", "create": True,
                                    "transformation": {"templates": templates}})
    )  # fmt: skip
    result = await env.controller.reconcile(_stored(env))
    assert result.reason == "TemplateKeyMissing"
    assert "pass" in _stored(env).status.conditions[0].message
    assert "pw" not in _stored(env).status.conditions[0].message
    assert env.kube.secret_writes() == []


async def test_template_renders(env: Env) -> None:
    env.bao.put(env.path, {"user": "app", "password": "pw"})
    templates = {"url": {"text": "postgres://{{ .Secrets.user }}:{{.Secrets.password}}@db/app"}}
    env.kube.apply(
        _resource(env, destination={"name": "app-db", "create": True,
                                    "transformation": {"templates": templates,
                                                       "excludeRaw": True}})
    )  # fmt: skip
    await env.controller.reconcile(_stored(env))
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"url": "postgres://app:pw@db/app"}


async def test_path_outside_policy_condition(env: Env) -> None:
    env.bao.put("elsewhere/x", {"password": "p"})
    env.kube.apply(_resource(env, path="elsewhere/x"))
    result = await env.controller.reconcile(_stored(env))
    assert result.reason == "VaultUnavailable"
    assert "403" in _stored(env).status.conditions[0].message
    assert env.kube.secret_writes() == []


def test_path_escaping_the_mount_refused(env: Env) -> None:
    with pytest.raises(InvalidInput, match=r"spec\.path"):
        _resource(env, path="apps/../../sys/x")


async def test_without_hmac_status_holds_no_mac_but_restarts_on_change(env: Env) -> None:
    env.bao.put(env.path, {"password": "one"})
    env.kube.apply(
        _resource(
            env,
            hmacSecretData=False,
            refreshPolicy="OnChange",
            rolloutRestartTargets=[{"kind": "StatefulSet", "name": "db"}],
        )
    )
    await env.controller.reconcile(_stored(env))
    assert _stored(env).status.secret_mac == ""
    env.bao.put(env.path, {"password": "two"})
    forced = _stored(env).model_copy(update={"annotations": {FORCE_SYNC_ANNOTATION: "now"}})
    await env.controller.reconcile(forced)
    restarts = [w for w in env.kube.writes if w.verb == "restart"]
    assert [(w.name, w.detail) for w in restarts] == [("db", "StatefulSet")]


async def test_drift_seen_and_repaired_without_logging_values(env: Env) -> None:
    import structlog

    env.bao.put(env.path, {"password": "from-vault"})
    env.kube.apply(_resource(env))
    await env.controller.reconcile(_stored(env))
    env.kube.secrets[(NS, "app-db")] = SecretObject(
        NS,
        "app-db",
        {"password": "hand-edited"},
        labels=_secret(env).labels,  # type: ignore[union-attr]
    )
    stale = _stored(env).model_copy(
        update={"status": _stored(env).status.model_copy(update={"last_synced_at": None})}
    )
    with structlog.testing.capture_logs() as logs:
        await env.controller.reconcile(stale)
    assert any(e["event"] == "secretsync.drift" for e in logs)
    assert "hand-edited" not in repr(logs)
    assert "from-vault" not in repr(logs)
    secret = _secret(env)
    assert secret is not None
    assert secret.data == {"password": "from-vault"}
