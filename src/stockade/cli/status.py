"""``stockade status``: what runs, where, and whether each listener answers.

Reads the status file ``stockade up`` (or ``stockade serve``) writes in its data dir
(``run/status.json``, kept current), checks that the process still holds the data dir's lock,
and probes every listener. Exit 0 when an instance runs, every listener answers and its
certificates load; 1 otherwise (nothing running, a listener down, or a certificate change
refused: the previous certificate then still serves, and the reason is shown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import JSON_OPTION, console, handle_errors, print_json, print_table, settings
from ._instance import lock_holder, probe_listener, read_status

__all__ = ["status"]


@handle_errors
def status(
    as_json: bool = JSON_OPTION,
    data_dir_option: Annotated[
        Path | None,
        typer.Option("--data-dir", help="State directory of the instance (env STOCKADE_DATA_DIR)."),
    ] = None,
) -> None:
    """Show whether stockade up runs on this data dir, what it serves, whether each listener
    answers and whether its certificates load; exit 1 when it does not run, a listener is down
    or a certificate change was refused (the previous certificate still serves)."""
    cfg = settings()
    if data_dir_option is not None:
        cfg = cfg.model_copy(update={"data_dir": data_dir_option})
    data_dir = cfg.data_dir
    holder = lock_holder(data_dir)
    document = read_status(data_dir) if holder is not None else None
    report: dict[str, Any] = {
        "data_dir": str(data_dir.resolve()),
        "running": holder is not None,
        "pid": holder or None,
        "started": None,
        "versions": {},
        "nft_table": cfg.nft_table,
        "listeners": [],
        "tls_errors": {},
        "healthy": False,
    }
    if document is not None:
        # the file is another process's word: only the fields' expected shapes are taken, and
        # the pid is the lock holder's (the kernel's) whenever it is known
        pid = document.get("pid")
        if not report["pid"] and isinstance(pid, int) and not isinstance(pid, bool):
            report["pid"] = pid
        started = document.get("started")
        report["started"] = started if isinstance(started, str) else None
        versions = document.get("versions")
        if isinstance(versions, dict):
            report["versions"] = {str(k): str(v) for k, v in versions.items()}
        nft_table = document.get("nft_table")
        if isinstance(nft_table, str):
            report["nft_table"] = nft_table
        for item in document["listeners"]:
            if not isinstance(item, dict):
                continue
            address = str(item.get("address", ""))
            probe = probe_listener(address)
            report["listeners"].append(
                {
                    "service": str(item.get("service", "")),
                    "address": address,
                    "state": probe.state,
                    "detail": probe.detail,
                }
            )
        errors = document.get("tls_errors")
        if isinstance(errors, dict):
            report["tls_errors"] = {str(part): str(why) for part, why in errors.items()}
        report["healthy"] = not report["tls_errors"] and all(
            item["state"] != "down" for item in report["listeners"]
        )
    if as_json:
        print_json(report)
    else:
        _print(report, starting=holder is not None and document is None)
    if not report["healthy"]:
        raise typer.Exit(1)


def _print(report: dict[str, Any], *, starting: bool) -> None:
    if not report["running"]:
        console.print(f"stockade up is not running on {report['data_dir']}", markup=False)
        return
    if starting:
        console.print(
            f"stockade up (pid {report['pid']}) holds {report['data_dir']} but has not"
            " written its status yet (starting?)",
            markup=False,
        )
        return
    versions = ", ".join(f"{k} {v}" for k, v in sorted(report["versions"].items()))
    console.print(
        f"stockade up: pid {report['pid']}, since {report['started']}, data dir"
        f" {report['data_dir']} ({versions}); nft table inet {report['nft_table']}",
        markup=False,
    )
    print_table(
        "listeners",
        ["service", "address", "state"],
        (
            [
                item["service"],
                item["address"],
                item["state"] + (f" ({item['detail']})" if item["detail"] else ""),
            ]
            for item in report["listeners"]
        ),
    )
    for part, why in sorted(report["tls_errors"].items()):
        console.print(f"TLS {part}: {why}", markup=False)
