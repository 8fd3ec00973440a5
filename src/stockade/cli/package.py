"""``stockade package build|verify``: signed, catalogued, deterministic packages."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from stockade.cli._common import err_console, fail, handle_errors, print_json
from stockade.supplychain import (
    CodeSigningCertificate,
    ExclusionList,
    VerifyReport,
    build_package,
    load_certificate,
    read_password,
    verify_package,
)

__all__ = ["TtyProgress", "app", "print_verify_report", "signing_certificate"]

app = typer.Typer(
    help="Build and verify signed packages.", no_args_is_help=True, add_completion=False
)

CertificateOption = Annotated[
    Path | None,
    typer.Option(
        "--certificate",
        envvar="STOCKADE_SIGNING_CERTIFICATE",
        help="Code-signing PFX (PKCS#12) [env STOCKADE_SIGNING_CERTIFICATE].",
    ),
]
PasswordEnvOption = Annotated[
    str | None,
    typer.Option("--password-env", metavar="VAR", help="Read the PFX password from $VAR."),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option("--password-file", metavar="FILE", help="Read the PFX password from FILE."),
]
PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        help="PFX password on the command line (visible to other users: prefer --password-env).",
    ),
]
ExcludeFileOption = Annotated[
    Path | None,
    typer.Option(
        "--exclude-file",
        help="Glob patterns (one per line, # comments) of files to leave unsigned,"
        " added to the default list of vendored third-party directories.",
    ),
]
NoDefaultExcludesOption = Annotated[
    bool,
    typer.Option(
        "--no-default-excludes", help="Do not apply the default vendored-binaries exclusions."
    ),
]
JobsOption = Annotated[
    int | None, typer.Option("--jobs", "-j", min=1, help="Parallel workers (default: CPUs).")
]
CaOption = Annotated[
    Path | None, typer.Option("--ca", help="PEM of the CA the signer must chain to.")
]
NoAnchorOption = Annotated[
    bool,
    typer.Option(
        "--no-anchor",
        help="Without --ca: check integrity only, whoever signed (fails closed otherwise).",
    ),
]


class TtyProgress:
    """A rich progress bar on stderr when it is a TTY; silent otherwise."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            disable=not sys.stderr.isatty(),
            transient=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> TtyProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def phase(self, name: str, total: int) -> None:
        """Start a new bar for ``name``."""
        if self._task is not None:
            self._bar.update(self._task, visible=False)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, amount: int = 1) -> None:
        """Advance the current bar."""
        if self._task is not None:
            self._bar.advance(self._task, amount)


def signing_certificate(
    certificate: Path | None,
    password_env: str | None,
    password_file: Path | None,
    password: str | None,
) -> CodeSigningCertificate:
    """Load and check the signing certificate from the shared command-line options."""
    if certificate is None:
        raise fail(
            "--certificate: no signing certificate; pass --certificate PFX"
            " or set STOCKADE_SIGNING_CERTIFICATE"
        )
    secret = read_password(env=password_env, file=password_file)
    if password is not None:
        err_console.print(
            "warning: --password is visible in the process list and shell history;"
            " use --password-env or --password-file",
            markup=False,
        )
        if secret is None:
            secret = password.encode()
    return load_certificate(certificate, secret)


@app.command()
@handle_errors
def build(
    src: Annotated[Path, typer.Argument(help="Directory tree to package.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The package zip to write.")],
    certificate: CertificateOption = None,
    password_env: PasswordEnvOption = None,
    password_file: PasswordFileOption = None,
    password: PasswordOption = None,
    exclude_file: ExcludeFileOption = None,
    no_default_excludes: NoDefaultExcludesOption = False,
    timestamp_url: Annotated[
        str | None,
        typer.Option("--timestamp-url", help="RFC 3161 timestamp server URL (none unless set)."),
    ] = None,
    jobs: JobsOption = None,
) -> None:
    """Sign every signable file of SRC, write its signed catalog, and zip it deterministically."""
    cert = signing_certificate(certificate, password_env, password_file, password)
    exclusions = ExclusionList.load(exclude_file, defaults=not no_default_excludes)
    with TtyProgress() as progress:
        summary = build_package(
            src,
            output,
            cert,
            exclusions=exclusions,
            timestamp_url=timestamp_url,
            workers=jobs,
            progress=progress,
        )
    err_console.print(
        f"{summary.output}: {summary.count('signed')} signed, {summary.count('unsigned')}"
        f" unsigned, {summary.count('excluded')} excluded",
        markup=False,
    )


@app.command()
@handle_errors
def verify(
    target: Annotated[Path, typer.Argument(help="Package zip or unpacked directory.")],
    ca: CaOption = None,
    no_anchor: NoAnchorOption = False,
    jobs: JobsOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the catalog signature, every hash, missing/extra files and each Authenticode.

    Exit 0 only when all hold and the signer chains to --ca; a package re-signed end to end by
    someone else is intact but not ours, so without --ca the check fails unless --no-anchor.
    """
    with TtyProgress() as progress:
        report = verify_package(target, ca=ca, workers=jobs, progress=progress)
    print_verify_report(report, json_output=json_output, no_anchor=no_anchor)


def print_verify_report(report: VerifyReport, *, json_output: bool, no_anchor: bool) -> None:
    """Print a verification report (problems on stderr, one per line) and exit 1 unless it
    holds and is anchored (or ``no_anchor``)."""
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "anchored": report.anchored,
                "files_checked": report.files_checked,
                "signatures_checked": report.signatures_checked,
                "problems": [{"path": p.path, "reason": p.reason} for p in report.problems],
            }
        )
    for problem in report.problems:
        err_console.print(f"{problem.path}: {problem.reason}", markup=False)
    if not report.ok:
        raise typer.Exit(1)
    if not report.anchored and not no_anchor:
        raise fail(
            "catalog.json.p7s: signer not anchored; pass --ca CA.pem to check who signed"
            " (or --no-anchor to accept an intact package from any signer)",
            1,
        )
    if not json_output:
        trust = "" if report.anchored else " (no --ca: integrity checked, signer not anchored)"
        typer.echo(
            f"ok: {report.files_checked} files, {report.signatures_checked} signatures{trust}"
        )
