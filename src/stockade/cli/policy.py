"""``stockade policy``: evaluate the policy bundle on an input document, run its Rego tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.authz import (
    Authorizer,
    format_test_results,
    parse_input,
    run_policy_tests,
    run_policy_tests_with_coverage,
)

from ._common import err_console, handle_errors, print_json, read_text_arg, settings

__all__ = ["app"]

app = typer.Typer(help="Evaluate and test authorization policy bundles.", no_args_is_help=True)

DECISION = "data.stockade.decision"

Bundle = Annotated[
    Path | None,
    typer.Option(
        "--bundle", help="Bundle directory (default: authz.policy_dir, else the shipped one)."
    ),
]


@app.command("eval")
@handle_errors
def evaluate(
    input_file: Annotated[
        str, typer.Option("--input", "-i", help="Input document (JSON file, or - for stdin).")
    ],
    bundle: Bundle = None,
    query: Annotated[
        str,
        typer.Option("--query", "-q", help="Rule to evaluate, e.g. data.stockade.obligations."),
    ] = DECISION,
) -> None:
    """Print the decision (or the value of --query) for one input document.

    The default query is checked the way every caller sees it (a malformed decision is a deny
    with a reason); any other rule prints its raw value, null when undefined.
    """
    doc = parse_input(read_text_arg(input_file, field="--input"))
    authorizer = Authorizer(settings=settings().authz, bundle_dir=bundle)
    if query == DECISION:
        print_json(authorizer.decide(doc).to_dict())
    else:
        print_json(authorizer.query(doc, query))


@app.command("test")
@handle_errors
def run_tests(
    directory: Annotated[
        Path | None, typer.Argument(help="Bundle directory (default: the configured bundle).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing tests.")] = False,
    coverage: Annotated[
        bool,
        typer.Option(
            "--coverage",
            help="Print OPA's coverage report (JSON: lines of each policy file the tests hit)"
            " on stdout; the test summary goes to stderr.",
        ),
    ] = False,
) -> None:
    """Run the bundle's test_* rules (OPA style); exit 1 when any fails."""
    bundle_dir = directory or settings().authz.policy_dir
    if coverage:
        results, report = run_policy_tests_with_coverage(bundle_dir)
        print_json(report.to_dict())
        err_console.print(format_test_results(results, verbose=verbose), markup=False)
    else:
        results = run_policy_tests(bundle_dir)
        typer.echo(format_test_results(results, verbose=verbose))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
