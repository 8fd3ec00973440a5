"""``stockade pod-security check``: the Pod Security Standards checker on manifests."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
import yaml

from stockade.core import InvalidInput
from stockade.workspace import check_object

from ._common import fail, handle_errors, read_text_arg

__all__ = ["app"]

app = typer.Typer(help="Pod Security Standards (baseline, restricted).", no_args_is_help=True)


@app.command("check")
@handle_errors
def check(
    files: Annotated[list[str], typer.Argument(help="Manifests (YAML, several documents each).")],
    level: Annotated[
        Literal["baseline", "restricted"], typer.Option(help="baseline or restricted.")
    ] = "restricted",
) -> None:
    """Check every Pod (or Pod template) in FILES; exit 1 naming each failed check and object."""
    failures = 0
    checked = 0
    for name in files:
        text = read_text_arg(name, field=name)
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError:
            raise InvalidInput(name, "not valid YAML") from None
        for document in documents:
            if not isinstance(document, dict):
                raise InvalidInput(name, "a document is not a mapping")
            items = document.get("items") if document.get("kind") == "List" else [document]
            for obj in items if isinstance(items, list) else []:
                checked += 1
                for violation in check_object(obj, level):
                    failures += 1
                    typer.echo(f"{name}: {violation}")
    if failures:
        raise fail(f"{failures} check(s) failed at level {level}", 1)
    typer.echo(f"{checked} object(s) meet {level}")
