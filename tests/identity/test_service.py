"""The identity service on SQLite and PostgreSQL: users, keys, secrets, workspaces, sessions,
tokens. Every call is one transaction, so failed calls leave nothing behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import structlog
from sqlalchemy import select

from stockade.core.errors import AlreadyExists, InvalidInput, NotFound, TokenRejected
from stockade.identity import IdentityService, KeyRing, User, totp_code
from stockade.store import Store, UserRow
from tests.identity.conftest import FakeClock, GeneratedKey

KeyLine = Callable[[], str]


async def test_add_get_list_user(service: IdentityService, new_key_line: KeyLine) -> None:
    line = new_key_line()
    user = await service.add_user(
        "alice",
        display_name="Alice A.",
        email="alice@example.com",
        roles=["dev", "sudoer", "dev"],
        groups=["team-a"],
        ssh_keys=[line],
    )
    assert isinstance(user, User)
    assert (user.name, user.display_name, user.email) == ("alice", "Alice A.", "alice@example.com")
    assert user.roles == ("dev", "sudoer")
    assert user.groups == ("team-a",)
    assert not user.disabled
    assert not user.has_password
    assert not user.totp_enabled
    assert [k.public_key for k in user.keys] == [" ".join(line.split()[:2])]
    assert user.created_at.tzinfo is not None
    assert await service.get_user("alice") == user
    await service.add_user("bob")
    assert [u.name for u in await service.list_users()] == ["alice", "bob"]


async def test_user_keys_match_ssh_keygen(
    service: IdentityService, keygen_keys: dict[str, GeneratedKey]
) -> None:
    names = ["ed25519", "ecdsa-384", "rsa-3072", "sk-ed25519"]
    user = await service.add_user("carol", ssh_keys=[keygen_keys[n].line for n in names])
    assert [k.fingerprint for k in user.keys] == [keygen_keys[n].fingerprint for n in names]
    found = await service.lookup_key("carol", keygen_keys["rsa-3072"].fingerprint)
    assert found is not None
    assert found.name == "carol"


async def test_duplicate_user(service: IdentityService) -> None:
    await service.add_user("alice")
    with pytest.raises(AlreadyExists, match="user 'alice' already exists"):
        await service.add_user("alice")


async def test_add_user_is_all_or_nothing(
    service: IdentityService, keygen_keys: dict[str, GeneratedKey], new_key_line: KeyLine
) -> None:
    taken = new_key_line()
    await service.add_user("alice", ssh_keys=[taken])
    with pytest.raises(AlreadyExists, match="registered to user alice"):
        await service.add_user("bob", ssh_keys=[new_key_line(), taken])
    with pytest.raises(InvalidInput, match="too weak"):
        await service.add_user("bob", ssh_keys=[new_key_line(), keygen_keys["rsa-2048"].line])
    with pytest.raises(InvalidInput, match="given twice"):
        await service.add_user("bob", ssh_keys=[taken, taken])
    with pytest.raises(NotFound):
        await service.get_user("bob")
    assert [u.name for u in await service.list_users()] == ["alice"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Alice"}, "username"),
        ({"name": "9lives"}, "username"),
        ({"name": "a" * 33}, "username"),
        ({"name": "al\nice"}, "username"),
        ({"name": "al ice"}, "username"),
        ({"name": "alice", "display_name": "A\x1b[31m"}, "display_name"),
        ({"name": "alice", "email": "not an email"}, "email"),
        ({"name": "alice", "roles": ["Admin"]}, "roles"),
        ({"name": "alice", "roles": "admin"}, "roles"),
        ({"name": "alice", "groups": ["a b"]}, "groups"),
        ({"name": "alice", "password": "short"}, "password"),
    ],
)
async def test_bad_user_input(
    service: IdentityService, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        await service.add_user(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert await service.list_users() == []


async def test_unknown_user_is_not_found(service: IdentityService, new_key_line: KeyLine) -> None:
    with pytest.raises(NotFound, match="user 'ghost' not found"):
        await service.get_user("ghost")
    with pytest.raises(NotFound):
        await service.set_disabled("ghost", True)
    with pytest.raises(NotFound):
        await service.remove_user("ghost")
    with pytest.raises(NotFound):
        await service.add_key("ghost", new_key_line())
    with pytest.raises(NotFound):
        await service.set_password("ghost", "long enough password")


async def test_keys_add_remove_and_ownership(
    service: IdentityService, new_key_line: KeyLine
) -> None:
    await service.add_user("alice")
    await service.add_user("bob")
    line = new_key_line()
    key = await service.add_key("alice", line)
    with pytest.raises(AlreadyExists, match="registered to user alice"):
        await service.add_key("bob", line)
    with pytest.raises(NotFound):
        await service.remove_key("bob", key.fingerprint)
    assert (await service.get_user("alice")).keys == (key,)
    await service.remove_key("alice", key.fingerprint)
    assert (await service.get_user("alice")).keys == ()
    await service.add_key("bob", line)  # free again once removed
    assert (await service.get_user("bob")).keys[0].fingerprint == key.fingerprint


async def test_lookup_key(service: IdentityService, new_key_line: KeyLine) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()], roles=["dev"])
    bob = await service.add_user("bob", ssh_keys=[new_key_line()])
    fp_alice, fp_bob = alice.keys[0].fingerprint, bob.keys[0].fingerprint
    found = await service.lookup_key("alice", fp_alice)
    assert found is not None
    assert (found.name, found.roles) == ("alice", ("dev",))
    assert await service.lookup_key("alice", fp_bob) is None  # a key of someone else
    assert await service.lookup_key("ghost", fp_alice) is None
    assert await service.lookup_key("alice", "SHA256:nope") is None
    assert await service.lookup_key("x" * 100, fp_alice) is None
    await service.set_disabled("alice", True)
    assert await service.lookup_key("alice", fp_alice) is None
    await service.set_disabled("alice", False)
    assert await service.lookup_key("alice", fp_alice) is not None


async def test_key_owner(service: IdentityService, new_key_line: KeyLine) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()])
    fingerprint = alice.keys[0].fingerprint
    assert await service.key_owner(fingerprint) == "alice"
    assert await service.key_owner("SHA256:nope") is None
    assert await service.key_owner("x" * 100) is None
    await service.remove_user("alice")
    assert await service.key_owner(fingerprint) is None


async def test_remove_user_cascades(service: IdentityService, new_key_line: KeyLine) -> None:
    line = new_key_line()
    user = await service.add_user("alice", ssh_keys=[line])
    await service.add_workspace("alice-2", owner="alice")
    await service.remove_user("alice")
    with pytest.raises(NotFound):
        await service.get_user("alice")
    assert await service.list_workspaces() == []
    assert await service.lookup_key("alice", user.keys[0].fingerprint) is None
    await service.add_user("dave", ssh_keys=[line])  # the key is free again


async def test_passwords(service: IdentityService) -> None:
    user = await service.add_user("alice", password="correct horse")
    assert user.has_password
    assert await service.verify_password("alice", "correct horse")
    assert not await service.verify_password("alice", "wrong horse")
    assert not await service.verify_password("ghost", "correct horse")
    await service.set_disabled("alice", True)
    assert not await service.verify_password("alice", "correct horse")
    await service.set_disabled("alice", False)
    await service.set_password("alice", "battery staple")
    assert not await service.verify_password("alice", "correct horse")
    assert await service.verify_password("alice", "battery staple")
    await service.set_password("alice", None)
    assert not (await service.get_user("alice")).has_password
    assert not await service.verify_password("alice", "battery staple")


async def test_totp(service: IdentityService, clock: FakeClock) -> None:
    await service.add_user("alice")
    assert not await service.verify_totp("alice", "000000")
    enrollment = await service.enable_totp("alice")
    assert enrollment.uri.startswith("otpauth://totp/stockade:alice?")
    assert (await service.get_user("alice")).totp_enabled
    secret = _b32(enrollment.secret)
    step = int(clock.now) // 30
    assert not await service.verify_totp("alice", totp_code(secret, step - 2))
    assert await service.verify_totp("alice", totp_code(secret, step))
    assert not await service.verify_totp("alice", totp_code(secret, step)), "replayed"
    assert not await service.verify_totp("alice", totp_code(secret, step - 1)), "older step"
    assert await service.verify_totp("alice", totp_code(secret, step + 1))
    clock.advance(300)
    assert not await service.verify_totp("alice", totp_code(secret, step))
    assert not await service.verify_totp("ghost", totp_code(secret, step))
    await service.disable_totp("alice")
    assert not (await service.get_user("alice")).totp_enabled


def _b32(text: str) -> bytes:
    import base64

    return base64.b32decode(text + "=" * (-len(text) % 8))


async def test_totp_secret_is_sealed_in_the_database(service: IdentityService) -> None:
    from sqlalchemy import select

    from stockade.store import UserRow

    await service.add_user("alice")
    enrollment = await service.enable_totp("alice")
    async with service._store.transaction(readonly=True) as session:
        stored = await session.scalar(select(UserRow.totp_secret).where(UserRow.name == "alice"))
    assert stored is not None
    assert stored.startswith("v1:")
    assert enrollment.secret not in stored
    assert _b32(enrollment.secret).hex() not in stored


async def test_workspaces(service: IdentityService) -> None:
    await service.add_user("alice")
    await service.add_user("bob")
    default = await service.get_workspace("alice")
    assert (default.owner, default.backend, default.config) == ("alice", "local", {})
    ws = await service.add_workspace(
        "ml", owner="bob", backend="kubernetes", config={"blueprint": "gpu"}
    )
    assert (ws.name, ws.owner, ws.backend, ws.config) == (
        "ml",
        "bob",
        "kubernetes",
        {"blueprint": "gpu"},
    )
    assert await service.get_workspace("ml") == ws
    with pytest.raises(AlreadyExists, match="owned by bob"):
        await service.add_workspace("ml", owner="alice")
    with pytest.raises(NotFound):
        await service.add_workspace("x", owner="ghost")
    with pytest.raises(InvalidInput):
        await service.add_workspace("Bad Name", owner="alice")
    with pytest.raises(InvalidInput, match="config"):
        await service.add_workspace("y", owner="alice", config={"x": object()})
    assert [w.name for w in await service.list_workspaces()] == ["alice", "bob", "ml"]
    assert [w.name for w in await service.list_workspaces(owner="bob")] == ["bob", "ml"]
    await service.remove_workspace("ml")
    with pytest.raises(NotFound):
        await service.get_workspace("ml")
    with pytest.raises(NotFound):
        await service.remove_workspace("ml")


async def test_default_workspace(service: IdentityService) -> None:
    await service.add_user("alice")
    await service.remove_workspace("alice")
    created = await service.default_workspace("alice")
    assert (created.name, created.owner, created.backend) == ("alice", "alice", "local")
    assert await service.default_workspace("alice") == created
    await service.add_workspace("carol", owner="alice")
    await service.add_user("carol")  # the name is taken: no default workspace for carol
    with pytest.raises(AlreadyExists, match="owned by alice"):
        await service.default_workspace("carol")


async def test_sessions(service: IdentityService) -> None:
    await service.add_user("alice")
    started = await service.start_session(
        "s-1", username="alice", workspace="alice", client_ip="::ffff:10.0.0.1", client_port=5555
    )
    assert started.live
    assert await service.is_session_live("s-1")
    with pytest.raises(AlreadyExists):
        await service.start_session(
            "s-1", username="alice", workspace="alice", client_ip="10.0.0.1", client_port=1
        )
    with pytest.raises(NotFound):
        await service.start_session(
            "s-2", username="ghost", workspace="alice", client_ip="10.0.0.1", client_port=1
        )
    with pytest.raises(InvalidInput, match="client_ip"):
        await service.start_session(
            "s-3", username="alice", workspace="alice", client_ip="10.0.0.300", client_port=1
        )
    await service.start_session(
        "s-4", username="alice", workspace="alice", client_ip="10.0.0.2", client_port=2
    )
    assert {s.session_id for s in await service.list_sessions(active_only=True)} == {"s-1", "s-4"}
    ended = await service.end_session(
        "s-1", exit_status=0, bytes_in=10, bytes_out=20, recording="/r/s-1.cast", reason="exit"
    )
    assert not ended.live
    assert (ended.exit_status, ended.bytes_in, ended.bytes_out) == (0, 10, 20)
    assert (ended.recording, ended.end_reason) == ("/r/s-1.cast", "exit")
    again = await service.end_session("s-1", exit_status=1, reason="late")
    assert again == ended, "the first end wins"
    assert not await service.is_session_live("s-1")
    assert not await service.is_session_live("never")
    assert [s.session_id for s in await service.list_sessions(active_only=True)] == ["s-4"]
    assert len(await service.list_sessions()) == 2
    assert (await service.get_session("s-1")) == ended
    with pytest.raises(NotFound):
        await service.end_session("nope")
    await service.remove_user("alice")
    assert (await service.get_session("s-1")).username == "alice", "history survives removal"


async def test_token_issue_and_verify(service: IdentityService, clock: FakeClock) -> None:
    await service.add_user("alice", roles=["dev"], groups=["team"])
    token = await service.issue_token("alice")
    claims = await service.verify_token(token)
    assert (claims.sub, claims.roles, claims.groups, claims.sid) == (
        "alice",
        ("dev",),
        ("team",),
        None,
    )
    assert claims.exp.timestamp() - claims.iat.timestamp() == 900
    assert (claims.iss, claims.aud) == ("stockade", "stockade")
    clock.advance(900)
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "expired"


async def test_token_audience_and_ttl(service: IdentityService) -> None:
    await service.add_user("alice")
    token = await service.issue_token("alice", audience="broker", ttl="5m")
    claims = await service.verify_token(token, audience="broker")
    assert claims.exp.timestamp() - claims.iat.timestamp() == 300
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "bad_audience"
    with pytest.raises(InvalidInput, match="ttl"):
        await service.issue_token("alice", ttl="2d")
    with pytest.raises(NotFound):
        await service.issue_token("ghost")


async def test_token_of_an_ended_session_stops_verifying(service: IdentityService) -> None:
    await service.add_user("alice")
    await service.add_user("bob")
    await service.start_session(
        "s-1", username="alice", workspace="alice", client_ip="10.0.0.1", client_port=1
    )
    token = await service.issue_token("alice", session_id="s-1")
    assert (await service.verify_token(token)).sid == "s-1"
    with pytest.raises(NotFound):
        await service.issue_token("bob", session_id="s-1")  # not bob's session
    await service.end_session("s-1", reason="logout")
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "session_ended"
    with pytest.raises(InvalidInput, match="has ended"):
        await service.issue_token("alice", session_id="s-1")


async def test_token_of_a_disabled_or_removed_user(service: IdentityService) -> None:
    await service.add_user("alice")
    token = await service.issue_token("alice")
    await service.set_disabled("alice", True)
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "user_disabled"
    with pytest.raises(InvalidInput, match="disabled"):
        await service.issue_token("alice")
    await service.set_disabled("alice", False)
    assert (await service.verify_token(token)).sub == "alice"
    await service.remove_user("alice")
    with pytest.raises(TokenRejected):
        await service.verify_token(token)


async def test_verified_roles_are_current_not_frozen(
    service: IdentityService, database_url: str
) -> None:
    await service.add_user("alice", roles=["tunneler", "dev"], groups=["g1"])
    token = await service.issue_token("alice")
    store = Store(database_url)  # an administrator's change, made straight in the database
    try:
        async with store.transaction() as session:
            row = await session.scalar(select(UserRow).where(UserRow.name == "alice"))
            assert row is not None
            row.roles = ["dev"]
            row.groups = []
    finally:
        await store.close()
    claims = await service.verify_token(token)
    assert (claims.roles, claims.groups) == (("dev",), ())


async def test_rotation_through_the_service(
    service: IdentityService, keyring: KeyRing, clock: FakeClock
) -> None:
    await service.add_user("alice")
    old = await service.issue_token("alice")
    keyring.rotate()
    new = await service.issue_token("alice")
    assert (await service.verify_token(old)).kid != (await service.verify_token(new)).kid
    assert len(service.jwks()["keys"]) == 2


async def test_logs_carry_no_secrets(service: IdentityService) -> None:
    with structlog.testing.capture_logs() as logs:
        await service.add_user("alice", password="hunter2hunter2")
        await service.set_password("alice", "swordfish-42")
        enrollment = await service.enable_totp("alice")
    assert {entry["event"] for entry in logs} >= {"user added", "password set", "totp enabled"}
    shown = repr(logs)
    for secret in ("hunter2hunter2", "swordfish-42", "$argon2id", enrollment.secret):
        assert secret not in shown
