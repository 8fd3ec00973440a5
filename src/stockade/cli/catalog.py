"""``stockade catalog create``: a signed catalog for a directory tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import err_console, handle_errors
from stockade.cli.package import (
    CertificateOption,
    ExcludeFileOption,
    JobsOption,
    NoDefaultExcludesOption,
    PasswordEnvOption,
    PasswordFileOption,
    PasswordOption,
    TtyProgress,
    signing_certificate,
)
from stockade.supplychain import ExclusionList, create_catalog

__all__ = ["app"]

app = typer.Typer(help="Signed file catalogs.", no_args_is_help=True, add_completion=False)


@app.command()
@handle_errors
def create(
    directory: Annotated[Path, typer.Argument(help="Tree to catalog (catalog files go inside).")],
    certificate: CertificateOption = None,
    password_env: PasswordEnvOption = None,
    password_file: PasswordFileOption = None,
    password: PasswordOption = None,
    exclude_file: ExcludeFileOption = None,
    no_default_excludes: NoDefaultExcludesOption = False,
    cdf: Annotated[
        Path | None,
        typer.Option("--cdf", help="Also write a makecat catalog definition file (outside DIR)."),
    ] = None,
    jobs: JobsOption = None,
) -> None:
    """Write catalog.json (sha256, size, status per file) and its CMS signature catalog.json.p7s."""
    cert = signing_certificate(certificate, password_env, password_file, password)
    exclusions = ExclusionList.load(exclude_file, defaults=not no_default_excludes)
    with TtyProgress() as progress:
        catalog = create_catalog(
            directory, cert, exclusions=exclusions, cdf=cdf, workers=jobs, progress=progress
        )
    err_console.print(f"{directory}: catalogued {len(catalog.files)} files", markup=False)
