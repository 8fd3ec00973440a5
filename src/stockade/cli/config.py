"""``stockade config``: the settings in force with their sources, and the settings reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.core.configuration import effective_settings, settings_reference
from stockade.core.files import write_private

from ._common import JSON_OPTION, handle_errors, print_json, print_table, settings

__all__ = ["app"]

app = typer.Typer(
    help="Show the effective settings and the settings reference.", no_args_is_help=True
)


@app.command("show")
@handle_errors
def show(
    as_json: bool = JSON_OPTION,
    changed: Annotated[
        bool, typer.Option("--changed", help="Only settings not at their default.")
    ] = False,
) -> None:
    """Print every setting in force, its value and its source (default, file or env).

    Secrets (tokens, secret ids, passwords in URLs) are shown as [secure].
    """
    rows = [row for row in effective_settings(settings()) if not changed or row.source != "default"]
    if as_json:
        print_json([row.to_dict() for row in rows])
        return
    print_table(
        "stockade settings",
        ["key", "value", "source"],
        (
            [
                row.key,
                _shown(row.value),
                row.source if not row.origin else f"{row.source} {row.origin}",
            ]
            for row in rows
        ),
    )


def _shown(value: object) -> str:
    import json

    if value is None:
        return "unset"
    if isinstance(value, str):
        return value
    return json.dumps(value)


@app.command("reference")
@handle_errors
def reference(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write it to this file (docs/configuration.md)."),
    ] = None,
) -> None:
    """Print the reference of every setting (section, key, env var, default, meaning) as
    Markdown, generated from the settings tree."""
    text = settings_reference()
    if output is None:
        typer.echo(text, nl=False)
        return
    write_private(output, text.encode(), mode=0o644)
    typer.echo(str(output))
