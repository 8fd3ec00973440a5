"""The ``stockade`` command: one module per command group, registered here."""

from __future__ import annotations

import typer

from stockade import __version__

from . import (
    applocker,
    audit,
    catalog,
    node,
    package,
    policy,
    sessions,
    shield,
    token,
    users,
    workspaces,
)
from .up import up

app = typer.Typer(
    name="stockade",
    help="Zero-trust access and supply-chain security for shared developer workspaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Zero-trust access and supply-chain security for shared developer workspaces.

    Configuration comes from STOCKADE_* variables and ./stockade.toml (or $STOCKADE_CONFIG);
    state lives in $STOCKADE_DATA_DIR (default ./.stockade).
    """


@app.command()
def version() -> None:
    """Print Stockade's version."""
    typer.echo(f"stockade {__version__}")


app.command("up")(up)
app.add_typer(users.app, name="users")
app.add_typer(token.app, name="token")
app.add_typer(policy.app, name="policy")
app.add_typer(package.app, name="package")
app.add_typer(catalog.app, name="catalog")
app.add_typer(node.app, name="node")
app.add_typer(applocker.app, name="applocker")
app.add_typer(shield.app, name="shield")
app.add_typer(sessions.app, name="sessions")
app.add_typer(workspaces.app, name="workspaces")
app.add_typer(audit.app, name="audit")


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
