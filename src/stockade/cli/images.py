"""``stockade images inventory``: every image the platform references or runs, K2s's shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import JSON_OPTION, handle_errors, print_json, print_table
from stockade.core.errors import InvalidInput
from stockade.images import cluster_nodes, collect_inventory

__all__ = ["app"]

app = typer.Typer(help="Image inventory.", no_args_is_help=True, add_completion=False)


@app.command()
@handle_errors
def inventory(
    manifests: Annotated[
        list[Path] | None,
        typer.Option(
            "--manifests", help="Rendered chart/manifest YAML (file or directory): core images."
        ),
    ] = None,
    addons: Annotated[
        list[Path] | None,
        typer.Option("--addons", help="Manifests of add-ons: images typed addons."),
    ] = None,
    blueprints: Annotated[
        list[Path] | None, typer.Option("--blueprints", help="Workspace blueprints (YAML/JSON).")
    ] = None,
    cluster: Annotated[
        bool, typer.Option("--cluster", help="Ask the cluster (kubectl get nodes).")
    ] = False,
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", help="kubeconfig for --cluster.")
    ] = None,
    nodes_json: Annotated[
        Path | None,
        typer.Option(
            "--nodes-json", help="A saved `kubectl get nodes -o json` instead of --cluster."
        ),
    ] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """List images referenced by blueprints and manifests, and images on the cluster's nodes."""
    nodes = None
    if cluster:
        nodes = cluster_nodes(kubeconfig=kubeconfig)
    elif nodes_json is not None:
        try:
            nodes = json.loads(nodes_json.read_bytes())
        except OSError as exc:
            raise InvalidInput(
                f"--nodes-json {nodes_json}", f"cannot read ({exc.strerror})"
            ) from None
        except ValueError:
            raise InvalidInput(f"--nodes-json {nodes_json}", "is not JSON") from None
        if not isinstance(nodes, dict):
            raise InvalidInput(f"--nodes-json {nodes_json}", "is not a NodeList object")
    inv = collect_inventory(
        manifests=manifests or [], addons=addons or [], blueprints=blueprints or [], nodes=nodes
    )
    if as_json:
        print_json(inv.as_dict())
        return
    print_table(
        "images",
        ["ImageName", "ImageVersion", "ImageType", "ImageRef"],
        [tuple(i.as_k2s().values()) for i in inv.images],
    )
    if nodes is not None:
        print_table(
            "node images",
            ["ImageId", "Repository", "Tag", "Node", "Size"],
            [tuple(n.as_k2s().values()) for n in inv.node_images],
        )
