"""HttpKubernetesAdapter's requests, as a loopback HTTP server playing the API server sees them.

No kube-apiserver can run here; the server records method, path, headers and body, and answers
what the API server answers for each (200/201 with the object, 404 Status, 409 Status).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stockade.secretsync import (
    HttpKubernetesAdapter,
    KubernetesError,
    SecretObject,
    VaultSecret,
    VaultSecretStatus,
)


class ApiServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.url = ""


@pytest.fixture
def api() -> Iterator[ApiServer]:
    state = ApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.requests.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers), "body": body})  # fmt: skip
            if self.command == "GET" and self.path in state.objects:
                code, out = 200, state.objects[self.path]
            elif self.command == "GET" and self.path.endswith("/vaultsecrets"):
                code, out = 200, {"items": list(state.objects.values())}
            elif self.command in {"GET", "DELETE"}:
                code, out = (
                    404,
                    {
                        "kind": "Status",
                        "reason": "NotFound",
                        "message": 'secrets "x" not found: data echoed s3cret',
                    },
                )
            elif self.command == "POST" and self.path.endswith("/conflict/secrets"):
                code, out = 409, {"kind": "Status", "reason": "AlreadyExists"}
            else:
                code, out = 200, body or {}
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("api-token-1\n")
    return path


def _owner() -> VaultSecret:
    return VaultSecret.from_object(
        {"metadata": {"name": "db", "namespace": "apps", "uid": "u-1"},
         "spec": {"mount": "secret", "path": "db", "type": "kv-v2",
                  "destination": {"name": "db"}}}
    )  # fmt: skip


async def test_create_secret_shape(api: ApiServer, token: Path) -> None:
    kube = HttpKubernetesAdapter(api.url, token=token)
    secret = SecretObject("apps", "db", {"password": "pw"}, labels={"a": "b"})
    await kube.create_secret(secret, _owner())
    await kube.aclose()
    (req,) = api.requests
    assert (req["method"], req["path"]) == ("POST", "/api/v1/namespaces/apps/secrets")
    assert req["headers"]["Authorization"] == "Bearer api-token-1"
    body = req["body"]
    assert body["apiVersion"] == "v1"
    assert body["kind"] == "Secret"
    assert body["type"] == "Opaque"
    assert base64.b64decode(body["data"]["password"]) == b"pw"
    assert body["metadata"]["labels"] == {"a": "b"}
    (ref,) = body["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "secretsync.stockade.dev/v1alpha1",
        "kind": "VaultSecret",
        "name": "db",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": False,
    }


async def test_get_replace_delete_shapes(api: ApiServer, token: Path) -> None:
    path = "/api/v1/namespaces/apps/secrets/db"
    api.objects[path] = SecretObject("apps", "db", {"k": "v"}, resource_version="42").to_object()
    kube = HttpKubernetesAdapter(api.url, token=token)
    got = await kube.get_secret("apps", "db")
    assert got is not None
    assert got.data == {"k": "v"}
    assert got.resource_version == "42"
    assert await kube.get_secret("apps", "missing") is None
    token.write_text("api-token-2")  # noqa: ASYNC240 - kubelet rotated it
    await kube.replace_secret(SecretObject("apps", "db", {"k": "w"}, resource_version="42"), None)
    await kube.delete_secret("apps", "db")
    await kube.delete_secret("apps", "gone")  # 404 on delete is done, not an error
    await kube.aclose()
    put = api.requests[2]
    assert (put["method"], put["path"]) == ("PUT", path)
    assert put["body"]["metadata"]["resourceVersion"] == "42"
    assert put["headers"]["Authorization"] == "Bearer api-token-2"
    assert [r["method"] for r in api.requests[3:]] == ["DELETE", "DELETE"]


async def test_rollout_restart_shape(api: ApiServer, token: Path) -> None:
    kube = HttpKubernetesAdapter(api.url, token=token)
    await kube.restart("apps", "StatefulSet", "db", datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    await kube.aclose()
    (req,) = api.requests
    assert (req["method"], req["path"]) == (
        "PATCH",
        "/apis/apps/v1/namespaces/apps/statefulsets/db",
    )
    assert req["headers"]["Content-Type"] == "application/strategic-merge-patch+json"
    assert req["body"] == {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-01T12:00:00Z"}}}}}  # fmt: skip


async def test_status_patch_shape(api: ApiServer, token: Path) -> None:
    kube = HttpKubernetesAdapter(api.url, token=token)
    await kube.update_status(_owner(), VaultSecretStatus(secret_mac="ab" * 32, created=True))
    await kube.aclose()
    (req,) = api.requests
    assert (
        req["path"]
        == "/apis/secretsync.stockade.dev/v1alpha1/namespaces/apps/vaultsecrets/db/status"
    )
    assert req["headers"]["Content-Type"] == "application/merge-patch+json"
    assert req["body"]["status"]["secretMac"] == "ab" * 32
    assert req["body"]["status"]["created"] is True


async def test_list_vault_secrets(api: ApiServer, token: Path) -> None:
    api.objects["/x"] = {
        "metadata": {"name": "db", "namespace": "apps", "uid": "u", "generation": 3},
        "spec": {"mount": "secret", "path": "db", "type": "kv-v2", "destination": {"name": "db"}},
    }
    kube = HttpKubernetesAdapter(api.url, token=token)
    (found,) = await kube.list_vault_secrets()
    await kube.aclose()
    assert (found.name, found.generation) == ("db", 3)
    assert api.requests[0]["path"] == "/apis/secretsync.stockade.dev/v1alpha1/vaultsecrets"


async def test_errors_drop_the_body(api: ApiServer, token: Path) -> None:
    kube = HttpKubernetesAdapter(api.url, token=token)
    with pytest.raises(KubernetesError) as caught:
        await kube.create_secret(SecretObject("conflict", "db", {"password": "s3cret"}), None)
    await kube.aclose()
    assert caught.value.status == 409
    assert "AlreadyExists" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_secret_repr_hides_data() -> None:
    assert "pw" not in repr(SecretObject("apps", "db", {"password": "pw"}))
