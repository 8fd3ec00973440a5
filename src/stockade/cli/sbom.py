"""``stockade sbom TARGET...``: SBOMs by Syft (or Trivy), merged, annotated and validated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import fail, handle_errors
from stockade.core.errors import InvalidInput
from stockade.core.files import write_private
from stockade.images import (
    ImageSource,
    annotate_clearance,
    load_bom,
    load_clearance,
    load_decryption_keys,
    merge_boms,
    render_bom,
    scan,
)

__all__ = ["sbom"]

FORMATS = ("cyclonedx-json", "cyclonedx-xml", "spdx-json")


@handle_errors
def sbom(
    targets: Annotated[
        list[str],
        typer.Argument(help="oci:DIR[:TAG] image layouts or root filesystem directories."),
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default stdout).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="cyclonedx-json, cyclonedx-xml or spdx-json.")
    ] = "cyclonedx-json",
    spec_version: Annotated[
        str, typer.Option("--spec-version", help="CycloneDX version to write.")
    ] = "1.6",
    backend: Annotated[str, typer.Option("--backend", help="syft (default) or trivy.")] = "syft",
    clearance: Annotated[
        Path | None,
        typer.Option(
            "--clearance", help="JSON of purl -> approved|rejected|pending, added as properties."
        ),
    ] = None,
    manifests: Annotated[
        list[Path] | None,
        typer.Option(
            "--manifests", help="Rendered Kubernetes/Helm YAML: each image it names is listed."
        ),
    ] = None,
    decryption_key: Annotated[
        list[str] | None,
        typer.Option(
            "--decryption-key", help="Private key to decrypt encrypted images before scanning."
        ),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option("--passphrase-env", metavar="VAR", help="Key passphrase from $VAR."),
    ] = None,
) -> None:
    """Write the SBOM of one or more images (merged into one BOM when several)."""
    if fmt not in FORMATS:
        raise fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if backend not in {"syft", "trivy"}:
        raise fail(f"--backend: {backend!r} is not syft or trivy")
    passphrase = None
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise fail(f"--passphrase-env: ${passphrase_env} is not set")
        passphrase = value.encode()
    keys = load_decryption_keys(decryption_key, passphrase) if decryption_key else []
    table = load_clearance(clearance) if clearance else None
    if fmt == "spdx-json":
        if len(targets) != 1 or manifests or table:
            raise InvalidInput(
                "--format spdx-json", "takes one target, without --manifests or --clearance"
            )
        text = scan(targets[0], backend=backend, output="spdx-json", keys=keys).decode()  # type: ignore[arg-type]
    else:
        sources: list[tuple[str, object]] = []
        for target in targets:
            raw = scan(target, backend=backend, keys=keys)  # type: ignore[arg-type]
            sources.append((target, load_bom(raw, f"{backend} output for {target}")))
        if manifests:
            from stockade.images import images_in_manifests

            for item in images_in_manifests(manifests):
                sources.append((item.reference, ImageSource(item.reference)))
        bom = merge_boms(sources)  # type: ignore[arg-type]
        if table:
            annotate_clearance(bom, table)
        text = render_bom(bom, spec=spec_version, xml=fmt == "cyclonedx-xml")
    if output is None:
        typer.echo(text)
    else:
        write_private(output, text.encode() + b"\n", mode=0o644)
