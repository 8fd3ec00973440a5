"""``stockade workspaces``: register the workspaces SSH users reach (``ssh alice+NAME@host``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from stockade.core import InvalidInput
from stockade.core.errors import AlreadyExists, NotFound
from stockade.gateway import parse_upstream, upstream_public_key
from stockade.identity import Workspace
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    PodmanRuntime,
    build_busybox_image,
    claim_homes,
    guard_homes,
)

from ._admin import admin_identity
from ._common import (
    JSON_OPTION,
    PurgeHome,
    ReuseHome,
    handle_errors,
    home_choice,
    print_json,
    print_table,
    run_async,
    settings,
)

__all__ = ["app"]

app = typer.Typer(help="Workspaces: add, list, remove.", no_args_is_help=True)

DIRECT = typer.Option("--direct", help="Use the store directly.")


def _row(ws: Any) -> dict[str, Any]:
    return {
        "name": ws.name,
        "owner": ws.owner,
        "backend": ws.backend,
        "config": dict(ws.config),
        "created_at": ws.created_at,
    }


@app.command("add")
@handle_errors
def add(
    name: str,
    owner: Annotated[str, typer.Option(help="The user who owns it.")],
    backend: Annotated[
        Literal["local", "ssh", "container"],
        typer.Option(help="local (sandbox), ssh (upstream sshd) or container (Podman Pod)."),
    ] = "local",
    upstream: Annotated[str | None, typer.Option(help="ssh backend: host:port.")] = None,
    login: Annotated[str | None, typer.Option(help="ssh backend: upstream user.")] = None,
    direct: Annotated[bool, DIRECT] = False,
    reuse_home: ReuseHome = False,
    purge: PurgeHome = False,
) -> None:
    """Register workspace NAME. For ``--backend ssh`` also prints the gateway's key to add to
    the upstream user's authorized_keys. A home left by an earlier workspace of the same name is
    refused unless ``--reuse-home`` or ``--purge`` is given."""
    config: dict[str, Any] = {}
    if backend == "ssh":
        if not upstream or not login:
            raise InvalidInput("--upstream/--login", "the ssh backend needs both")
        parse_upstream(upstream)
        config = {"upstream": upstream, "login": login}
    elif upstream or login:
        raise InvalidInput("--upstream/--login", "only for --backend ssh")

    data_dir = settings().data_dir
    choice = home_choice(reuse_home, purge)

    async def run() -> Workspace:
        async with admin_identity(settings(), direct=direct) as identity:
            try:  # the name must be free before any home is purged for it
                await identity.get_workspace(name)
            except NotFound:
                pass
            else:
                raise AlreadyExists("workspace", name)
            guard_homes(data_dir, name, owner, choice=choice)
            return await identity.add_workspace(name, owner=owner, backend=backend, config=config)

    ws = run_async(run())
    stamp = ws.created_at.isoformat()
    claim_homes(data_dir, name, owner, owner_id=f"workspace:{name}:{owner}@{stamp}")
    typer.echo(f"workspace {name} added ({backend})")
    if backend == "ssh":
        typer.echo("add this key to the upstream user's authorized_keys:")
        typer.echo(upstream_public_key(settings().data_dir))


@app.command("list")
@handle_errors
def list_(
    owner: Annotated[str | None, typer.Option(help="Only this user's workspaces.")] = None,
    as_json: bool = JSON_OPTION,
    direct: Annotated[bool, DIRECT] = False,
) -> None:
    """Registered workspaces."""

    async def run() -> list[dict[str, Any]]:
        async with admin_identity(settings(), direct=direct) as identity:
            return [_row(ws) for ws in await identity.list_workspaces(owner=owner)]

    rows = run_async(run())
    if as_json:
        print_json(rows)
        return
    print_table(
        "Workspaces",
        ["name", "owner", "backend", "upstream"],
        [[r["name"], r["owner"], r["backend"], r["config"].get("upstream", "")] for r in rows],
    )


@app.command("remove")
@handle_errors
def remove(name: str, direct: Annotated[bool, DIRECT] = False) -> None:
    """Remove workspace NAME's record (its files stay); every session in it ends."""

    async def run() -> None:
        async with admin_identity(settings(), direct=direct) as identity:
            await identity.remove_workspace(name)

    run_async(run())
    typer.echo(f"workspace {name} removed")


@app.command("build-image")
@handle_errors
def build_image(
    program: Annotated[
        list[Path] | None,
        typer.Option(
            "--program", "-p", help="A program of this host to add, with its shared libraries."
        ),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Image name (default: the blueprints').")] = None,
) -> None:
    """Build the ``container`` workspaces' image from busybox-static (plus ``--program`` files,
    e.g. ``/usr/bin/git``) into Stockade's private Podman storage; no registry is involved."""
    data_dir = settings().data_dir
    name = tag or DEFAULT_BLUEPRINT.effective_image
    runtime = PodmanRuntime(data_dir=data_dir)
    with tempfile.TemporaryDirectory(prefix="stockade-rootfs-", dir=data_dir) as tmp:
        build_busybox_image(runtime.podman, Path(tmp) / "rootfs", name, programs=program or [])
    typer.echo(f"image {name} built")
