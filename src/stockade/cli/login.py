"""``stockade login --oidc``: log in at the configured OIDC provider with the device-code flow.

The OAuth 2.0 device authorization grant (RFC 8628), against ``identity.oidc``:

1. the provider's discovery document (``<issuer>/.well-known/openid-configuration``, whose
   ``issuer`` must be the configured one) names the ``device_authorization_endpoint`` and the
   ``token_endpoint``; both must be ``https`` (plain ``http`` only on a loopback host), with
   no fragment; every answer is read in chunks, at most :data:`MAX_RESPONSE` bytes within
   :data:`RESPONSE_DEADLINE` seconds, never decompressed;
2. the device endpoint hands out a device code, a user code and a verification URI, printed on
   stderr for the user to open in a browser (provider text is checked, never echoed raw: no
   terminal escapes);
3. the token endpoint is polled every ``interval`` seconds (RFC 8628 §3.5:
   ``authorization_pending`` keeps polling, ``slow_down`` adds 5 seconds to the interval for
   every later poll, ``access_denied`` and ``expired_token`` end the login), bounded by the
   code's ``expires_in`` and a poll count;
4. the ID token it returns goes to identity (``login_oidc`` with no nonce: the device-code flow
   has none) through the admin socket, or the store with ``--direct``/no server running, which
   verifies it and maps the provider groups to roles;
5. the Stockade token is printed on stdout, like ``stockade token issue``, or written to
   ``--output FILE`` (0600). Neither the device code nor a token is ever logged or put in argv.

Every failure is one stderr line and exit 2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from stockade.core import InvalidInput, StockadeError, write_private
from stockade.core.errors import AuthenticationError
from stockade.core.settings import OidcSettings

from ._admin import admin_identity
from ._common import err_console, fail, handle_errors, run_async, settings

__all__ = ["DeviceAuthorization", "DeviceFlowError", "device_login", "login"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"

#: Largest response body read from the provider (read in chunks: a larger one is cut off).
MAX_RESPONSE = 256 * 1024
#: Longest wait for one whole answer of the provider (a read timeout alone lets a provider
#: that dribbles a byte at a time hold the login forever).
RESPONSE_DEADLINE = 30.0
#: Longest wait for one code, whatever the provider says its ``expires_in`` is.
MAX_EXPIRES_IN = 1800
#: Most polls of the token endpoint for one code.
MAX_POLLS = 600
#: Smallest and largest polling interval (seconds); RFC 8628's default is 5.
MIN_INTERVAL, DEFAULT_INTERVAL, MAX_INTERVAL = 1, 5, 60
#: What ``slow_down`` adds to the interval (RFC 8628 §3.5).
SLOW_DOWN_STEP = 5

_LOOPBACK_NAMES = {"localhost"}


class DeviceFlowError(AuthenticationError):
    """The device-code login failed; ``reason`` is a short word (``access_denied``, ...)."""

    exit_code = 2

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"oidc login failed: {reason} ({detail})")
        self.reason = reason


@dataclass(frozen=True)
class DeviceAuthorization:
    """What the device endpoint answered (the device code is kept out of the repr)."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int

    def __repr__(self) -> str:
        return f"<DeviceAuthorization user_code={self.user_code} uri={self.verification_uri}>"


Sleep = Callable[[float], Awaitable[None]]


