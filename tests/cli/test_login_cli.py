"""`stockade login --oidc` (issue 14, deliver 3): the device-code flow (RFC 8628) against the
loopback OIDC provider of ``tests/helpers/oidc_provider.py``, then identity's ``login_oidc``.

The polling logic runs against the real provider with a recorded ``sleep`` (and a clock that
moves with it), so the intervals it honours are read back, not timed. The end-to-end cases run
the real `stockade` app in-process on a data dir in tmp_path (SQLite store, no server).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.hostile_http import peak_memory, serve_hostile
from helpers.oidc_provider import CLIENT_ID, OidcProvider, serve_provider
from typer.testing import CliRunner, Result

from stockade.cli import _common, app
from stockade.cli import login as login_module
from stockade.cli.login import DeviceAuthorization, DeviceFlowError, device_login
from stockade.core import InvalidInput
from stockade.core.settings import OidcSettings

runner = CliRunner()


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with serve_provider() as provider:
        yield provider


def _oidc(provider: OidcProvider, **extra: Any) -> OidcSettings:
    base: dict[str, Any] = {
        "enabled": True,
        "issuer": provider.url,
        "client_id": CLIENT_ID,
        "group_roles": {"platform-admins": ["admin"]},
    }
    return OidcSettings(**{**base, **extra})


class _Clock:
    """A clock that only moves when the flow sleeps; the sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def _run(
    provider: OidcProvider, clock: _Clock | None = None, **settings: Any
) -> tuple[str, list[DeviceAuthorization]]:
    clock = clock or _Clock()
    shown: list[DeviceAuthorization] = []
    async with httpx.AsyncClient(timeout=5.0) as http:
        token = await device_login(
            _oidc(provider, **settings),
            scope="profile groups",
            http=http,
            show=shown.append,
            sleep=clock.sleep,
            clock=clock,
        )
    return token, shown


# --- the polling logic ---


async def test_pending_and_slow_down_are_honoured(provider: OidcProvider) -> None:
    provider.device_script = ["pending", "slow_down", "pending", "slow_down", "ok"]
    clock = _Clock()
    token, shown = await _run(provider, clock)
    # interval 1; each slow_down adds 5 seconds to every later poll (RFC 8628 §3.5)
    assert clock.sleeps == [1, 1, 6, 6, 11]
    assert token.count(".") == 2
    assert [g.user_code for g in shown] == ["WDJB-MJHT"]
    assert shown[0].verification_uri == provider.url + "/activate"
    (request,) = provider.device_requests
    assert request["client_id"] == CLIENT_ID
    assert request["scope"].split() == ["openid", "profile", "groups"]
    assert len(provider.token_requests) == 5
    assert {r["grant_type"] for r in provider.token_requests} == {
        "urn:ietf:params:oauth:grant-type:device_code"
    }


async def test_the_default_interval_is_five_seconds(provider: OidcProvider) -> None:
    provider.interval = None
    provider.device_script = ["pending", "ok"]
    clock = _Clock()
    await _run(provider, clock)
    assert clock.sleeps == [5, 5]


@pytest.mark.parametrize(
    ("script", "reason"),
    [(["pending", "denied"], "access_denied"), (["expired"], "expired_token")],
)
async def test_denied_and_expired_end_the_login(
    provider: OidcProvider, script: list[str], reason: str
) -> None:
    provider.device_script = script
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider)
    assert info.value.reason == reason
    assert len(provider.token_requests) == len(script)  # no poll after the end


async def test_a_code_that_is_never_approved_expires_locally(provider: OidcProvider) -> None:
    """The provider never says anything but pending: the wait ends at ``expires_in``."""
    provider.expires_in = 10
    provider.interval = 2
    provider.device_script = []
    clock = _Clock()
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider, clock)
    assert info.value.reason == "expired_token"
    assert sum(clock.sleeps) == 10
    assert len(provider.token_requests) == 4


