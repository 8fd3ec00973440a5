"""``stockade console``: sign in to the web console of a running ``stockade up``.

``stockade console login USER`` checks that USER exists, is enabled and holds a role that sees the
console (``admin`` or ``auditor`` in the shipped policy), stores the SHA-256 of a new one-time
code in the NATS KV bucket the console reads (it expires after two minutes and works once), and
prints ``https://<broker>/console/login#code=...``: the code sits in the URL fragment, which the
browser never sends, so it reaches no request line and no access log.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.console import CODE_TTL, LOGIN_BUCKET, VIEW_ACTION, issue_login_code
from stockade.core import InvalidInput, StockadeError

from ._admin import admin_identity
from ._common import handle_errors, run_async, settings
from ._instance import read_status
from .shield import _bus

__all__ = ["app"]

app = typer.Typer(
    help="The web console (served by the broker under /console/).", no_args_is_help=True
)


def _console_url(status: dict[str, Any] | None) -> str:
    listeners = (status or {}).get("listeners")
    for item in listeners if isinstance(listeners, list) else []:
        if isinstance(item, dict) and item.get("service") == "web console":
            return str(item["address"]).rstrip("/")
    raise StockadeError("no running stockade up serves the console here; start `stockade up` first")


@app.command("login")
@handle_errors
def login(
    user: Annotated[str, typer.Argument(help="The admin or auditor who signs in.")],
) -> None:
    """Print a one-time sign-in URL for USER (valid two minutes, usable once)."""
    cfg = settings()
    base = _console_url(read_status(cfg.data_dir))

    async def run() -> str:
        async with admin_identity(cfg) as identity:
            found = await identity.get_user(user)
        if found.disabled:
            raise InvalidInput("user", f"{user} is disabled")
        authorizer = Authorizer(settings=cfg.authz)
        doc = build_input(
            VIEW_ACTION,
            Resource(kind="console", name="login"),
            Context(
                user=Subject(name=found.name, roles=found.roles, groups=found.groups),
                auth_method="console",
            ),
        )
        decision = authorizer.decide(doc)
        if not decision.allow:
            raise InvalidInput(
                "user", f"{user} may not use the console: {'; '.join(decision.reasons)}"
            )
        async with _bus(cfg) as (bus, _mode):
            codes = await bus.key_value(LOGIN_BUCKET)
            return await issue_login_code(codes, found.name, ttl=CODE_TTL)

    code = run_async(run())
    typer.echo(f"{base}/login#code={code}")
    typer.echo(
        f"(one use, expires in {int(CODE_TTL)} s; open it in a browser that trusts the "
        f"Stockade CA at {cfg.data_dir / 'tls'})",
        err=True,
    )
