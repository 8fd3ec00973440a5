"""``stockade blueprints``: the workspace blueprints administrators keep in the store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from stockade.core import InvalidInput
from stockade.store import Store
from stockade.workspace import (
    Blueprint,
    BlueprintRegistry,
    check_object,
    load_blueprint,
    parse_repository_file,
    render_workspace,
    resolve,
    validate_object,
)

from ._common import (
    JSON_OPTION,
    handle_errors,
    print_json,
    print_table,
    read_text_arg,
    run_async,
    settings,
)
from ._datadir import prepare_data_dir

__all__ = ["app"]

app = typer.Typer(
    help="Workspace blueprints: add, list, show, remove, render, validate.", no_args_is_help=True
)


@contextlib.asynccontextmanager
async def _registry() -> AsyncIterator[BlueprintRegistry]:
    config = settings()
    prepare_data_dir(config)
    store = Store(config.database_url, echo=config.store.echo)
    try:
        await store.migrate()
        yield BlueprintRegistry(store)
    finally:
        await store.close()


def _row(blueprint: Blueprint) -> dict[str, Any]:
    return {
        "name": blueprint.name,
        "template": blueprint.template,
        "is_template": blueprint.is_template,
        "image": blueprint.image,
        "podman": blueprint.podman,
        "level": blueprint.level,
        "document": blueprint.to_document(),
    }


@app.command("add")
@handle_errors
def add(
    file: Annotated[str, typer.Argument(help="Blueprint YAML or JSON file, or - for stdin.")],
    replace: Annotated[bool, typer.Option("--replace", help="Update an existing one.")] = False,
) -> None:
    """Add a blueprint (its template chain must resolve)."""
    blueprint = load_blueprint(read_text_arg(file, field="FILE"), source=file)

    async def _go() -> None:
        async with _registry() as registry:
            await registry.add(blueprint, replace=replace)

    run_async(_go())
    typer.echo(f"blueprint {blueprint.name} stored (level {blueprint.level})")


@app.command("list")
@handle_errors
def list_(as_json: bool = JSON_OPTION) -> None:
    """List blueprints."""

    async def _go() -> list[Blueprint]:
        async with _registry() as registry:
            return await registry.list()

    blueprints = run_async(_go())
    if as_json:
        print_json([_row(b) for b in blueprints])
        return
    print_table(
        "Blueprints",
        ["name", "template", "image", "podman", "level"],
        [(b.name, b.template or "", b.image or "", b.podman or False, b.level) for b in blueprints],
    )


@app.command("show")
@handle_errors
def show(name: str, as_json: bool = JSON_OPTION) -> None:
    """Show one blueprint, resolved (its templates merged in)."""

    async def _go() -> Blueprint:
        async with _registry() as registry:
            return await registry.resolved(name)

    blueprint = run_async(_go())
    if as_json:
        print_json(_row(blueprint))
        return
    typer.echo(yaml.safe_dump(blueprint.to_document(), sort_keys=False), nl=False)


@app.command("remove")
@handle_errors
def remove(name: str) -> None:
    """Remove a blueprint (refused while another uses it as its template)."""

    async def _go() -> None:
        async with _registry() as registry:
            await registry.remove(name)

    run_async(_go())
    typer.echo(f"blueprint {name} removed")


def _dump(objects: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n"
    return yaml.safe_dump_all(objects, sort_keys=False)


@app.command("render")
@handle_errors
def render(
    name: str,
    workspace: Annotated[str | None, typer.Option(help="Workspace name (default: NAME).")] = None,
    owner: Annotated[str, typer.Option(help="The workspace's owner.")] = "owner",
    uid: Annotated[int, typer.Option(help="The workspace's uid.", min=1000)] = 200000,
    fmt: Annotated[
        Literal["yaml", "json"], typer.Option("--format", help="yaml or json.")
    ] = "yaml",
) -> None:
    """Render a stored blueprint to its Kubernetes objects (checked at its Pod Security level)."""

    async def _go() -> Blueprint:
        async with _registry() as registry:
            return await registry.resolved(name)

    blueprint = run_async(_go())
    rendered = render_workspace(blueprint, workspace=workspace or name, owner=owner, uid=uid)
    violations = check_object(rendered.pod, blueprint.level)
    if violations:
        raise InvalidInput(name, f"renders a Pod failing {blueprint.level}: {violations[0]}")
    typer.echo(_dump(rendered.objects, fmt), nl=False)


@app.command("validate")
@handle_errors
def validate(
    file: Annotated[str, typer.Argument(help="A blueprint file, or - for stdin.")],
    repository: Annotated[
        bool, typer.Option("--repository", help="FILE is a repository's .stockade.yaml.")
    ] = False,
    crd_schemas: Annotated[
        Path | None, typer.Option(help="CRD JSON Schemas (to validate the CiliumNetworkPolicy).")
    ] = None,
) -> None:
    """Validate a blueprint (or a repository file): the model, its rendering, its Pod Security
    level and the Kubernetes 1.35 schemas; the first problem is printed naming its field."""
    text = read_text_arg(file, field="FILE")
    if repository:
        parse_repository_file(text, source=file)
        typer.echo(f"{file}: valid repository file")
        return
    blueprint = load_blueprint(text, source=file)
    if blueprint.is_template:
        typer.echo(f"{file}: valid template {blueprint.name}")
        return
    if blueprint.template is not None:
        blueprint = resolve(
            blueprint.name, {blueprint.name: blueprint.model_copy(update={"template": None})}
        )
    rendered = render_workspace(blueprint, workspace=blueprint.name, owner="owner", uid=200000)
    violations = check_object(rendered.pod, blueprint.level)
    if violations:
        raise InvalidInput(file, f"renders a Pod failing {blueprint.level}: {violations[0]}")
    for obj in rendered.objects:
        if obj["kind"] == "CiliumNetworkPolicy" and crd_schemas is None:
            continue
        validate_object(obj, crd_schemas=crd_schemas)
    typer.echo(f"{file}: valid blueprint {blueprint.name} (level {blueprint.level})")
