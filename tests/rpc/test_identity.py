"""Who may ask identity the gateway's questions over mutual TLS (issue 9's attack session).

Every service certificate comes from the same CA. The gateway's calls mint sessions and tokens
(``OpenSession``), end sessions (``EndStaleSessions``, ``EndSession``) and answer credential
checks (``AuthenticateKey``/``AuthenticatePassword``/``VerifyTotp``): a certificate of another
service (a shield, a node agent) must not be able to make them. Administration stays an admin's.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc import aio

from stockade.authz import Authorizer
from stockade.core import InvalidInput, PermissionDenied, write_private
from stockade.core.events import Event, ServiceCallRejected
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing, PasswordHasher, SessionRequest
from stockade.rpc import IdentityClient, RpcServer, admin_channel, mtls_channel
from stockade.rpc._gen import identity_pb2, identity_pb2_grpc
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA, gateway_uri


@dataclass
class Served:
    server: RpcServer
    identity: IdentityService
    ca: DevCA

    events: list[Event] = dataclasses.field(default_factory=list)

    def client(self, name: str, *gateway_ids: str) -> CertificateFiles:
        """A fresh certificate of CN ``name`` naming ``gateway_ids`` (URI SANs), same CA."""
        cert, key = self.ca.mint(name, sans=["localhost", *map(gateway_uri, gateway_ids)])
        stem = self.ca.directory / "-".join(["client", name, *gateway_ids])
        paths = Path(f"{stem}.pem"), Path(f"{stem}.key")
        write_private(paths[1], key)
        write_private(paths[0], cert, mode=0o644)
        return CertificateFiles(*paths, self.ca.ca_cert_path)

    async def publish(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store,
        settings=IdentitySettings(),
        keyring=KeyRing(tmp_path / "keys"),
        password_hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),
    )
    ca = DevCA(tmp_path / "tls")
    issued = ca.issue("api")
    audit = Served(None, identity, ca)  # type: ignore[arg-type]  # the publisher, first
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=CertificateFiles(issued.cert, issued.key, issued.ca),
        admin_socket=tmp_path / "run" / "admin.sock",
        publisher=audit,
    )
    audit.server = server
    await server.start()
    try:
        yield audit
    finally:
        await server.stop(0)
        await store.close()


def _pubkey(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


def _request() -> SessionRequest:
    return SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="gw", boot_id="b1")


async def _admin_principal(served: Served, tmp_path: Path) -> object:
    await served.identity.add_user("root-ish", roles=["admin"], ssh_keys=[_pubkey(tmp_path, "k")])
    fingerprint = (await served.identity.get_user("root-ish")).keys[0].fingerprint
    principal = await served.identity.authenticate_key("root-ish", fingerprint)
    assert not hasattr(principal, "reason"), principal
    return principal


async def test_another_services_certificate_cannot_mint_a_session(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a non-gateway service certificate (``shield``) calls OpenSession with an admin's
    principal (public facts: name, key fingerprint) and gets a token carrying role admin."""
    principal = await _admin_principal(served, tmp_path)
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.open_session(principal, _request())  # type: ignore[arg-type]
    assert await served.identity.list_sessions(active_only=True) == []


