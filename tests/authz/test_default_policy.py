"""The shipped bundle: each role's access and obligations, as tables (acceptance 2)."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.authz import (
    Authorizer,
    Context,
    Resource,
    Subject,
    build_input,
    format_test_results,
    run_policy_tests,
)
from stockade.core.settings import AuthzSettings

from .conftest import ssh_request

#: The base obligations as the typed set reports them (defaults left out).
BASE = {"agent_forwarding": True, "max_session_seconds": 28800}


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer(settings=AuthzSettings())


def test_shipped_rego_tests_pass() -> None:
    results = run_policy_tests()
    assert len(results) >= 25
    assert all(r.passed for r in results), format_test_results(results)


@pytest.mark.parametrize(
    ("roles", "extra"),
    [
        ((), {}),
        (("dev",), {}),
        (("contractor",), {"record_session": True, "record_input": True}),
        (("sudoer",), {"sudo": True}),
        (("tunneler",), {}),
        (("admin",), {}),
        (("contractor", "sudoer"), {"record_session": True, "record_input": True, "sudo": True}),
        (("admin", "contractor"), {"record_session": True, "record_input": True}),
        (("admin", "sudoer"), {"sudo": True}),
    ],
)
@pytest.mark.parametrize("action", ["ssh.connect", "ssh.exec", "ssh.shell", "ssh.agent"])
def test_owner_session_obligations_per_role(
    authz: Authorizer, roles: tuple[str, ...], extra: dict[str, Any], action: str
) -> None:
    decision = authz.decide(ssh_request(action, user="alice", roles=roles, owner="alice"))
    assert decision.allow
    assert decision.obligations.to_dict() == {**BASE, **extra}
    assert decision.reasons == ()
    assert type(decision.obligations.max_session_seconds) is int


@pytest.mark.parametrize(
    ("action", "roles", "owner", "allow", "reasons"),
    [
        ("ssh.connect", (), "bob", False, ("workspace ws1 is owned by bob",)),
        ("ssh.exec", ("sudoer", "tunneler", "contractor"), "bob", False,
         ("workspace ws1 is owned by bob",)),
        ("ssh.connect", (), None, False, ("workspace ws1 has no owner",)),
        ("ssh.connect", ("admin",), "bob", True, ()),
        ("ssh.direct-tcpip", (), "alice", False, ("port forwarding requires role tunneler",)),
        ("ssh.tcpip-forward", ("sudoer",), "alice", False,
         ("port forwarding requires role tunneler",)),
        ("ssh.direct-tcpip", ("tunneler",), "alice", True, ()),
        ("ssh.tcpip-forward", ("tunneler",), "alice", True, ()),
        ("ssh.direct-tcpip", ("tunneler",), "bob", False, ("workspace ws1 is owned by bob",)),
        ("ssh.direct-tcpip", (), "bob", False,
         ("port forwarding requires role tunneler", "workspace ws1 is owned by bob")),
        ("workspace.create", ("dev",), "alice", False,
         ("no rule allows workspace.create on workspace ws1 for alice",)),
        ("workspace.create", ("admin",), "alice", True, ()),
        ("identity.manage", ("sudoer",), None, False, ("identity.manage requires role admin",)),
        ("identity.manage", ("admin",), None, True, ()),
    ],
)  # fmt: skip
def test_access_table(
    authz: Authorizer,
    action: str,
    roles: tuple[str, ...],
    owner: str | None,
    allow: bool,
    reasons: tuple[str, ...],
) -> None:
    decision = authz.decide(ssh_request(action, user="alice", roles=roles, owner=owner))
    assert decision.allow is allow
    assert decision.reasons == reasons
    if not allow:
        assert decision.obligations.to_dict() == {}


def test_ssh_to_something_other_than_a_workspace(authz: Authorizer) -> None:
    decision = authz.decide(ssh_request(kind="credential"))
    assert not decision.allow
    assert decision.reasons == ("ssh.connect needs a workspace, not a credential",)


@pytest.mark.parametrize(
    ("enrolled", "method", "allow", "reasons"),
    [
        (("publickey", "password"), "password", True, ()),
        (("publickey",), "password", False, ("user alice has no password set",)),
        (("publickey",), "publickey", True, ()),
        (("password",), "publickey", False, ("user alice has not enrolled publickey",)),
    ],
)
def test_user_auth(
    authz: Authorizer, enrolled: tuple[str, ...], method: str, allow: bool, reasons: tuple[str, ...]
) -> None:
    doc = build_input(
        "user.auth",
        Resource(kind="user", name="alice", owner="alice"),
        Context(user=Subject("alice", auth_methods=enrolled), auth_method=method),
    )
    decision = authz.decide(doc)
    assert (decision.allow, decision.reasons) == (allow, reasons)
    assert decision.obligations.to_dict() == {}


@pytest.mark.parametrize(
    ("owner", "session", "allow", "reasons"),
    [
        ("alice", "s-1", True, ()),
        ("bob", "s-1", False, ("credential git:github.com belongs to bob, not alice",)),
        ("alice", None, False, ("credential.get needs a session",)),
        ("alice", "", False, ("credential.get needs a session",)),
    ],
)
def test_credential_get_for_the_sessions_own_user(
    authz: Authorizer, owner: str, session: str | None, allow: bool, reasons: tuple[str, ...]
) -> None:
    doc = build_input(
        "credential.get",
        Resource(kind="credential", name="git:github.com", owner=owner),
        Context(user=Subject("alice", roles=("dev",)), session_id=session),
    )
    decision = authz.decide(doc)
    assert (decision.allow, decision.reasons) == (allow, reasons)
