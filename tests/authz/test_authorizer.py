"""Authorizer: bundle loading, compile errors with file:line, deny on any failure, reload."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from stockade.authz import Authorizer, Decision
from stockade.authz._bundle import DEFAULT_BUNDLE_DIR
from stockade.core.errors import PermissionDenied, PolicyError
from stockade.core.settings import AuthzSettings

from .conftest import HEADER, ssh_request, write_bundle

ALLOW_ALL = HEADER + 'decision := {"allow": true, "obligations": {"sudo": true}, "reasons": []}\n'
DENY_ALL = HEADER + 'decision := {"allow": false, "obligations": {}, "reasons": ["closed"]}\n'


def make(root: Path, files: dict[str, str], **settings: float) -> Authorizer:
    return Authorizer(settings=AuthzSettings(**settings), bundle_dir=write_bundle(root, files))


def test_shipped_bundle_by_default(settings: AuthzSettings) -> None:
    authz = Authorizer(settings=settings)
    assert authz.bundle_dir == DEFAULT_BUNDLE_DIR
    assert len(authz.revision) == 12
    assert authz.decide(ssh_request()).allow


def test_policy_dir_setting_and_explicit_dir(tmp_path: Path) -> None:
    write_bundle(tmp_path / "a", {"p.rego": ALLOW_ALL})
    write_bundle(tmp_path / "b", {"p.rego": DENY_ALL})
    from_settings = Authorizer(settings=AuthzSettings(policy_dir=tmp_path / "a"))
    assert from_settings.decide(ssh_request()).allow
    explicit = Authorizer(
        settings=AuthzSettings(policy_dir=tmp_path / "a"), bundle_dir=tmp_path / "b"
    )
    assert explicit.decide(ssh_request()) == Decision.deny("closed")


def test_nested_files_data_json_and_hidden_files(tmp_path: Path) -> None:
    authz = make(
        tmp_path,
        {
            "main.rego": HEADER + 'decision := {"allow": data.limits.open, "reasons": []}\n',
            "lib/extra.rego": "package extra\n\nx := 1\n",
            ".hidden.rego": "package broken\n\nthis is not rego\n",
            ".git/x.rego": "neither is this\n",
            "data.json": '{"limits": {"open": true}}',
        },
    )
    assert authz.decide(ssh_request()) == Decision(allow=True)


@pytest.mark.parametrize(
    ("files", "location", "message"),
    [
        ({"ok.rego": ALLOW_ALL, "bad.rego": "package x\n\nallow if {\n  input.a ==\n}\n"},
         "bad.rego:5", "expecting expression"),
        ({"sub/bad.rego": "package x\n\nallow if { 1 = }\n"}, "sub/bad.rego:3", "expecting"),
        ({"p.rego": HEADER + "decision := d if {\n\tinput.x == y\n}\n"}, "p.rego:6",
         "use of undefined variable `y` is unsafe"),
        ({"p.rego": HEADER + "decision := 1\ndecision := 2\n"}, "p.rego:6",
         "rule conflicts with the following rule at"),
        ({"p.rego": HEADER + "decision := nope(1)\n"}, "p.rego:5",
         "could not find function nope"),
        ({"p.rego": ALLOW_ALL, "data.json": '{\n  "a": 1,,\n}'}, "data.json:2", "Expecting"),
        ({"p.rego": ALLOW_ALL, "data.json": "[1]"}, "data.json:1", "JSON object"),
    ],
)  # fmt: skip
def test_compile_errors_name_file_and_line(
    tmp_path: Path, files: dict[str, str], location: str, message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        make(tmp_path, files)
    assert caught.value.location == f"{tmp_path}/{location}"
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{tmp_path}/{location}: ")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "has no .rego files"),
        ({"p.rego": "package other\n\nx := 1\n"}, "defines no data.stockade.decision rule"),
        ({"p.rego": HEADER + "allow := true\n"}, "defines no data.stockade.decision rule"),
    ],
)
def test_unusable_bundles(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        make(tmp_path, files)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is not a directory"):
        Authorizer(settings=AuthzSettings(), bundle_dir=tmp_path / "nope")


DIVIDE = HEADER + (
    "decision := {\n"
    '\t"allow": true,\n'
    '\t"obligations": {"max_session_seconds": 10 / input.context.divisor},\n'
    '\t"reasons": [],\n'
    "}\n"
)


def test_evaluation_error_is_a_deny_with_reason(tmp_path: Path) -> None:
    authz = make(tmp_path, {"p.rego": DIVIDE})
    assert authz.decide(ssh_request(extra={"divisor": 2})).obligations.max_session_seconds == 5
    with capture_logs() as logs:
        decision = authz.decide(ssh_request(extra={"divisor": 0}))
    assert not decision.allow
    assert decision.reasons == (f"policy evaluation failed: {tmp_path}/p.rego:7: divide by zero",)
    assert [e["event"] for e in logs] == ["authz.evaluation_failed"]
    assert logs[0]["action"] == "ssh.connect"
    with pytest.raises(PermissionDenied, match="divide by zero"):
        decision.raise_for_deny("ssh.connect")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('{"allow": true} if input.action == "never"',
         "data.stockade.decision is undefined for this input"),
        ("[true]", "data.stockade.decision is not an object"),
        ('{"allow": "yes"}', "data.stockade.decision.allow is not a boolean"),
        ('{"obligations": {}}', "data.stockade.decision.allow is not a boolean"),
        ('{"allow": true, "obligations": ["sudo"]}',
         "data.stockade.decision.obligations is not an object"),
        ('{"allow": true, "obligations": {1: true}}',
         "data.stockade.decision.obligations is not an object"),
        ('{"allow": true, "obligations": {"port_forwarding": true}}',
         "data.stockade.decision.obligations: unknown obligation 'port_forwarding'"),
        ('{"allow": true, "obligations": {"sudo": 1}}',
         "data.stockade.decision.obligations: obligation sudo must be a boolean, not int"),
        ('{"allow": true, "obligations": {"max_session_seconds": 1.5}}',
         "data.stockade.decision.obligations: obligation max_session_seconds must be a positive "
         "integer, not 1.5"),
        ('{"allow": true, "obligations": {"patch:spec": 1}}',
         "data.stockade.decision.obligations: obligation 'patch:spec' needs a JSON pointer "
         "after 'patch:'"),
        ('{"allow": true, "reasons": "fine"}',
         "data.stockade.decision.reasons is not a list of strings"),
        ('{"allow": true, "reasons": [1]}',
         "data.stockade.decision.reasons is not a list of strings"),
    ],
)  # fmt: skip
def test_wrong_shapes_deny(tmp_path: Path, value: str, reason: str) -> None:
    authz = make(tmp_path, {"p.rego": f"{HEADER}decision := {value}\n"})
    assert authz.decide(ssh_request()) == Decision.deny(reason)


def test_optional_parts_and_rego_values_are_normalised(tmp_path: Path) -> None:
    body = (
        'decision := {"allow": true, "reasons": {"b", "a"}, '
        '"obligations": {"max_session_seconds": 3, "patch:/spec/x": {2, 1}}}\n'
    )
    authz = make(tmp_path, {"p.rego": HEADER + body})
    decision = authz.decide(ssh_request())
    assert decision.reasons == ("a", "b")
    assert decision.obligations.to_dict() == {"max_session_seconds": 3, "patch:/spec/x": [1, 2]}
    assert type(decision.obligations.max_session_seconds) is int
    with pytest.raises(AttributeError):
        decision.obligations.sudo = True  # type: ignore[misc]


@pytest.mark.parametrize("doc", [{"action": object()}, {"action": 7}, {}])
def test_garbage_input_is_a_deny_not_an_exception(doc: dict[str, object]) -> None:
    decision = Authorizer(settings=AuthzSettings()).decide(doc)
    assert not decision.allow
    assert decision.reasons


def test_decisions_from_many_threads(settings: AuthzSettings) -> None:
    authz = Authorizer(settings=settings)
    cases = [
        (ssh_request(roles=("contractor",)), True),
        (ssh_request(owner="bob"), False),
        (ssh_request("ssh.direct-tcpip"), False),
        (ssh_request("ssh.direct-tcpip", roles=("tunneler",)), True),
    ]
    expected = [authz.decide(doc) for doc, _ in cases]
    assert [d.allow for d in expected] == [allow for _, allow in cases]
    mismatches: list[object] = []

    def worker() -> None:
        for _ in range(300):
            for (doc, _), want in zip(cases, expected, strict=True):
                got = authz.decide(doc)
                if got != want:
                    mismatches.append(got)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_reload_swaps_only_on_change(tmp_path: Path) -> None:
    authz = make(tmp_path, {"p.rego": ALLOW_ALL})
    first = authz.revision
    assert authz.reload() is False
    (tmp_path / "p.rego").write_text(DENY_ALL)
    with capture_logs() as logs:
        assert authz.reload() is True
    assert authz.revision != first
    assert authz.decide(ssh_request()) == Decision.deny("closed")
    assert logs[0]["event"] == "authz.reloaded"
    assert authz.reload() is False


def test_broken_reload_keeps_the_old_bundle_and_logs_once(tmp_path: Path) -> None:
    authz = make(tmp_path, {"p.rego": ALLOW_ALL})
    good = authz.revision
    (tmp_path / "p.rego").write_text(HEADER + "decision := {\n")
    with capture_logs() as logs:
        assert authz.reload() is False
        assert authz.reload() is False
    assert authz.revision == good
    assert authz.decide(ssh_request()).allow
    assert [e["event"] for e in logs] == ["authz.reload_failed"]
    assert logs[0]["location"] == f"{tmp_path}/p.rego:6"
    assert logs[0]["keeping"] == good
    (tmp_path / "extra.rego").write_text("package extra\n\ny := \n")
    with capture_logs() as logs:
        assert authz.reload() is False
    assert logs[0]["location"] == f"{tmp_path}/extra.rego:4"
    (tmp_path / "extra.rego").unlink()
    (tmp_path / "p.rego").write_text(DENY_ALL)
    assert authz.reload() is True
    assert not authz.decide(ssh_request()).allow


def test_reload_after_the_bundle_disappears(tmp_path: Path) -> None:
    authz = make(tmp_path / "b", {"p.rego": ALLOW_ALL})
    (tmp_path / "b" / "p.rego").unlink()
    with capture_logs() as logs:
        assert authz.reload() is False
    assert "has no .rego files" in logs[0]["error"]
    assert authz.decide(ssh_request()).allow


async def test_watcher_picks_up_changes(tmp_path: Path) -> None:
    authz = make(tmp_path, {"p.rego": ALLOW_ALL}, reload_interval=0.01)
    await authz.start()
    await authz.start()  # idempotent
    try:
        (tmp_path / "p.rego").write_text(DENY_ALL)
        for _ in range(500):
            if not authz.decide(ssh_request()).allow:
                break
            await asyncio.sleep(0.01)
        assert authz.decide(ssh_request()) == Decision.deny("closed")
    finally:
        await authz.stop()
    await authz.stop()


async def test_decide_async(settings: AuthzSettings) -> None:
    authz = Authorizer(settings=settings)
    assert (await authz.decide_async(ssh_request())).allow