async def test_a_huge_expires_in_is_capped(provider: OidcProvider) -> None:
    provider.expires_in = 10**9
    provider.interval = 60
    provider.device_script = []
    clock = _Clock()
    with pytest.raises(DeviceFlowError, match="expired_token"):
        await _run(provider, clock)
    assert sum(clock.sleeps) == 1800  # MAX_EXPIRES_IN
    assert len(provider.token_requests) == 29


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"user_code": "\x1b]0;owned\x07WDJB"}, "bad_response"),  # terminal escape
        ({"user_code": "x" * 65}, "bad_response"),
        ({"verification_uri": "http://evil.example/activate"}, "bad_discovery"),  # plain http
        ({"verification_uri": "javascript:alert(1)"}, "bad_discovery"),
        ({"verification_uri_complete": "https://ok.example/\x1b[2J"}, "bad_response"),
        ({"device_code": ""}, "bad_response"),
        ({"expires_in": "600"}, "bad_response"),
        ({"interval": True}, "bad_response"),
    ],
)
async def test_hostile_device_answers_are_refused(
    provider: OidcProvider, extra: dict[str, Any], reason: str
) -> None:
    """ATTACK: what the provider says is printed on the user's terminal or decides the wait."""
    provider.device_extra = extra
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider)
    assert info.value.reason == reason
    assert provider.token_requests == []


async def test_a_provider_without_a_device_endpoint(provider: OidcProvider) -> None:
    provider.device_enabled = False
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider)
    assert info.value.reason == "no_device_flow"


@pytest.mark.parametrize(
    "extra",
    [
        {"issuer": "https://evil.example"},
        {"token_endpoint": "http://evil.example/token"},  # the device code in clear text
        {"device_authorization_endpoint": "ftp://127.0.0.1/device"},
        {"token_endpoint": None},
        {"token_endpoint": "http://127.0.0.1.nip.io/token"},  # a name, not a loopback address
        {"token_endpoint": "file:///etc/passwd"},
        {"device_authorization_endpoint": "https:///no-host"},
        {"token_endpoint": "https://idp.example/token#frag"},
    ],
)
async def test_hostile_discovery_documents_are_refused(
    provider: OidcProvider, extra: dict[str, Any]
) -> None:
    """ATTACK: the configured issuer's URL answers with someone else's endpoints."""
    provider.discovery_extra = extra
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider)
    assert info.value.reason == "bad_discovery"
    assert provider.device_requests == []


@pytest.mark.parametrize("where", ["discovery", "device_authorization_endpoint", "token_endpoint"])
async def test_a_provider_answering_without_end_is_cut_off(
    provider: OidcProvider, where: str
) -> None:
    """ATTACK: a body without end is not read whole into memory; reading stops after about
    MAX_RESPONSE, whatever Content-Length the provider promised."""
    with serve_hostile("huge", limit=64 * 1024 * 1024) as hostile:
        if where == "discovery":
            settings: dict[str, Any] = {"issuer": hostile.url}
        else:
            settings = {}
            provider.discovery_extra = {where: hostile.url + "/" + where}
        with pytest.raises(DeviceFlowError) as info:
            await _run(provider, **settings)
        assert info.value.reason == "bad_response"
        assert hostile.sent < 16 * 1024 * 1024


