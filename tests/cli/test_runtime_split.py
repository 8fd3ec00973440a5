"""The composition root with one service local (``stockade serve authz``), in-process: its
API over mutual TLS, projected service tokens enforced when configured, health always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls.jwks import serve_issuer

from stockade.authz import Context, Resource, Subject, build_input
from stockade.cli._runtime import Runtime, service_tls
from stockade.core import BackendError
from stockade.core.settings import Settings
from stockade.rpc import AuthzClient, mtls_channel
from stockade.tls import DevCA, ProjectedToken

DECIDE = "/stockade.authz.v1.Authz/Decide"


def _input() -> dict[str, object]:
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name="alice", roles=("contractor",)), source_ip="203.0.113.5"),
    )


async def test_serve_authz_enforces_projected_tokens(tmp_path: Path, nats_url: str) -> None:
    with serve_issuer() as issuer:
        allow = tmp_path / "service-auth.json"
        allow.write_text(
            json.dumps({"authz": {"audience": "stockade-authz", "allow": {DECIDE: ["gw"]}}})
        )
        DevCA(tmp_path / "tls").ensure()
        settings = Settings(
            data_dir=tmp_path / "authz",
            bus={"url": nats_url},
            api={"port": 0},
            tls={"directory": tmp_path / "tls"},
            authz={"decision_log": False},
            service_tokens={
                "enabled": True, "issuer": issuer.url, "jwks_url": issuer.url + "/jwks.json",
                "namespace": "stockade", "allow_file": allow,
            },
        )  # fmt: skip
        runtime = Runtime(settings, services=frozenset({"authz"}))
        await runtime.start()
        try:
            assert runtime.identity is None  # nothing else runs here
            assert runtime.rpc is not None
            assert runtime.rpc.admin_socket is None
            caller = service_tls(
                settings.model_copy(update={"data_dir": tmp_path / "gw"}), "gateway"
            )
            token = tmp_path / "token"
            token.write_text(issuer.token(audience="stockade-authz", service_account="gw"))
            port = runtime.rpc.port
            async with mtls_channel("127.0.0.1", port, caller, token=ProjectedToken(token)) as ch:
                decision = await AuthzClient(ch, target="authz", max_batch=1).decide_async(_input())
                assert decision.allow, decision.reasons
                health = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="stockade.authz.v1.Authz")
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            # ATTACK: a certificate from the same CA but no token, or a token for another
            # service account, decides nothing
            token.write_text(issuer.token(audience="stockade-authz", service_account="intruder"))
            async with mtls_channel("127.0.0.1", port, caller, token=ProjectedToken(token)) as ch:
                denied = await AuthzClient(ch, target="authz", max_batch=1).decide_async(_input())
                assert not denied.allow
                assert "permission_denied" in denied.reasons[0]
            async with mtls_channel("127.0.0.1", port, caller) as ch:
                denied = await AuthzClient(ch, target="authz", max_batch=1).decide_async(_input())
                assert not denied.allow
                assert "unauthenticated" in denied.reasons[0]
        finally:
            await runtime.stop()


def test_a_runtime_of_no_known_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown service sshd"):
        Runtime(Settings(data_dir=tmp_path), services=frozenset({"sshd"}))


async def test_a_peer_holding_another_services_certificate_is_not_trusted(
    tmp_path: Path, nats_url: str
) -> None:
    """ATTACK: ``peers.identity`` leads to a hostile server (a spoofed name, a hijacked
    Service) holding a certificate of the same CA, but another service's: a gateway's. The
    gateway would hand it every password it checks. The client checks the peer's certificate
    names the service it wants, not merely that it comes from the CA."""
    from stockade.core.settings import IdentitySettings
    from stockade.identity import IdentityService, KeyRing
    from stockade.rpc import RpcServer
    from stockade.store import Store

    DevCA(tmp_path / "tls").ensure()
    base = Settings(
        data_dir=tmp_path / "broker",
        bus={"url": nats_url},
        tls={"directory": tmp_path / "tls"},
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    try:
        for cert_name, trusted in (("gateway", False), ("identity", True)):
            server_tls = service_tls(
                base.model_copy(update={"data_dir": tmp_path / cert_name}), cert_name
            )
            server = RpcServer(identity=identity, authorizer=None, tls=server_tls)
            await server.start()
            settings = base.model_copy(
                update={
                    "peers": base.peers.model_copy(update={"identity": f"127.0.0.1:{server.port}"})
                }
            )
            runtime = Runtime(settings, services=frozenset({"broker"}))
            runtime._tls = service_tls(settings, "broker")
            try:
                if trusted:
                    assert (await runtime.identity_api.fetch_jwks())["keys"]
                else:
                    with pytest.raises(BackendError) as info:
                        await runtime.identity_api.fetch_jwks()
                    assert "Hostname Verification" in str(info.value), info.value
            finally:
                await runtime.stop()
                await server.stop(0)
    finally:
        await store.close()


def test_the_banner_shows_no_password_of_a_nats_cluster_url() -> None:
    """ATTACK (secrets in logs): ``bus.url`` may list a cluster, ``nats://u:p@a,nats://u:p@b``;
    the start-up banner and the status file show every address, no password."""
    from stockade.cli._runtime import _without_userinfo

    shown = _without_userinfo("nats://u:pw-one@a:4222,nats://u:pw-two@b:4222")
    assert "pw-one" not in shown
    assert "pw-two" not in shown
    assert "a:4222" in shown
    assert "b:4222" in shown
    assert (
        _without_userinfo("postgresql://app:pw@db:5432/stockade") == "postgresql://db:5432/stockade"
    )
