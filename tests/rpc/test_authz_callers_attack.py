"""Attacks on authz's table of callers that held (a second reviewer's probes, kept as tests):
lookalike common names, spoofed caller metadata, a decider's name in an intermediate CA, the
admin socket's exemption over an abstract unix socket. Real gRPC, the dev CA."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc import aio

from stockade.rpc import mtls_channel
from stockade.rpc._gen import authz_pb2, authz_pb2_grpc
from stockade.tls import CertificateFiles

from .test_authz_callers import METHODS, _call, _doc, _refused, _rejections
from .test_identity import Served, _odd_certificate, served
from .test_service_auth import Env, _decide, env, issuer

__all__ = ["env", "issuer", "served"]


@pytest.mark.parametrize(
    "name",
    [
        "gateway\x00",
        "gateway\x00shield",
        "Gateway",
        "gateway ",
        " gateway",
        "g\u0430teway",  # a Cyrillic a
        "gateway\u200b",  # a zero-width space
        "\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth admin
        "admin\x00",
    ],
    ids=repr,
)
async def test_a_lookalike_common_name_is_no_decider(
    served: Served, tmp_path: Path, name: str
) -> None:
    """ATTACK: a name that prints like ``gateway`` (NUL, case, spaces, a Cyrillic a, a zero
    width space, fullwidth ``admin``) is another name: refused on every method."""
    tls = _leaf(served, tmp_path, name)
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        for method in METHODS:
            await _refused(channel, method)
    assert {r for _m, r, _s, _c in _rejections(served)} == {"not_allowed"}


async def test_caller_metadata_does_not_name_the_caller(served: Served) -> None:
    """ATTACK: headers a proxy would set (x-forwarded-client-cert, x-ssl-client-s-dn, ...)
    do not make a shield certificate a gateway's."""
    spoofed = (
        ("x-forwarded-client-cert", 'Subject="CN=gateway";URI=spiffe://stockade/gateway'),
        ("x-ssl-client-s-dn", "CN=gateway"),
        ("x-client-cn", "gateway"),
        ("x509_common_name", "gateway"),
    )
    raw = json.dumps(_doc())
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        stub = authz_pb2_grpc.AuthzStub(channel)
        with pytest.raises(aio.AioRpcError) as failed:
            await stub.Decide(authz_pb2.DecideRequest(input_json=raw), metadata=spoofed, timeout=10)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _leaf(served: Served, tmp_path: Path, name: str) -> CertificateFiles:
    """A client certificate of the dev CA whose one common name is ``name`` (any text)."""
    tls = _odd_certificate(served, tmp_path, ["placeholder"])
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from .test_identity import _written

    old = x509.load_pem_x509_certificate(tls.paths[0].read_bytes())
    ca_key = serialization.load_pem_private_key(served.ca.ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(old.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return _written((tmp_path / "leaf.pem", tmp_path / "leaf.key"), key, pem, served)


def _chain_through_a_gateway_intermediate(served: Served, tmp_path: Path) -> CertificateFiles:
    """A leaf ``shield`` signed by an intermediate CA (signed by the dev CA) whose subject is
    ``CN=gateway``; the client presents leaf + intermediate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from .test_identity import _written

    served.ca.ensure()
    ca_cert = x509.load_pem_x509_certificate(served.ca.ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(served.ca.ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    mid = (
        x509.CertificateBuilder()
        .subject_name(mid_name)
        .issuer_name(ca_cert.subject)
        .public_key(mid_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shield")]))
        .issuer_name(mid_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(mid_key, hashes.SHA256())
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, mid))
    return _written((tmp_path / "chain.pem", tmp_path / "chain.key"), key, pem, served)


async def test_a_deciders_name_in_an_intermediate_is_not_the_callers(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: the leaf is the caller: ``gateway`` on the intermediate that signed a shield
    leaf gives the shield no decision (refused, or the handshake fails)."""
    tls = _chain_through_a_gateway_intermediate(served, tmp_path)
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        for method in METHODS:
            with pytest.raises(aio.AioRpcError) as failed:
                await _call(channel, method)
            assert failed.value.code() in {
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAVAILABLE,
            }
    assert {c for _m, _r, _s, c in _rejections(served)} == {"shield"}  # the handshake passed


async def test_a_listed_certificate_with_another_services_token_is_refused(
    env: Env,
) -> None:
    """ATTACK, the other way round: the gateway's certificate with the shield's projected
    token. The certificate table lets the gateway decide, the token layer does not let the
    shield: one layer does not override the other (PERMISSION_DENIED at the token layer,
    which knows no call of the shield here)."""
    shield = env.issuer.token(audience="stockade-api", service_account="stockade-shield")
    async with env.channel(shield, tls=env.client_tls("gateway")) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await _decide(channel)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert [e.reason for e in env.events.seen] == ["wrong-service"]  # calls nothing here
