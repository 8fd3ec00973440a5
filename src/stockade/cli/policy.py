"""``stockade policy``: evaluate the policy bundle on an input document, run its Rego tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.authz import Authorizer, format_test_results, parse_input, run_policy_tests

from ._common import handle_errors, print_json, read_text_arg, settings

__all__ = ["app"]

app = typer.Typer(help="Evaluate and test authorization policy bundles.", no_args_is_help=True)

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
) -> None:
    """Print the decision (data.stockade.decision) for one input document."""
    doc = parse_input(read_text_arg(input_file, field="--input"))
    authorizer = Authorizer(settings=settings().authz, bundle_dir=bundle)
    print_json(authorizer.decide(doc).to_dict())


@app.command("test")
@handle_errors
def run_tests(
    directory: Annotated[
        Path | None, typer.Argument(help="Bundle directory (default: the configured bundle).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing tests.")] = False,
) -> None:
    """Run the bundle's test_* rules (OPA style); exit 1 when any fails."""
    results = run_policy_tests(directory or settings().authz.policy_dir)
    typer.echo(format_test_results(results, verbose=verbose))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