async def test_a_provider_dribbling_its_answer_is_given_up_on(
    provider: OidcProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK: one byte at a time, each within the read timeout: the answer has a deadline."""
    monkeypatch.setattr(login_module, "RESPONSE_DEADLINE", 0.5)
    with serve_hostile("slow", limit=200, pace=0.05) as hostile:
        provider.discovery_extra = {"token_endpoint": hostile.url + "/token"}
        with pytest.raises(DeviceFlowError) as info:
            await _run(provider)
        assert info.value.reason == "provider_unreachable"
        assert hostile.sent < 200


async def test_an_issuer_with_a_trailing_slash_is_not_another_one(provider: OidcProvider) -> None:
    """``iss`` is compared exactly: a configured ``.../`` is not the provider's issuer."""
    with pytest.raises(DeviceFlowError) as info:
        await _run(provider, issuer=provider.url + "/")
    assert info.value.reason == "bad_discovery"


async def test_a_plain_http_issuer_off_loopback_is_refused() -> None:
    """Settings refuse such an issuer already; the flow checks again on its own (settings
    built without validation stand in for any other way in)."""
    with pytest.raises(ValueError, match="https"):
        OidcSettings(enabled=True, issuer="http://idp.example", client_id="c")
    async with httpx.AsyncClient(timeout=1.0) as http:
        with pytest.raises(DeviceFlowError, match="must be https"):
            await device_login(
                OidcSettings.model_construct(
                    enabled=True, issuer="http://idp.example", client_id="c"
                ),
                scope="openid",
                http=http,
                show=lambda _: None,
            )


async def test_oidc_disabled() -> None:
    async with httpx.AsyncClient(timeout=1.0) as http:
        with pytest.raises(InvalidInput, match=r"identity\.oidc"):
            await device_login(OidcSettings(), scope="openid", http=http, show=lambda _: None)


# --- the command, end to end ---


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: OidcProvider
) -> Iterator[OidcProvider]:
    for key in list(os.environ):
        if key.startswith(("STOCKADE_", "VAULT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "stockade.toml").write_text(
        "[identity.oidc]\n"
        "enabled = true\n"
        f'issuer = "{provider.url}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        'group_roles = { "platform-admins" = ["admin"] }\n'
    )
    _common.settings.cache_clear()
    yield provider
    _common.settings.cache_clear()


def invoke(*args: str, stdin: str | None = None) -> Result:
    result = runner.invoke(app, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of an error line: {result.exception!r}")
    return result


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "Traceback" not in result.output
    return lines[-1]


def test_login_prints_a_token_of_an_admin(cli_env: OidcProvider) -> None:
    result = invoke("login", "--oidc")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2
    assert "\n" not in token
    assert "WDJB-MJHT" in result.stderr
    assert cli_env.url + "/activate" in result.stderr
    assert token not in result.stderr
    device_code = next(iter(cli_env.grants))
    assert device_code not in result.output

    verified = invoke("token", "verify", "--json", stdin=token)
    assert verified.exit_code == 0, verified.output
    claims = json.loads(verified.stdout)
    assert claims["sub"] == "olga"
    assert claims["roles"] == ["admin"]
    shown = json.loads(invoke("users", "show", "olga", "--json").stdout)
    assert "oidc" in shown["groups"]


def test_login_writes_the_token_to_a_private_file(cli_env: OidcProvider, tmp_path: Path) -> None:
    out = tmp_path / "token"
    result = invoke("login", "--oidc", "--output", str(out))
    assert result.exit_code == 0, result.output
    token = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert token.count(".") == 2
    assert token not in result.output


def test_output_through_a_symlink_replaces_the_link(cli_env: OidcProvider, tmp_path: Path) -> None:
    """ATTACK: ``--output`` names a symlink planted towards another file: the link is replaced
    by the private token file; its target is neither written nor chmod-ed."""
    target = tmp_path / "victim"
    target.write_text("keep\n")
    target.chmod(0o644)
    out = tmp_path / "token"
    out.symlink_to(target)
    result = invoke("login", "--oidc", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert not out.is_symlink()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert target.read_text() == "keep\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_denied_login_is_one_line(cli_env: OidcProvider) -> None:
    cli_env.device_script = ["denied"]
    line = one_error_line(invoke("login", "--oidc"))
    assert "access_denied" in line
    assert invoke("users", "list", "--json").stdout.strip() in {"[]", ""}


def test_a_user_whose_groups_map_to_no_role_is_refused(cli_env: OidcProvider) -> None:
    cli_env.claims = {"groups": ["everyone"]}
    line = one_error_line(invoke("login", "--oidc"))
    assert "no_role" in line


def test_an_id_token_for_another_client_is_refused(cli_env: OidcProvider) -> None:
    """ATTACK: a provider's token minted for another client must not log in here."""
    cli_env.claims = {"aud": "another-client"}
    assert "bad_audience" in one_error_line(invoke("login", "--oidc"))


def test_login_needs_the_oidc_flag(cli_env: OidcProvider) -> None:
    assert "--oidc" in one_error_line(invoke("login"))
    assert cli_env.device_requests == []


def test_login_with_oidc_disabled(cli_env: OidcProvider, tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("")
    _common.settings.cache_clear()
    assert "identity.oidc" in one_error_line(invoke("login", "--oidc"))


async def test_a_compressed_answer_is_not_inflated(provider: OidcProvider) -> None:
    """ATTACK: asked for ``identity``, the provider answers a gzip bomb (64 KiB that inflates to
    64 MiB): refused without inflating it."""
    with (
        serve_hostile("gzip", limit=64 * 1024 * 1024) as hostile,
        peak_memory() as peak,
        pytest.raises(DeviceFlowError) as info,
    ):
        await _run(provider, issuer=hostile.url)
    assert info.value.reason == "bad_response"
    assert peak[0] < 16 * 1024 * 1024
