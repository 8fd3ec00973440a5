"""The audit store: every event of the bus in one append-only, hash-chained table.

::

    service = AuditService(bus=bus, store=store, settings=settings.audit, data_dir=data_dir)
    await service.start()                      # consumers of STOCKADE_AUTH and STOCKADE_AUDIT
    page = await AuditSearch(store).search(AuditQuery.parse(user="alice", since="1h"))
    report = await verify_store(store, heads_file, load_public_key(key_file))
    await service.stop()

Rows are chained (each carries its predecessor's hash) and the chain head is signed every N rows
or T seconds with a key outside the store; :func:`verify_store` names the first row altered,
removed or inserted, even when the chain was recomputed. The record schema and its OCSF mapping
are in ``docs/audit.md``.
"""

from ._heads import HeadKey, HeadSigner, load_public_key, public_path, read_heads, verify_head
from ._schema import SCHEMA, AuditRecord, record_from_event
from ._search import MAX_LIMIT, AuditPage, AuditQuery, AuditSearch, parse_time
from ._service import AUDITED_STREAMS, AuditService, heads_file_for, key_file_for
from ._verify import VerifyReport, verify_store
from ._writer import AppendedRow, AuditWriter

__all__ = [
    "AUDITED_STREAMS",
    "MAX_LIMIT",
    "SCHEMA",
    "AppendedRow",
    "AuditPage",
    "AuditQuery",
    "AuditRecord",
    "AuditSearch",
    "AuditService",
    "AuditWriter",
    "HeadKey",
    "HeadSigner",
    "VerifyReport",
    "heads_file_for",
    "key_file_for",
    "load_public_key",
    "parse_time",
    "public_path",
    "read_heads",
    "record_from_event",
    "verify_head",
    "verify_store",
]
