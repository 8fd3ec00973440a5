"""Issue 14 (deliver 3) end to end: ``stockade up`` as a real process with ``identity.oidc``
pointing at the loopback provider of ``tests/helpers/oidc_provider.py``.

Debian's Chromium (Playwright ``executable_path``) signs in to the console through the
authorization-code flow: the console is https, the provider plain http on loopback, so the
provider's redirect back is a cross-site navigation (the flow cookie is ``SameSite=Lax``, the
session cookie ``Strict``). ``stockade login --oidc`` runs the device-code flow and hands the
ID token to the running server over its admin socket.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.oidc_provider import CLIENT_ID, OidcProvider, serve_provider
from playwright.sync_api import sync_playwright

from integration.test_up import STOCKADE, Server, _env

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


def _oidc_env(provider: OidcProvider) -> dict[str, str]:
    return {
        "STOCKADE_IDENTITY__OIDC__ENABLED": "true",
        "STOCKADE_IDENTITY__OIDC__ISSUER": provider.url,
        "STOCKADE_IDENTITY__OIDC__CLIENT_ID": CLIENT_ID,
        "STOCKADE_IDENTITY__OIDC__GROUP_ROLES": json.dumps({"platform-admins": ["admin"]}),
    }


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with serve_provider() as provider:
        yield provider


@pytest.fixture
def server(tmp_path: Path, provider: OidcProvider) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    srv.extra_env = _oidc_env(provider)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop(signal.SIGKILL)


def _cli(server: Server, provider: OidcProvider, *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [STOCKADE, *args],
        env={**_env(server.data_dir), **_oidc_env(provider)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chromium_signs_in_to_the_console_with_oidc(server: Server, provider: OidcProvider) -> None:
    port = server.listening("credential broker")
    origin = f"https://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.goto(f"{origin}/console/login")
            page.get_by_role("link", name="Sign in with OIDC").click()
            page.wait_for_url(re.compile(r".*/console/sessions$"), timeout=15_000)
            assert "olga (admin)" in page.locator("header").inner_text()
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["stockade_console"]["sameSite"] == "Strict"
            assert cookies["stockade_console"]["httpOnly"]
            assert "stockade_console_oidc" not in cookies  # spent and deleted
        finally:
            browser.close()
    (exchange,) = [r for r in provider.token_requests if r["grant_type"] == "authorization_code"]
    assert exchange["redirect_uri"] == f"{origin}/console/oidc/callback"
    shown = _cli(server, provider, "users", "show", "olga", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["roles"] == ["admin"]


def test_login_oidc_through_the_admin_socket(server: Server, provider: OidcProvider) -> None:
    provider.device_script = ["pending", "ok"]
    done = _cli(server, provider, "login", "--oidc")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "WDJB-MJHT" in done.stderr
    assert token not in done.stderr
    verified = _cli(server, provider, "token", "verify", "--json", stdin=token)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["roles"] == ["admin"]

    provider.device_script = ["denied"]
    refused = _cli(server, provider, "login", "--oidc")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: oidc login failed: access")
