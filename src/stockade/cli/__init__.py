"""The ``stockade`` command: one module per command group, registered here."""

from __future__ import annotations

import inspect
import re
from typing import Annotated, Any

import typer
import typer.core

from stockade import __version__

from . import (
    applocker,
    audit,
    blueprints,
    catalog,
    config,
    console,
    image,
    images,
    node,
    package,
    pod_security,
    policy,
    sbom,
    sessions,
    shield,
    status,
    token,
    users,
    workspaces,
    worktrace,
)
from .serve import serve
from .up import up

app = typer.Typer(
    name="stockade",
    help="Zero-trust access and supply-chain security for shared developer workspaces.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"stockade {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print Stockade's version and exit.",
        ),
    ] = False,
) -> None:
    """Zero-trust access and supply-chain security for shared developer workspaces.

    Configuration comes from STOCKADE_* variables and ./stockade.toml (or $STOCKADE_CONFIG);
    state lives in $STOCKADE_DATA_DIR (default ./.stockade).
    """


@app.command()
def version() -> None:
    """Print Stockade's version."""
    typer.echo(f"stockade {__version__}")


app.command("up")(up)
app.command("serve")(serve)
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
app.add_typer(blueprints.app, name="blueprints")
app.add_typer(pod_security.app, name="pod-security")
app.add_typer(image.app, name="image")
app.add_typer(images.app, name="images")
app.command("sbom")(sbom.sbom)
app.add_typer(config.app, name="config")
app.command("status")(status.status)
app.add_typer(worktrace.app, name="worktrace")
app.add_typer(audit.app, name="audit")
app.add_typer(console.app, name="console")


_DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def _plain_help(text: str | None) -> str | None:
    """Help text as a terminal shows it: ``x`` (reStructuredText in docstrings) becomes 'x', and
    the lines of a paragraph are joined (the terminal wraps them)."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    joined = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
    return _DOUBLE_BACKTICKS.sub(r"'\1'", joined)


def _tidy_help(group: typer.Typer) -> None:
    """Rewrite the help of every command and group once, at import (docstrings stay as written
    for the API docs)."""
    if _text(group.info.help) is not None:
        group.info.help = _plain_help(_text(group.info.help))
    for command in group.registered_commands:
        doc = _text(command.help) or (
            inspect.getdoc(command.callback) if command.callback else None
        )
        command.help = _plain_help(doc)
    for sub in group.registered_groups:
        if _text(sub.help) is not None:
            sub.help = _plain_help(_text(sub.help))
        if sub.typer_instance is not None:
            _tidy_help(sub.typer_instance)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None  # typer's Default(...) placeholders: unset


_tidy_help(app)

# typer 0.29's rich help prints a value type after boolean flags ("--json <bool>"), though a flag
# takes no value; click's own help never does. Flags show no type.
_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
