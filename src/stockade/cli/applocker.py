"""``stockade applocker rules``: a complete AppLocker policy that keeps Windows' default rules."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import err_console, handle_errors
from stockade.core import InvalidInput
from stockade.supplychain import (
    build_policy,
    load_signer_certificate,
    merge_policy,
    parse_collections,
    parse_policy,
    path_rule,
    policy_xml,
    publisher_rule,
)

__all__ = ["app"]

app = typer.Typer(help="AppLocker policies.", no_args_is_help=True, add_completion=False)


def _write(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise InvalidInput(
            str(path), f"its directory {path.parent} does not exist; create it or pick another -o"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
@handle_errors
def rules(
    output: Annotated[Path, typer.Option("--output", "-o", help="Policy XML to write.")],
    sid: Annotated[
        str, typer.Option("--sid", help="SID the rule allows (default: container users).")
    ] = "S-1-5-93-2-2",
    path: Annotated[str, typer.Option("--path", help="Windows path pattern.")] = "C:\\*",
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", help="Exe, Msi or Script (repeatable; default: all three)."),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="Enabled, AuditOnly or NotConfigured.")
    ] = "Enabled",
    merge: Annotated[
        Path | None, typer.Option("--merge", help="Existing policy XML to merge into.")
    ] = None,
    publisher_from: Annotated[
        Path | None,
        typer.Option(
            "--publisher-from",
            help="Signing certificate (PEM or DER): also let SID run files it signed.",
        ),
    ] = None,
) -> None:
    """Write an AppLocker policy: Windows default allow rules plus SID may run PATH, and, with
    --publisher-from, files signed by that certificate's publisher."""
    chosen = parse_collections(collection)
    rules = [path_rule(c, sid, path) for c in chosen]
    if publisher_from is not None:
        signer = load_signer_certificate(publisher_from)
        rules += [publisher_rule(c, sid, signer) for c in chosen]
    policy = build_policy(chosen, rules, mode=mode)
    if merge is not None:
        try:
            text = merge.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(str(merge), "cannot read the policy to merge") from exc
        existing = parse_policy(text, source=str(merge))
        added = merge_policy(existing, policy)
        err_console.print(f"merged {added} new rule(s) into {merge}", markup=False)
        policy = existing
    _write(output, policy_xml(policy))
    typer.echo(str(output))
