"""``stockade catalog create|verify``: a signed catalog for a directory tree, and its check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import err_console, handle_errors
from stockade.cli.package import (
    CaOption,
    CertificateOption,
    ExcludeFileOption,
    JobsOption,
    NoAnchorOption,
    NoDefaultExcludesOption,
    PasswordEnvOption,
    PasswordFileOption,
    PasswordOption,
    TtyProgress,
    print_verify_report,
    signing_certificate,
)
from stockade.core import InvalidInput
from stockade.supplychain import ExclusionList, create_catalog, verify_package

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


@app.command()
@handle_errors
def verify(
    directory: Annotated[Path, typer.Argument(help="Tree holding catalog.json and its .p7s.")],
    ca: CaOption = None,
    no_anchor: NoAnchorOption = False,
    jobs: JobsOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check DIR against its signed catalog: the signature, every hash, missing and extra files,
    and the Authenticode signature of each file listed as signed. Exit 1 on any problem."""
    if not directory.is_dir():
        raise InvalidInput(str(directory), "not a directory; pass the tree catalog create wrote")
    with TtyProgress() as progress:
        report = verify_package(directory, ca=ca, workers=jobs, progress=progress)
    print_verify_report(report, json_output=json_output, no_anchor=no_anchor)