async def test_another_services_certificate_cannot_end_a_gateways_sessions(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: end every live session of gateway ``gw`` (their tokens die): claim a new boot."""
    principal = await _admin_principal(served, tmp_path)
    opened = await served.identity.open_session(principal, _request())  # type: ignore[arg-type]
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.end_stale_sessions("gw", "another-boot")
    assert await served.identity.is_session_live(opened.session_id)


async def test_another_services_certificate_is_no_password_oracle(
    served: Served, tmp_path: Path
) -> None:
    await served.identity.add_user("pam", password="correct horse")
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.authenticate_password("pam", "correct horse")


async def test_the_gateway_certificate_opens_sessions_with_the_users_own_roles(
    served: Served, tmp_path: Path
) -> None:
    """A gateway may open sessions; a principal claiming roles the user lacks is refused, the
    token's roles are the user's row's; SetRoles and KillSession stay an admin's."""
    await served.identity.add_user("gil", ssh_keys=[_pubkey(tmp_path, "g")])
    fingerprint = (await served.identity.get_user("gil")).keys[0].fingerprint
    principal = await served.identity.authenticate_key("gil", fingerprint)
    assert not hasattr(principal, "reason")
    inflated = dataclasses.replace(principal, roles=("admin",))  # type: ignore[type-var]
    async with mtls_channel(
        "127.0.0.1", served.server.port, served.client("gateway", "gw")
    ) as channel:
        client = IdentityClient(channel, target="gateway")
        with pytest.raises(InvalidInput):  # identity checks the roles against the user's
            await client.open_session(inflated, _request())  # type: ignore[arg-type]
        opened = await client.open_session(principal, _request())  # type: ignore[arg-type]
        claims = await served.identity.verify_token(opened.token)
        assert claims.roles == ()
        for attempt in (
            client.set_roles("gil", ["admin"]),
            client.kill_session(opened.session_id, by="gateway"),
            client.verify_token(opened.token),  # the broker's check, not the gateway's
        ):
            with pytest.raises(PermissionDenied):
                await attempt
    assert (await served.identity.get_user("gil")).roles == ()
    assert await served.identity.is_session_live(opened.session_id)


async def test_another_services_certificate_cannot_declare_gateways_dead(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a heartbeat ends the sessions of silent gateways; only a gateway may send one."""
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="shield")
        with pytest.raises(PermissionDenied):
            await client.heartbeat("gw", "boot", stale_after=1)


async def test_a_gateway_heartbeat_round_trips(served: Served, tmp_path: Path) -> None:
    principal = await _admin_principal(served, tmp_path)
    await served.identity.heartbeat("gw", "b1", stale_after=3)
    opened = await served.identity.open_session(principal, _request())  # type: ignore[arg-type]
    gateway = served.client("gateway", "gw2")
    async with mtls_channel("127.0.0.1", served.server.port, gateway) as channel:
        client = IdentityClient(channel, target="gateway")
        beat = await client.heartbeat("gw2", "b2", stale_after=3)
        assert beat.alive
        assert beat.ended == ()
        with pytest.raises(InvalidInput):
            await client.heartbeat("gw2", "b2", stale_after=0.001)
    assert await served.identity.is_session_live(opened.session_id)


async def _gateway_b_with_a_session(served: Served, tmp_path: Path) -> str:
    """Gateway ``gw-b`` beating (boot ``boot-b``) and holding one live session."""
    principal = await _admin_principal(served, tmp_path)
    await served.identity.heartbeat("gw-b", "boot-b", stale_after=30)
    request = SessionRequest(
        client_ip="127.0.0.1", client_port=1, gateway_id="gw-b", boot_id="boot-b"
    )
    opened = await served.identity.open_session(principal, request)  # type: ignore[arg-type]
    return opened.session_id


async def _speak_for_gateway_b(served: Served, tmp_path: Path, tls: CertificateFiles) -> list[str]:
    """Heartbeat (stopping B's boot), EndStaleSessions (sweeping B's sessions under a new
    boot) and OpenSession (a session in B's name) for gateway ``gw-b`` with ``tls``: the
    messages of the three refusals. Every one must be refused, and change nothing."""
    sid_b = await _gateway_b_with_a_session(served, tmp_path)
    user = await served.identity.get_user("root-ish")
    principal = await served.identity.authenticate_key("root-ish", user.keys[0].fingerprint)
    as_b = SessionRequest(client_ip="127.0.0.1", client_port=2, gateway_id="gw-b", boot_id="boot-b")
    refused: list[str] = []
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        client = IdentityClient(channel, target="identity")
        for attempt in (
            client.heartbeat("gw-b", "boot-b", stale_after=30, stopping=True),
            client.end_stale_sessions("gw-b", "boot-intruder"),
            client.open_session(principal, as_b),  # type: ignore[arg-type]
        ):
            with pytest.raises(PermissionDenied) as denied:
                await attempt
            refused.append(str(denied.value))
        # the status on the wire is PERMISSION_DENIED, with the reason as its details
        stub = identity_pb2_grpc.IdentityStub(channel)
        with pytest.raises(aio.AioRpcError) as raw:
            await stub.Heartbeat(
                identity_pb2.HeartbeatRequest(gateway_id="gw-b", boot_id="boot-b", stale_after=30)
            )
        assert raw.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "gateway" in (raw.value.details() or "")
    assert await served.identity.is_session_live(sid_b)  # B's session lives on
    live = [s.session_id for s in await served.identity.list_sessions(active_only=True)]
    assert live == [sid_b]  # and nothing was opened in B's name
    assert (await served.identity.heartbeat("gw-b", "boot-b", stale_after=30)).alive
    return refused


