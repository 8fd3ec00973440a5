"""``stockade up``: every service in one process until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.core import Settings, configure_logging

from ._common import handle_errors, run_async, settings
from ._instance import InstanceLock
from ._runtime import Runtime, prepare_data_dir
from ._serving import serve_until_stopped

__all__ = ["up"]


def _with_overrides(base: Settings, data_dir: Path | None, ssh_port: int | None) -> Settings:
    update: dict[str, object] = {}
    if data_dir is not None:
        update["data_dir"] = data_dir
    if ssh_port is not None:
        update["gateway"] = base.gateway.model_copy(update={"port": ssh_port})
    return base.model_copy(update=update) if update else base


async def _serve(config: Settings) -> None:
    configure_logging(config.log.level, config.log.json_output)
    with InstanceLock(prepare_data_dir(config)):  # a second instance exits 2, naming our PID
        await serve_until_stopped(Runtime(config), "stockade up")


@handle_errors
def up(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="State directory (env STOCKADE_DATA_DIR).")
    ] = None,
    ssh_port: Annotated[
        int | None, typer.Option("--ssh-port", help="SSH gateway port (default 2222).")
    ] = None,
) -> None:
    """Run every service in one process: store, event bus, identity, authz, internal API,
    credential broker, SSH Shield and the SSH gateway. Ctrl-C or SIGTERM stops them cleanly."""
    run_async(_serve(_with_overrides(settings(), data_dir, ssh_port)))
