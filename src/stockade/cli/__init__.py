"""The ``stockade`` command: one module per command group, registered here."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from typing import Annotated, Any

import typer
import typer.core

from stockade import __version__

__all__ = ["app", "main"]

#: Every command and group of ``stockade``: name -> (module of this package, attribute, kind).
#: Modules are imported when a command needs them, so ``stockade users list`` does not pay for
#: the supply-chain, image and Worktrace imports.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "up": ("up", "up", "command"),
    "serve": ("serve", "serve", "command"),
    "users": ("users", "app", "group"),
    "token": ("token", "app", "group"),
    "login": ("login", "login", "command"),
    "policy": ("policy", "app", "group"),
    "package": ("package", "app", "group"),
    "catalog": ("catalog", "app", "group"),
    "node": ("node", "app", "group"),
    "applocker": ("applocker", "app", "group"),
    "shield": ("shield", "app", "group"),
    "sessions": ("sessions", "app", "group"),
    "workspaces": ("workspaces", "app", "group"),
    "blueprints": ("blueprints", "app", "group"),
    "pod-security": ("pod_security", "app", "group"),
    "image": ("image", "app", "group"),
    "images": ("images", "app", "group"),
    "sbom": ("sbom", "sbom", "command"),
    "config": ("config", "app", "group"),
    "status": ("status", "status", "command"),
    "worktrace": ("worktrace", "app", "group"),
    "audit": ("audit", "app", "group"),
    "console": ("console", "app", "group"),
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"stockade {__version__}")
        raise typer.Exit()


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


def version() -> None:
    """Print Stockade's version."""
    typer.echo(f"stockade {__version__}")


def build(only: str | None = None) -> typer.Typer:
    """The ``stockade`` app with every command, or with ``only`` that one (and ``version``)."""
    root = typer.Typer(
        name="stockade",
        help="Zero-trust access and supply-chain security for shared developer workspaces.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    root.callback()(_root)
    root.command("version")(version)
    for name, (module_name, attr, kind) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(f"{__name__}.{module_name}"), attr)
        if kind == "group":
            root.add_typer(target, name=name)
        else:
            root.command(name)(target)
    _tidy_help(root)
    return root


@functools.cache
def _full() -> typer.Typer:
    return build()


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # built on first use: importing a submodule does not import them all
        return _full()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# typer 0.29's rich help prints a value type after boolean flags ("--json <bool>"), though a flag
# takes no value; click's own help never does. Flags show no type.
_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def main() -> None:
    """Console-script entry point: loads only the command group named first on the command
    line (all of them for ``--help``, completion or a name that is no command)."""
    args = sys.argv[1:]
    first = args[0] if args else None
    completing = any(key.startswith("_STOCKADE_COMPLETE") for key in os.environ)
    if completing:
        _full()()
    elif first in COMMANDS:
        build(first)()
    elif first in {"--version", "version"}:
        build("")()  # the root alone
    else:
        _full()()