def _rejections(served: Served) -> list[tuple[str, str, str]]:
    return [
        (e.method.rpartition("/")[2], e.reason, e.status)
        for e in served.events
        if isinstance(e, ServiceCallRejected)
    ]


async def test_a_gateway_certificate_cannot_speak_for_another_gateway(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: every gateway presents CN ``gateway``; gateway A's certificate (or a stolen one)
    beats, sweeps and opens sessions naming gateway B: B's boot declared stopped, B's live
    sessions ended as a "crashed" earlier boot, sessions opened in B's name. Identity checks
    the gateway id named by the call against the one the caller's certificate names."""
    refused = await _speak_for_gateway_b(served, tmp_path, served.client("gateway", "gw-a"))
    for message, method in zip(
        refused, ("Heartbeat", "EndStaleSessions", "OpenSession"), strict=True
    ):
        assert message.startswith("identity.session denied"), message
        assert f"{method} for gateway 'gw-b' from the certificate of gateway 'gw-a'" in message
    assert _rejections(served) == [
        ("Heartbeat", "wrong_gateway_id", "PERMISSION_DENIED"),
        ("EndStaleSessions", "wrong_gateway_id", "PERMISSION_DENIED"),
        ("OpenSession", "wrong_gateway_id", "PERMISSION_DENIED"),
        ("Heartbeat", "wrong_gateway_id", "PERMISSION_DENIED"),
    ]
    rejected = served.events[0]
    assert isinstance(rejected, ServiceCallRejected)
    assert rejected.method == "/stockade.identity.v1.Identity/Heartbeat"
    assert rejected.caller == "gateway"
    assert rejected.peer.startswith("ipv4:127.0.0.1:")
    # its own gateway id it may speak for
    async with mtls_channel(
        "127.0.0.1", served.server.port, served.client("gateway", "gw-a")
    ) as channel:
        client = IdentityClient(channel, target="identity")
        assert (await client.heartbeat("gw-a", "boot-a", stale_after=30)).alive
        assert await client.end_stale_sessions("gw-a", "boot-a") == []


async def test_a_gateway_certificate_naming_no_gateway_id_speaks_for_none(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a gateway certificate minted before ids were bound (CN ``gateway`` only) may
    speak for any gateway id it likes: it may speak for none."""
    refused = await _speak_for_gateway_b(served, tmp_path, served.client("gateway"))
    assert all("names no gateway id" in message for message in refused), refused
    assert {reason for _m, reason, _s in _rejections(served)} == {"no_gateway_id"}


async def test_a_gateway_certificate_naming_two_gateway_ids_speaks_for_neither(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a certificate naming two gateway ids (an issuer role allowing any URI SAN) must
    not speak for both, nor pick the one that suits the caller."""
    tls = served.client("gateway", "gw-a", "gw-b")
    refused = await _speak_for_gateway_b(served, tmp_path, tls)
    assert all("names 2 gateway ids" in message for message in refused), refused
    assert {reason for _m, reason, _s in _rejections(served)} == {"several_gateway_ids"}
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        with pytest.raises(PermissionDenied, match="names 2 gateway ids"):
            await IdentityClient(channel, target="identity").heartbeat(
                "gw-a", "boot-a", stale_after=30
            )


async def test_a_gateway_id_in_another_services_certificate_makes_it_no_gateway(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a shield certificate that names gateway B's id is still no gateway's."""
    refused = await _speak_for_gateway_b(served, tmp_path, served.client("shield", "gw-b"))
    assert all("needs a gateway certificate (shield)" in message for message in refused)
    assert {reason for _m, reason, _s in _rejections(served)} == {"not_gateway"}


async def test_an_admin_may_name_any_gateway(served: Served, tmp_path: Path) -> None:
    """The admin socket and an admin certificate stay exempt (operators end a dead gateway's
    boot by hand); nothing is audited as a refusal."""
    await served.identity.heartbeat("gw-b", "boot-b", stale_after=30)
    async with mtls_channel("127.0.0.1", served.server.port, served.client("admin")) as channel:
        client = IdentityClient(channel, target="identity")
        assert (await client.heartbeat("gw-b", "boot-b", stale_after=30)).alive
    assert served.server.admin_socket is not None
    async with admin_channel(served.server.admin_socket) as channel:
        client = IdentityClient(channel, target="identity")
        assert (await client.heartbeat("gw-c", "boot-c", stale_after=30)).alive
        assert await client.end_stale_sessions("gw-b", "boot-new") == []  # boot-b beats
    assert _rejections(served) == []


async def test_a_gateway_certificate_cannot_end_or_take_over_another_gateways_session(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: gateway A's certificate ends gateway B's live session by its id (EndSession),
    or mints a token bound to it (IssueToken with its session id). A session opened by a
    gateway is that gateway's alone; A's own sessions stay A's to end."""
    sid_b = await _gateway_b_with_a_session(served, tmp_path)
    principal = await served.identity.authenticate_key(
        "root-ish", (await served.identity.get_user("root-ish")).keys[0].fingerprint
    )
    await served.identity.heartbeat("gw-a", "boot-a", stale_after=30)
    as_a = SessionRequest(client_ip="127.0.0.1", client_port=3, gateway_id="gw-a", boot_id="boot-a")
    async with mtls_channel(
        "127.0.0.1", served.server.port, served.client("gateway", "gw-a")
    ) as channel:
        client = IdentityClient(channel, target="identity")
        for attempt in (
            client.end_session(sid_b, reason="exited"),
            client.issue_token("root-ish", session_id=sid_b),
        ):
            with pytest.raises(PermissionDenied, match="gateway 'gw-b' from the certificate of"):
                await attempt
        assert await served.identity.is_session_live(sid_b)
        opened = await client.open_session(principal, as_a)  # type: ignore[arg-type]
        assert await client.issue_token("root-ish", session_id=opened.session_id)
        ended = await client.end_session(opened.session_id, reason="exited")
        assert not ended.live
    assert [(m, r) for m, r, _s in _rejections(served)] == [
        ("EndSession", "wrong_gateway_id"),
        ("IssueToken", "wrong_gateway_id"),
    ]


async def test_a_gateway_id_that_identity_would_strip_speaks_for_none(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a certificate naming ``spiffe://stockade/gateway/gw-b `` (a trailing space: an
    issuer's URI glob such as ``.../gateway/gw-b*`` allows it) calls for ``'gw-b '``, which
    matches its certificate exactly; identity strips the id it records, so the call would
    stop B's boot and open sessions in B's name. An id a gateway could not be named by
    (:func:`gateway_uri`) speaks for no gateway."""
    cert, key = served.ca.mint("gateway", sans=["localhost", "spiffe://stockade/gateway/gw-b "])
    paths = tmp_path / "odd.pem", tmp_path / "odd.key"
    write_private(paths[1], key)
    write_private(paths[0], cert, mode=0o644)
    tls = CertificateFiles(*paths, served.ca.ca_cert_path)
    sid_b = await _gateway_b_with_a_session(served, tmp_path)
    user = await served.identity.get_user("root-ish")
    principal = await served.identity.authenticate_key("root-ish", user.keys[0].fingerprint)
    as_b = SessionRequest(
        client_ip="127.0.0.1", client_port=2, gateway_id="gw-b ", boot_id="boot-b"
    )
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        client = IdentityClient(channel, target="identity")
        for attempt in (
            client.heartbeat("gw-b ", "boot-b", stale_after=30, stopping=True),
            client.open_session(principal, as_b),  # type: ignore[arg-type]
        ):
            with pytest.raises(PermissionDenied, match="cannot be named"):
                await attempt
    assert await served.identity.is_session_live(sid_b)
    assert [s.session_id for s in await served.identity.list_sessions(active_only=True)] == [sid_b]
    assert (await served.identity.heartbeat("gw-b", "boot-b", stale_after=30)).alive
    assert {reason for _m, reason, _s in _rejections(served)} == {"bad_gateway_id"}


async def test_a_session_started_by_a_gateway_is_that_gateways(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: StartSession records a session without a gateway id, so every gateway
    certificate could end it (EndSession) or mint tokens bound to it (IssueToken). The
    session is recorded as the starting gateway's (the one id its certificate names)."""
    await served.identity.add_user("carol")
    async with (
        mtls_channel("127.0.0.1", served.server.port, served.client("gateway", "gw-a")) as a,
        mtls_channel("127.0.0.1", served.server.port, served.client("gateway", "gw-b")) as b,
    ):
        as_a = IdentityClient(a, target="identity")
        as_b = IdentityClient(b, target="identity")
        started = await as_a.start_session(
            "s-started-by-a", username="carol", workspace="carol", client_ip="127.0.0.1",
            client_port=22,
        )  # fmt: skip
        assert started.gateway_id == "gw-a"
        for attempt in (
            as_b.end_session("s-started-by-a", reason="exited"),
            as_b.issue_token("carol", session_id="s-started-by-a"),
        ):
            with pytest.raises(PermissionDenied, match="gateway 'gw-a' from the certificate of"):
                await attempt
        assert await served.identity.is_session_live("s-started-by-a")
        assert await as_a.issue_token("carol", session_id="s-started-by-a")
        assert not (await as_a.end_session("s-started-by-a", reason="exited")).live


async def test_a_gateway_id_differing_in_case_is_another_gateway(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: a certificate for ``GW-B`` (an issuer that compares names without case) speaks
    for ``GW-B`` only: identity compares ids exactly (as the store does), so B's boot and
    sessions are not its; percent-encoded or slashed ids are refused outright."""
    sid_b = await _gateway_b_with_a_session(served, tmp_path)
    async with mtls_channel(
        "127.0.0.1", served.server.port, served.client("gateway", "GW-B")
    ) as channel:
        client = IdentityClient(channel, target="identity")
        with pytest.raises(PermissionDenied, match="from the certificate of gateway 'GW-B'"):
            await client.heartbeat("gw-b", "boot-b", stale_after=30, stopping=True)
        with pytest.raises(InvalidInput, match="another gateway"):
            await client.heartbeat("GW-B", "boot-b", stale_after=30, stopping=True)
        assert await client.end_stale_sessions("GW-B", "boot-x") == []
        with pytest.raises(PermissionDenied):
            await client.end_session(sid_b, reason="exited")
    for odd in ("spiffe://stockade/gateway/gw%2Db", "spiffe://stockade/gateway/gw-b/x"):
        cert, key = served.ca.mint("gateway", sans=["localhost", odd])
        paths = tmp_path / "odd.pem", tmp_path / "odd.key"
        write_private(paths[1], key)
        write_private(paths[0], cert, mode=0o644)
        tls = CertificateFiles(*paths, served.ca.ca_cert_path)
        gateway_id = odd.rpartition("gateway/")[2]
        async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
            with pytest.raises(PermissionDenied, match="cannot be named"):
                await IdentityClient(channel, target="identity").heartbeat(
                    gateway_id, "boot-odd", stale_after=30
                )
    assert await served.identity.is_session_live(sid_b)
    assert (await served.identity.heartbeat("gw-b", "boot-b", stale_after=30)).alive


# --- who may ask identity what: one allow-list per method (the lookups were open to any
# certificate of the CA: a shield's could list every user and every session id) ---

#: Every method of the Identity service, from the protocol itself (a method added later is
#: in these tests at once).
METHODS = [m.name for m in identity_pb2.DESCRIPTOR.services_by_name["Identity"].methods]

#: Certificates of services that ask identity nothing (shield, audit and worktrace speak to
#: the bus and authz; authz and identity ask no identity question; ``api`` is ``stockade up``'s
#: whole-process certificate, whose services call identity in process).
NON_CALLERS = ("shield", "audit", "worktrace", "authz", "identity", "api", "console")


def _empty_call(stub: identity_pb2_grpc.IdentityStub, method: str) -> object:
    descriptor = identity_pb2.DESCRIPTOR.services_by_name["Identity"].methods_by_name[method]
    request = getattr(identity_pb2, descriptor.input_type.name)()
    if method == "IssueToken":  # the session-bound variant: the gateway's, refused here too
        request.session_id = "s-nope"
    return getattr(stub, method)(request, timeout=10)


async def _live_session(served: Served, tmp_path: Path) -> tuple[str, str]:
    """A user ``root-ish`` (role admin) with a live session: (session id, its token)."""
    principal = await _admin_principal(served, tmp_path)
    opened = await served.identity.open_session(principal, _request())  # type: ignore[arg-type]
    return opened.session_id, opened.token


def test_every_identity_method_has_an_allow_list() -> None:
    """The table decides every method (a method it does not list is refused to every service
    certificate); it lists no method the service does not have."""
    from stockade.rpc._identity import CALLERS, UNBOUND_ISSUE

    assert set(CALLERS) - {UNBOUND_ISSUE} == set(METHODS)
    assert CALLERS[UNBOUND_ISSUE] == frozenset()
    for lookup in ("GetSession", "FindSessions", "ListSessions", "GetUser", "ListUsers"):
        assert CALLERS[lookup] == frozenset(), lookup  # the CLI's (admin socket) and no service's
    assert CALLERS["IsSessionLive"] == CALLERS["VerifyToken"] == frozenset({"broker"})


@pytest.mark.parametrize("name", NON_CALLERS)
async def test_another_services_certificate_may_call_no_identity_method(
    served: Served, tmp_path: Path, name: str
) -> None:
    """ATTACK: a shield (audit, worktrace, authz...) certificate calls every identity method.
    Each is refused PERMISSION_DENIED with its reason before it runs, and audited."""
    await _live_session(served, tmp_path)
    async with mtls_channel("127.0.0.1", served.server.port, served.client(name)) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)
        for method in METHODS:
            with pytest.raises(aio.AioRpcError) as refused:
                await _empty_call(stub, method)  # type: ignore[misc]
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert f"({name})" in (refused.value.details() or ""), (method, refused.value)
    assert [m for m, _r, _s in _rejections(served)] == METHODS
    assert {s for _m, _r, s in _rejections(served)} == {"PERMISSION_DENIED"}
    assert all(e.caller == name for e in served.events if isinstance(e, ServiceCallRejected))


async def test_lookups_by_another_services_certificate_reveal_nothing(
    served: Served, tmp_path: Path
) -> None:
    """ATTACK: with a shield certificate, list every session (ids are handles for kills and
    prefix lookups), find them by prefix, read one, probe liveness, read users and their keys,
    check a stolen token. Every lookup is refused and audited with why."""
    sid, token = await _live_session(served, tmp_path)
    user = await served.identity.get_user("root-ish")
    fingerprint = user.keys[0].fingerprint
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = IdentityClient(channel, target="identity")
        attempts = {
            "ListSessions": client.list_sessions(active_only=True),
            "FindSessions": client.find_sessions(""),
            "GetSession": client.get_session(sid),
            "IsSessionLive": client.is_session_live(sid),
            "GetUser": client.get_user("root-ish"),
            "ListUsers": client.list_users(),
            "LookupKey": client.lookup_key("root-ish", fingerprint),
            "KeyOwner": client.key_owner(fingerprint),
            "GetWorkspace": client.get_workspace("root-ish"),
            "ListWorkspaces": client.list_workspaces(),
            "DefaultWorkspace": client.default_workspace("root-ish"),
            "VerifyToken": client.verify_token(token),
            "GetJwks": client.fetch_jwks(),
            "VerifyPassword": client.verify_password("root-ish", "guess"),
        }
        with structlog.testing.capture_logs() as logs:
            for method, attempt in attempts.items():
                with pytest.raises(PermissionDenied) as denied:
                    await attempt
                assert f"{method} needs " in str(denied.value), str(denied.value)
                assert sid not in str(denied.value)
    expected = [
        (m, "not_allowed" if m in ("IsSessionLive", "VerifyToken", "GetJwks") else "not_admin")
        for m in attempts
    ]
    assert [(m, r) for m, r, _s in _rejections(served)] == expected
    logged = [(e["method"], e["reason"]) for e in logs if e["event"] == "identity.call_refused"]
    assert logged == expected
    assert all(e["caller"] == "shield" for e in logs if e["event"] == "identity.call_refused")


async def test_the_broker_checks_tokens_and_liveness_and_reads_nothing_else(
    served: Served, tmp_path: Path
) -> None:
    """The broker (its token checks, its per-session sockets' liveness) keeps working; it may
    not enumerate sessions or users, nor ask the gateway's questions."""
    sid, token = await _live_session(served, tmp_path)
    async with mtls_channel("127.0.0.1", served.server.port, served.client("broker")) as channel:
        client = IdentityClient(channel, target="identity")
        assert (await client.verify_token(token)).sid == sid
        assert await client.is_session_live(sid)
        assert not await client.is_session_live("s-none")
        assert (await client.fetch_jwks())["keys"]
        for attempt in (
            client.list_sessions(),
            client.find_sessions(sid[:4]),
            client.get_session(sid),
            client.get_user("root-ish"),
            client.authenticate_password("root-ish", "guess"),
            client.heartbeat("gw", "b1", stale_after=30),
            client.issue_token("root-ish", session_id=sid),
        ):
            with pytest.raises(PermissionDenied):
                await attempt
    assert await served.identity.is_session_live(sid)


async def test_the_gateway_asks_its_questions_and_reads_nothing_else(
    served: Served, tmp_path: Path
) -> None:
    """A gateway certificate logs users in and keeps its sessions; the lookups and the
    broker's checks are not its business."""
    sid, token = await _live_session(served, tmp_path)
    async with mtls_channel(
        "127.0.0.1", served.server.port, served.client("gateway", "gw")
    ) as channel:
        client = IdentityClient(channel, target="identity")
        assert (await client.heartbeat("gw", "b1", stale_after=30)).alive
        for attempt in (
            client.list_sessions(),
            client.find_sessions(""),
            client.get_session(sid),
            client.is_session_live(sid),
            client.get_user("root-ish"),
            client.list_users(),
            client.verify_token(token),
        ):
            with pytest.raises(PermissionDenied):
                await attempt
        assert not (await client.end_session(sid, reason="exited")).live  # its own session


async def test_the_admin_and_the_admin_socket_may_look_everything_up(
    served: Served, tmp_path: Path
) -> None:
    sid, token = await _live_session(served, tmp_path)
    assert served.server.admin_socket is not None
    for opened in (
        mtls_channel("127.0.0.1", served.server.port, served.client("admin")),
        admin_channel(served.server.admin_socket),
    ):
        async with opened as channel:
            client = IdentityClient(channel, target="identity")
            assert [s.session_id for s in await client.list_sessions()] == [sid]
            assert [s.session_id for s in await client.find_sessions(sid[:6])] == [sid]
            assert (await client.get_session(sid)).live
            assert await client.is_session_live(sid)
            assert (await client.get_user("root-ish")).roles == ("admin",)
            assert (await client.verify_token(token)).sid == sid
            assert (await client.fetch_jwks())["keys"]
    assert _rejections(served) == []


def _odd_certificate(
    served: Served, tmp_path: Path, names: list[str], *ids: str
) -> CertificateFiles:
    """A certificate of the dev CA whose subject holds the common names ``names`` (none, or
    several: an issuer that signs what it is asked), and URI SANs naming ``ids``."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    served.ca.ensure()
    ca_cert = x509.load_pem_x509_certificate(served.ca.ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(served.ca.ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stockade")]
    subject += [x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names]
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    sans += [x509.UniformResourceIdentifier(gateway_uri(i)) for i in ids]
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = tmp_path / "-".join(["odd", *names, *ids])
    paths = Path(f"{stem}.pem"), Path(f"{stem}.key")
    return _written(paths, key, cert.public_bytes(serialization.Encoding.PEM), served)


def _written(paths: tuple[Path, Path], key: Any, pem: bytes, served: Served) -> CertificateFiles:
    """The key (0600) and the certificate PEM at ``paths``, trusted by ``served``'s CA."""
    from cryptography.hazmat.primitives import serialization

    write_private(
        paths[1],
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(paths[0], pem, mode=0o644)
    return CertificateFiles(*paths, served.ca.ca_cert_path)


#: Certificates naming no common name or several: each is refused every call (identity, authz).
ODD_NAMES = pytest.mark.parametrize(
    "names",
    [[], ["admin", "shield"], ["shield", "admin"], ["gateway", "shield"], ["broker", "broker"]],
    ids=lambda names: "+".join(names) or "no-cn",
)


@ODD_NAMES
async def test_a_certificate_with_several_common_names_or_none_is_refused(
    served: Served, tmp_path: Path, names: list[str]
) -> None:
    """ATTACK: a certificate naming ``admin`` and ``shield`` (or ``gateway`` and ``shield``)
    is exempt as an admin's, or passes as a gateway's; one with no common name is nobody's.
    A caller is known by exactly one common name: anything else is refused every call."""
    sid, token = await _live_session(served, tmp_path)
    tls = _odd_certificate(served, tmp_path, names, "gw")
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        client = IdentityClient(channel, target="identity")
        for attempt in (
            client.get_user("root-ish"),
            client.list_sessions(),
            client.verify_token(token),
            client.is_session_live(sid),
            client.heartbeat("gw", "b1", stale_after=30, stopping=True),
            client.add_user("mallory", roles=["admin"]),
        ):
            with pytest.raises(PermissionDenied) as denied:
                await attempt
            assert "common name" in str(denied.value), str(denied.value)
    reason = "no_common_name" if not names else "several_common_names"
    assert {r for _m, r, _s in _rejections(served)} == {reason}
    assert [u.name for u in await served.identity.list_users()] == ["root-ish"]
    assert await served.identity.is_session_live(sid)


async def test_a_listener_that_is_neither_mtls_nor_the_admin_socket_is_nobodys(
    served: Served,
) -> None:
    """ATTACK: only the admin socket may skip the certificate, but "not TLS" was taken for
    the admin socket: a TCP listener with any other credentials (here gRPC's local TCP ones, as
    a sidecar's plaintext port would be) made every caller an admin. A plaintext unix socket
    is the admin socket; any other transport needs a certificate, and has none here."""
    from stockade.rpc._identity import IdentityServicer

    server = aio.server()
    identity_pb2_grpc.add_IdentityServicer_to_server(
        IdentityServicer(served.identity, publisher=served), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    )
    await server.start()
    try:
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        async with aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            client = IdentityClient(channel, target="identity")
            for attempt in (client.list_users, lambda: client.add_user("mallory", roles=["admin"])):
                with pytest.raises(PermissionDenied) as denied:
                    await attempt()
                assert "common name" in str(denied.value), str(denied.value)
    finally:
        await server.stop(0)
    assert {r for _m, r, _s in _rejections(served)} == {"no_common_name"}
    assert await served.identity.list_users() == []


def _chain_certificate(served: Served, tmp_path: Path, shape: str) -> CertificateFiles:
    """A client certificate (and the chain it presents) of an odd ``shape``: ``intermediate``
    (CN ``shield`` issued by an intermediate CA whose CN is ``admin``), ``extra`` (CN
    ``shield``, with an admin certificate of the CA sent after it), ``ou`` (``admin`` as OU and
    as DNS and URI SANs, CN ``shield``), or a common name that looks like ``admin``."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    served.ca.ensure()
    ca_cert = x509.load_pem_x509_certificate(served.ca.ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(served.ca.ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def cert(
        subject: list[x509.NameAttribute],
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
        *,
        ca: bool = False,
        sans: tuple[x509.GeneralName, ...] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(issuer[0])
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), *sans]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(issuer[1], hashes.SHA256()), key

    def cn(name: str) -> x509.NameAttribute:
        return x509.NameAttribute(NameOID.COMMON_NAME, name)

    root = (ca_cert.subject, ca_key)
    if shape == "intermediate":
        middle, middle_key = cert([cn("admin")], root, ca=True)
        leaf, key = cert([cn("shield")], (middle.subject, middle_key))
        chain = [leaf, middle]
    elif shape == "extra":
        leaf, key = cert([cn("shield")], root)
        chain = [leaf, cert([cn("admin")], root)[0]]
    elif shape == "ou":
        ou = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")
        sans = (x509.DNSName("admin"), x509.UniformResourceIdentifier("spiffe://stockade/admin"))
        leaf, key = cert([ou, cn("shield")], root, sans=sans)
        chain = [leaf]
    else:
        leaf, key = cert([cn(shape)], root)
        chain = [leaf]
    paths = tmp_path / "chain.pem", tmp_path / "chain.key"
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return _written(paths, key, pem, served)


@pytest.mark.parametrize(
    "shape", ["intermediate", "extra", "ou", "Admin", "admin\x00", "\u0430dmin", " admin"]
)
async def test_admin_anywhere_but_the_leafs_one_common_name_is_no_admin(
    served: Served, tmp_path: Path, shape: str
) -> None:
    """ATTACK: ``admin`` where a careless check might read it: the CN of an intermediate CA
    that issued the caller's certificate, an admin certificate sent after the caller's own in
    its chain, the OU or a SAN, or a common name that only looks like it (case, NUL, a Cyrillic
    U+0430, a space). Only the leaf's one common name counts: each is refused as what it is."""
    tls = _chain_certificate(served, tmp_path, shape)
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        client = IdentityClient(channel, target="identity")
        with pytest.raises(PermissionDenied) as denied:
            await client.add_user("mallory", roles=["admin"])
    assert "AddUser needs an admin certificate" in str(denied.value), str(denied.value)
    assert await served.identity.list_users() == []
