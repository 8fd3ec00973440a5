"""The login path's driver-level queries answer exactly what the ORM reads answer.

``lookup_key``, ``authenticate_key``/``authenticate_password``, ``verify_token`` and
``is_session_live`` run one prepared statement on the driver (no ORM objects); each case here
compares their answers with the ORM's own reads of the same rows (``get_user``,
``get_workspace``, ``get_session``), on SQLite and PostgreSQL, and walks the revocations a
login must see at once (disabled user, removed key, removed user, ended session).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import pytest

from stockade.core.errors import StoreUnavailable, TokenRejected
from stockade.identity import AuthFailure, IdentityService, Principal

KeyLine = Callable[..., str]


async def test_lookup_key_equals_the_orm_user(
    service: IdentityService, new_key_line: KeyLine
) -> None:
    user = await service.add_user(
        "alice",
        ssh_keys=[new_key_line("one"), new_key_line("two"), new_key_line("three")],
        roles=["dev", "ops"],
        groups=["g1"],
        display_name="Alice A.",
        email="alice@example.org",
    )
    await service.set_password("alice", "correct horse battery staple")
    await service.enable_totp("alice")
    reference = await service.get_user("alice")  # the ORM's answer
    assert reference.has_password
    assert reference.totp_enabled
    for key in user.keys:  # any of her keys finds the same user, every key in order
        found = await service.lookup_key("alice", key.fingerprint)
        assert found == reference
        assert found is not None
        assert all(k.created_at.tzinfo is UTC for k in found.keys)
        assert found.created_at.tzinfo is UTC
    plain = await service.add_user("bob", ssh_keys=[new_key_line()])
    assert await service.lookup_key("bob", plain.keys[0].fingerprint) == plain


async def test_lookup_key_revocations(service: IdentityService, new_key_line: KeyLine) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line(), new_key_line()])
    bob = await service.add_user("bob", ssh_keys=[new_key_line()])
    first, second = (k.fingerprint for k in alice.keys)
    assert await service.lookup_key("alice", bob.keys[0].fingerprint) is None
    assert await service.lookup_key("bob", first) is None  # the username switch
    await service.remove_key("alice", first)
    assert await service.lookup_key("alice", first) is None
    found = await service.lookup_key("alice", second)
    assert found is not None
    assert [k.fingerprint for k in found.keys] == [second]
    await service.set_disabled("alice", True)
    assert await service.lookup_key("alice", second) is None
    await service.set_disabled("alice", False)
    await service.remove_user("alice")
    assert await service.lookup_key("alice", second) is None
    for name, fingerprint in [
        ("", first),
        ("alice'--", second),
        ("b" * 33, first),
        ("bob", "%"),
        ("bob", "x" * 65),
        ("BOB", bob.keys[0].fingerprint),
    ]:
        assert await service.lookup_key(name, fingerprint) is None, (name, fingerprint)  # fmt: skip


async def test_authenticate_key_matches_the_orm_workspace(
    service: IdentityService, new_key_line: KeyLine
) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()], roles=["dev"])
    await service.add_user("bob", ssh_keys=[new_key_line()])
    await service.add_workspace("lab", owner="alice", backend="ssh", config={"host": "h", "n": 1})
    await service.add_workspace("bobs", owner="bob")
    fingerprint = alice.keys[0].fingerprint
    result = await service.authenticate_key("alice+lab", fingerprint)
    assert isinstance(result, Principal)
    assert result.workspace == await service.get_workspace("lab")
    assert (result.username, result.roles, result.target) == ("alice", ("dev",), "alice+lab")
    assert result.auth_methods == ("publickey",)
    assert result.workspace.created_at.tzinfo is UTC
    own = await service.authenticate_key("alice", fingerprint)  # the default, created now
    assert isinstance(own, Principal)
    assert own.workspace == await service.get_workspace("alice")
    again = await service.authenticate_key("alice", fingerprint)  # found this time
    assert isinstance(again, Principal)
    assert again.workspace == own.workspace


@pytest.mark.parametrize(
    ("target", "which", "reason"),
    [
        ("alice", "bob", "key_not_owned"),
        ("ghost", "alice", "unknown_user"),
        ("alice", None, "unknown_key"),
        ("alice+nope", "alice", "unknown_workspace"),
        ("alice+bobs", "alice", "policy_target"),  # another's workspace: authz decides
        ("bob", "alice", "key_not_owned"),  # the username switch, answered by the key's owner
        ("ALICE", "alice", "invalid_username"),
        ("alice+", "alice", "invalid_username"),
    ],
)
async def test_authenticate_key_refusals(
    service: IdentityService, new_key_line: KeyLine, target: str, which: str | None, reason: str
) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()])
    bob = await service.add_user("bob", ssh_keys=[new_key_line()])
    await service.add_workspace("bobs", owner="bob")
    fingerprint = {"alice": alice, "bob": bob}[which].keys[0].fingerprint if which else "SHA256:x"
    result = await service.authenticate_key(target, fingerprint)
    if reason == "policy_target":  # a named workspace of someone else is found; authz refuses
        assert isinstance(result, Principal)
        assert result.workspace.owner == "bob"
        return
    assert result == AuthFailure(reason)


async def test_authenticate_after_revocations(
    service: IdentityService, new_key_line: KeyLine
) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()])
    fingerprint = alice.keys[0].fingerprint
    assert isinstance(await service.authenticate_key("alice", fingerprint), Principal)
    await service.set_disabled("alice", True)
    assert await service.authenticate_key("alice", fingerprint) == AuthFailure("user_disabled")
    await service.set_disabled("alice", False)
    await service.remove_key("alice", fingerprint)
    assert await service.authenticate_key("alice", fingerprint) == AuthFailure("unknown_key")
    await service.remove_user("alice")
    assert await service.authenticate_key("alice", fingerprint) == AuthFailure("unknown_user")


async def test_authenticate_password(service: IdentityService) -> None:
    await service.add_user("alice")
    assert await service.authenticate_password("alice", "pw") == AuthFailure("no_password")
    await service.set_password("alice", "correct horse battery staple")
    assert await service.authenticate_password("alice", "wrong") == AuthFailure("bad_password")
    ok = await service.authenticate_password("alice", "correct horse battery staple")
    assert isinstance(ok, Principal)
    assert ok.auth_methods == ("publickey", "password")
    await service.set_disabled("alice", True)
    disabled = await service.authenticate_password("alice", "correct horse battery staple")
    assert disabled == AuthFailure("user_disabled")


async def test_token_check_and_session_liveness(service: IdentityService) -> None:
    await service.add_user("alice", roles=["dev"])
    await service.add_user("bob")
    await service.start_session(
        "s-1", username="alice", workspace="alice", client_ip="10.0.0.1", client_port=1
    )
    await service.start_session(
        "s-2", username="bob", workspace="bob", client_ip="10.0.0.1", client_port=2
    )
    token = await service.issue_token("alice", session_id="s-1")
    bare = await service.issue_token("alice")
    claims = await service.verify_token(token)
    assert (claims.sub, claims.sid, claims.roles) == ("alice", "s-1", ("dev",))
    assert (await service.verify_token(bare)).sid is None
    assert await service.is_session_live("s-1")
    assert not await service.is_session_live("s-nope")
    assert not await service.is_session_live("x" * 65)
    await service.end_session("s-1", reason="exited")
    assert not await service.is_session_live("s-1")
    assert (await service.get_session("s-1")).ended_at is not None
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "session_ended"
    assert (await service.verify_token(bare)).sub == "alice"  # a token without sid lives on
    await service.set_disabled("alice", True)
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(bare)
    assert info.value.reason == "user_disabled"


async def test_token_bound_to_another_users_session(
    service: IdentityService, database_url: str
) -> None:
    """A token whose ``sid`` names a live session of someone else is refused (a signed token
    cannot be made so by the API; the check holds however the row came to be)."""
    await service.add_user("alice")
    await service.add_user("bob")
    await service.start_session(
        "s-a", username="alice", workspace="alice", client_ip="10.0.0.1", client_port=1
    )
    await service.start_session(
        "s-b", username="bob", workspace="bob", client_ip="10.0.0.1", client_port=2
    )
    token = await service.issue_token("alice", session_id="s-a")
    async with service._store.transaction() as session:
        from sqlalchemy import update

        from stockade.store import SessionRow

        await session.execute(
            update(SessionRow).where(SessionRow.id == "s-a").values(username="bob")
        )
    with pytest.raises(TokenRejected) as info:
        await service.verify_token(token)
    assert info.value.reason == "session_ended"


async def test_closed_store_is_unavailable(service: IdentityService, new_key_line: KeyLine) -> None:
    alice = await service.add_user("alice", ssh_keys=[new_key_line()])
    assert await service.lookup_key("alice", alice.keys[0].fingerprint) is not None
    await service._store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await service.lookup_key("alice", alice.keys[0].fingerprint)
