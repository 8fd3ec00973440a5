"""BrokerServer: TLS from the dev CA, port 0, bind errors, stop closes what it owns."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from stockade.authz import Authorizer
from stockade.broker import BrokerServer, build_backends, create_app
from stockade.core.errors import ConfigError
from stockade.core.settings import AuthzSettings, BrokerSettings, Settings, VaultSettings
from stockade.tls import DevCA


class NoIdentity:
    async def verify_token(self, token: str, *, audience: str | None = None) -> object:
        raise AssertionError("not called")


def make_server(tmp_path: Path, **broker: object) -> BrokerServer:
    settings = Settings(broker=BrokerSettings.model_validate({"port": 0, **broker}))
    return BrokerServer.from_settings(
        settings,
        identity=NoIdentity(),  # type: ignore[arg-type]
        authz=Authorizer(settings=AuthzSettings(decision_log=False)),
        publisher=None,
        ca=DevCA(tmp_path / "ca"),
    )


async def test_serves_tls_from_the_dev_ca(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    with pytest.raises(RuntimeError, match="after start"):
        _ = server.port
    async with server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        assert server.ca_path == tmp_path / "ca" / "ca.pem"
        context = ssl.create_default_context(cafile=str(server.ca_path))
        async with httpx.AsyncClient(base_url=server.url, verify=context) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/openapi.json")).status_code == 200
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        async with httpx.AsyncClient(
            base_url=server.url, verify=ssl.create_default_context()
        ) as strict:
            with pytest.raises(httpx.ConnectError):
                await strict.get("/healthz")
    assert "stopped" in repr(server)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


async def test_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = make_server(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match="STOCKADE_BROKER__PORT"):
            await server.start()


async def test_stop_closes_owned_backends(tmp_path: Path) -> None:
    settings = Settings(
        vault=VaultSettings(addr="http://127.0.0.1:1", token=SecretStr("t")),
        broker=BrokerSettings(port=0),
    )
    backends = build_backends(settings)
    assert sorted(backends) == ["vault"]
    app = create_app(
        identity=NoIdentity(),  # type: ignore[arg-type]
        authz=Authorizer(settings=AuthzSettings(decision_log=False)),
        backends=backends,
        publisher=None,
    )
    tls = DevCA(tmp_path / "ca").issue("broker")
    server = BrokerServer(app, tls=tls, owned=backends)
    await server.start()
    await server.stop()
    await server.stop()  # idempotent
    assert "closed" in repr(backends["vault"])


def test_build_backends_follows_settings() -> None:
    assert build_backends(Settings()) == {}
    routed = Settings(
        broker=BrokerSettings.model_validate(
            {
                "routes": [{"kind": "kubernetes", "pattern": "prod-*", "backend": "kubernetes"}],
                "kubernetes": {"api_url": "https://127.0.0.1:6443", "ca_file": None},
            }
        )
    )
    assert sorted(build_backends(routed)) == ["kubernetes"]
    missing_ca = Settings(
        broker=BrokerSettings.model_validate(
            {"default_backend": "kubernetes", "kubernetes": {"api_url": "https://127.0.0.1:6443"}}
        )
    )
    with pytest.raises(ConfigError, match="CA_FILE"):
        build_backends(missing_ca)


def test_routes_referring_to_missing_backends_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not configured"):
        make_server(tmp_path, routes=[{"kind": "git", "backend": "vault"}])
