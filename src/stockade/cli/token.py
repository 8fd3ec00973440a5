"""``stockade token``: issue and verify the JWTs identity signs."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from stockade.core import InvalidInput, TokenRejected, parse_duration

from ._admin import admin_identity
from ._common import (
    JSON_OPTION,
    console,
    fail,
    handle_errors,
    print_json,
    resolve_prefix,
    run_async,
    settings,
)

__all__ = ["app"]

app = typer.Typer(help="Issue and verify Stockade JWTs.", no_args_is_help=True)


@app.command("issue")
@handle_errors
def issue(
    user: str,
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 90s, 15m, 1h.")] = "15m",
    session: Annotated[
        str | None,
        typer.Option(help="Bind the token to a live session (its id or a unique prefix)."),
    ] = None,
    audience: Annotated[str | None, typer.Option(help="aud claim (default from settings).")] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Use the store directly.")] = False,
) -> None:
    """Issue a token for USER and print it."""
    lifetime = parse_duration(ttl, field="--ttl")

    async def run() -> str:
        async with admin_identity(settings(), direct=direct) as identity:
            session_id = session
            if session is not None:
                live = await identity.list_sessions(active_only=True, username=user)
                session_id = resolve_prefix(
                    session, (s.session_id for s in live), kind=f"live session of {user}"
                )
            return await identity.issue_token(
                user, session_id=session_id, ttl=lifetime, audience=audience
            )

    typer.echo(run_async(run()))


@app.command("verify")
@handle_errors
def verify(
    jwt: Annotated[str, typer.Argument(help="The token, or - to read it from stdin.")] = "-",
    audience: Annotated[str | None, typer.Option(help="Expected aud.")] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Use the store directly.")] = False,
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify a token and print its claims; exit 1 with the reason when it is rejected.

    With --json a rejection is printed too, as {"valid": false, "reason": ..., "error": ...}.
    """
    text = sys.stdin.read().strip() if jwt == "-" else jwt.strip()
    if not text:
        raise InvalidInput("token", "empty; pass it as an argument or on stdin")

    async def run() -> dict[str, Any]:
        async with admin_identity(settings(), direct=direct) as identity:
            claims = await identity.verify_token(text, audience=audience)
        return {
            "sub": claims.sub,
            "iss": claims.iss,
            "aud": claims.aud,
            "jti": claims.jti,
            "iat": claims.iat,
            "nbf": claims.nbf,
            "exp": claims.exp,
            "roles": claims.roles,
            "groups": claims.groups,
            "sid": claims.sid,
            "kid": claims.kid,
        }

    try:
        claims = run_async(run())
    except TokenRejected as exc:
        if as_json:
            print_json({"valid": False, "reason": exc.reason, "error": str(exc)})
            raise typer.Exit(1) from None
        raise fail(str(exc), 1) from None
    if as_json:
        print_json({"valid": True, **claims})
        return
    for key, value in claims.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        console.print(f"{key}: {'' if shown is None else shown}", markup=False)
