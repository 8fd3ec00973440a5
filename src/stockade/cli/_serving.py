"""The foreground life of ``stockade up`` and ``stockade serve``: start, announce, wait for
SIGINT or SIGTERM, stop; the status file kept current meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from typing import Any

from ._common import console, print_table
from ._instance import remove_status, write_status
from ._runtime import Runtime

__all__ = ["serve_until_stopped"]

#: Seconds between two looks at the certificates for ``stockade status``.
STATUS_REFRESH = 2.0


async def serve_until_stopped(runtime: Runtime, title: str, **status: Any) -> None:
    """Start ``runtime``, write the status file (``status`` adds to it), print what listens,
    and run until SIGINT or SIGTERM. A certificate change that does not load, or a failed
    renewal, is written to the status file when it appears and cleared when it goes."""
    config = runtime.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    try:
        listeners = [(item.what, item.where) for item in runtime.listeners]
        started = datetime.now(UTC).isoformat(timespec="seconds")
        errors = runtime.tls_errors()

        def publish() -> None:
            write_status(
                config.data_dir, listeners, started=started, nft_table=config.nft_table,
                tls_errors=errors, **status,
            )  # fmt: skip

        publish()
        print_table(title, ["service", "listening on"], listeners)
        console.print("ready; Ctrl-C to stop", highlight=False)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_REFRESH)
            if (now := runtime.tls_errors()) != errors:
                errors = now
                publish()
        console.print("stopping ...", highlight=False)
    finally:
        remove_status(config.data_dir)
        await runtime.stop()
