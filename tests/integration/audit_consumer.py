"""The audit service alone in a process (``kill -9`` target of test_audit_crash.py).

Usage: python audit_consumer.py NATS_URL DATABASE_URL DATA_DIR
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from stockade.audit import AuditService
from stockade.bus import Bus
from stockade.core.settings import AuditSettings
from stockade.store import Store


async def main(nats_url: str, database_url: str, data_dir: Path) -> None:
    store = Store(database_url)
    await store.migrate()
    bus = await Bus.connect(nats_url, name="audit-crash")
    await bus.ensure_streams()
    service = AuditService(
        bus=bus,
        store=store,
        settings=AuditSettings(batch=100, head_every_rows=500, head_every_seconds=0.5),
        data_dir=data_dir,
        poll_interval=0.2,
    )
    await service.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