def _check_endpoint(url: object, *, field: str) -> str:
    """``url`` if it is an https URL, or http on a loopback host; else a DeviceFlowError."""
    if not isinstance(url, str) or not url or len(url) > 2048 or not url.isprintable():
        raise DeviceFlowError("bad_discovery", f"{field} is missing or not a URL")
    if "#" in url and field.endswith("_endpoint"):  # RFC 6749 §3.1: no fragment
        raise DeviceFlowError("bad_discovery", f"{field} has a fragment")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _is_loopback(host):
        return url
    raise DeviceFlowError("bad_discovery", f"{field} must be https (http only on loopback)")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown_text(value: object, *, field: str, limit: int) -> str:
    """Provider text that is printed: printable ASCII without spaces, bounded."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > limit
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise DeviceFlowError("bad_response", f"{field} is missing or not printable text")
    return value


def _clamp(interval: int) -> int:
    return min(max(interval, MIN_INTERVAL), MAX_INTERVAL)


def _int_field(value: object, *, default: int | None, field: str) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeviceFlowError("bad_response", f"{field} is not a non-negative integer")
    return value


async def _request(
    http: httpx.AsyncClient, method: str, url: str, *, form: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """The status and body of one provider answer, read in chunks: at most
    :data:`MAX_RESPONSE` bytes within :data:`RESPONSE_DEADLINE` seconds, else a DeviceFlowError."""
    try:
        async with asyncio.timeout(RESPONSE_DEADLINE):
            async with http.stream(
                method,
                url,
                data=form,
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            ) as response:
                if response.headers.get("content-encoding", "identity").lower() != "identity":
                    # never decompressed: a small compressed body can expand a thousandfold
                    raise DeviceFlowError("bad_response", f"{url} answered a compressed body")
                content = bytearray()
                async for chunk in response.aiter_raw():
                    content += chunk
                    if len(content) > MAX_RESPONSE:
                        raise DeviceFlowError(
                            "bad_response", f"{url} answered more than {MAX_RESPONSE} bytes"
                        )
    except TimeoutError:
        raise DeviceFlowError("provider_unreachable", f"{url} answered too slowly") from None
    except httpx.HTTPError as exc:
        raise DeviceFlowError("provider_unreachable", f"{type(exc).__name__} at {url}") from None
    return response.status_code, bytes(content)


def _json(url: str, status: int, content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        raise DeviceFlowError("bad_response", f"{url} answered {status}, not JSON") from None


async def _post_json(http: httpx.AsyncClient, url: str, form: dict[str, str]) -> tuple[int, Any]:
    status, content = await _request(http, "POST", url, form=form)
    return status, _json(url, status, content)


async def _discover(http: httpx.AsyncClient, issuer: str) -> tuple[str, str]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    _check_endpoint(url, field="identity.oidc.issuer")
    status, content = await _request(http, "GET", url)
    if status != 200:
        raise DeviceFlowError("bad_discovery", f"{url} answered {status}")
    document = _json(url, status, content)
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise DeviceFlowError("bad_discovery", "the discovery document names another issuer")
    if "device_authorization_endpoint" not in document:
        raise DeviceFlowError("no_device_flow", "the provider has no device_authorization_endpoint")
    device = _check_endpoint(
        document["device_authorization_endpoint"], field="device_authorization_endpoint"
    )
    token = _check_endpoint(document.get("token_endpoint"), field="token_endpoint")
    return device, token


def _error_word(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error.isascii() and error.isprintable() and len(error) <= 64:
        return error
    return "unknown_error"


async def device_login(
    oidc: OidcSettings,
    *,
    scope: str,
    http: httpx.AsyncClient,
    show: Callable[[DeviceAuthorization], None],
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Run the device authorization grant at ``oidc.issuer``; return the ID token.

    ``show`` is called once with what the user must open and type. ``sleep`` and ``clock`` wait
    between polls and tell when the code has expired.
    """
    if not oidc.enabled or not oidc.issuer or not oidc.client_id:
        raise InvalidInput(
            "identity.oidc", "OIDC logins are not enabled (set enabled, issuer, client_id)"
        )
    device_url, token_url = await _discover(http, oidc.issuer)
    scopes = scope.split()
    if "openid" not in scopes:
        scopes.insert(0, "openid")
    status, body = await _post_json(
        http, device_url, {"client_id": oidc.client_id, "scope": " ".join(scopes)}
    )
    if status != 200 or not isinstance(body, dict):
        raise DeviceFlowError(_error_word(body), f"the device endpoint answered {status}")
    device_code = body.get("device_code")
    if not isinstance(device_code, str) or not device_code or len(device_code) > 4096:
        raise DeviceFlowError("bad_response", "device_code is missing")
    complete = body.get("verification_uri_complete")
    grant = DeviceAuthorization(
        user_code=_shown_text(body.get("user_code"), field="user_code", limit=64),
        verification_uri=_check_endpoint(
            _shown_text(body.get("verification_uri"), field="verification_uri", limit=2048),
            field="verification_uri",
        ),
        verification_uri_complete=None
        if complete is None
        else _check_endpoint(
            _shown_text(complete, field="verification_uri_complete", limit=2048),
            field="verification_uri_complete",
        ),
        expires_in=min(
            _int_field(body.get("expires_in"), default=None, field="expires_in"), MAX_EXPIRES_IN
        ),
        interval=_clamp(
            _int_field(body.get("interval"), default=DEFAULT_INTERVAL, field="interval")
        ),
    )
    show(grant)
    form = {"grant_type": GRANT_TYPE, "device_code": device_code, "client_id": oidc.client_id}
    deadline = clock() + grant.expires_in
    interval = grant.interval
    for _ in range(MAX_POLLS):
        await sleep(interval)
        if clock() >= deadline:
            break
        status, body = await _post_json(http, token_url, form)
        if status == 200 and isinstance(body, dict):
            id_token = body.get("id_token")
            if not isinstance(id_token, str) or not id_token:
                raise DeviceFlowError("no_id_token", "the token response has no id_token")
            return id_token
        error = _error_word(body)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval = min(interval + SLOW_DOWN_STEP, MAX_INTERVAL)
            continue
        if error == "access_denied":
            raise DeviceFlowError(error, "the user refused the login at the provider")
        if error == "expired_token":
            raise DeviceFlowError(error, "the code expired before the login was approved")
        raise DeviceFlowError(error, f"the token endpoint answered {status}")
    raise DeviceFlowError("expired_token", "the code expired before the login was approved")


def _show(grant: DeviceAuthorization) -> None:
    err_console.print(
        f"Open {grant.verification_uri} and enter the code {grant.user_code}", markup=False
    )
    if grant.verification_uri_complete:
        err_console.print(f"(or open {grant.verification_uri_complete})", markup=False)
    err_console.print(f"Waiting for the login (expires in {grant.expires_in}s) ...", markup=False)


@handle_errors
def login(
    oidc: Annotated[
        bool, typer.Option("--oidc", help="Log in at the configured OIDC provider (device code).")
    ] = False,
    scope: Annotated[
        str, typer.Option(help="Scopes asked for (openid is always among them).")
    ] = "openid profile email",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the token to FILE (0600), not stdout."),
    ] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Use the store directly.")] = False,
) -> None:
    """Log in and print a Stockade token (``--oidc``: the device-code flow, RFC 8628)."""
    if not oidc:
        raise InvalidInput("--oidc", "the only login method; pass --oidc")
    loaded = settings()

    async def run() -> str:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            id_token = await device_login(loaded.identity.oidc, scope=scope, http=http, show=_show)
        async with admin_identity(loaded, direct=direct) as identity:
            result = await identity.login_oidc(id_token, nonce=None)
        return result.token

    try:
        token = run_async(run())
    except StockadeError as exc:  # a refused login is exit 2 too, like bad input
        raise fail(str(exc), 2) from None
    if output is not None:
        write_private(output, (token + "\n").encode())
        err_console.print(f"token written to {output}", markup=False)
        return
    typer.echo(token)
