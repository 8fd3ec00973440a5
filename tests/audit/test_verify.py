"""Tampering with the store is caught and the row named (acceptance 3), on SQLite and PostgreSQL.

Each attacker has SQL access to the store, and knows the hash algorithm; none has the head
signing key (it is outside the store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from stockade.audit import AuditRecord, load_public_key, verify_store
from stockade.audit._schema import chain_hash
from stockade.store import Store

from .conftest import Chain, records, write_chain


async def _verify(chain: Chain):  # type: ignore[no-untyped-def]
    return await verify_store(chain.store, chain.heads, load_public_key(chain.key))


async def _sql(store: Store, statement: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def _rows(store: Store, after: int = 0) -> list[dict[str, object]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT * FROM audit_events WHERE id > :a ORDER BY id"), {"a": after}
        )
        return [dict(r) for r in result.mappings()]


async def _recompute(store: Store, start: int) -> None:
    """What a careful attacker does after a change: rewrite every later hash."""
    rows = await _rows(store, start - 1)
    prev = (await _rows(store, start - 2))[0]["hash"] if start > 1 else "0" * 64
    for row in rows:
        digest = AuditRecord.from_row(row).digest()
        new = chain_hash(str(prev), int(row["id"]), digest)  # type: ignore[call-overload]
        await _sql(
            store,
            "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE id = :i",
            p=prev,
            h=new,
            i=row["id"],
        )
        prev = new


async def test_untouched_store_verifies(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 40, unsigned=3)
    report = await _verify(chain)
    assert report.ok, report.problem
    assert (report.rows, report.signed_through, report.unsigned) == (43, 40, 3)
    assert report.heads == len(chain.heads.read_text().splitlines()) >= 8


async def test_empty_store_verifies(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 0)
    report = await _verify(chain)
    assert report.ok
    assert report.rows == 0


async def test_edited_row_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 30)
    await _sql(store, "UPDATE audit_events SET decision = 'allow' WHERE id = 13")
    await _sql(store, "UPDATE audit_events SET count = count + 1 WHERE id = 13")
    report = await _verify(chain)
    assert not report.ok
    assert report.row == 13
    assert report.problem == "row 13 altered: its content differs from the signed record"


async def test_edited_unsigned_row_named_by_its_hash(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 10, unsigned=5)
    await _sql(store, "UPDATE audit_events SET \"user\" = 'mallory' WHERE id = 12")
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 12)
    assert "altered" in (report.problem or "")


async def test_deleted_row_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 30)
    await _sql(store, "DELETE FROM audit_events WHERE id = 17")
    report = await _verify(chain)
    assert (report.ok, report.row, report.problem) == (False, 17, "row 17 removed")


async def test_deleted_unsigned_row_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 10, unsigned=5)
    await _sql(store, "DELETE FROM audit_events WHERE id = 13")
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 13)
    assert report.problem == "row 13 removed (next row is 14)"


async def _insert(store: Store, row: dict[str, object]) -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    statement = f"INSERT INTO audit_events ({columns}) VALUES ({values})"  # noqa: S608 - ours
    await _sql(store, statement, **row)


def _forged(row_id: int, prev: str) -> dict[str, object]:
    record = records(1, 900)[0]
    forged = {
        "id": row_id,
        "stream": record.stream,
        "stream_seq": 900,
        "subject": record.subject,
        "v": 1,
        "at": record.at,
        "received_at": record.received_at,
        "action": record.action,
        "user": "mallory",
        "decision": "allow",
        "source_ip": None,
        "session_id": None,
        "count": 1,
        "payload": json.dumps({"v": 1, "at": record.at.isoformat(), "user": "mallory"}),
        "prev_hash": prev,
        "hash": "",
    }
    forged["hash"] = chain_hash(prev, row_id, AuditRecord.from_row(forged).digest())
    return forged


async def test_inserted_row_named_even_with_the_chain_recomputed(
    store: Store, tmp_path: Path
) -> None:
    chain = await write_chain(store, tmp_path, 30)
    for row_id in range(30, 20, -1):  # make room after row 20: shift 21..30 up by one
        await _sql(store, "UPDATE audit_events SET id = id + 1 WHERE id = :i", i=row_id)
    previous = (await _rows(store, 19))[0]
    await _insert(store, _forged(21, str(previous["hash"])))
    await _recompute(store, 22)
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 21)
    assert report.problem == "row 21 inserted: it is not in the signed record"


async def test_appended_row_that_does_not_chain_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 10)
    await _insert(store, _forged(11, "f" * 64))
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 11)
    assert "does not chain to row 10" in (report.problem or "")


async def test_rewritten_row_with_recomputed_chain_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 40)
    await _sql(
        store,
        "UPDATE audit_events SET decision = 'allow', payload = :p WHERE id = 9",
        p=json.dumps({"v": 1, "at": "2026-11-30T12:09:00+00:00", "allow": True}),
    )
    await _recompute(store, 9)
    assert [r["id"] for r in await _rows(store)][-1] == 40  # the chain itself is consistent
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 9)
    assert report.problem == "row 9 altered: its content differs from the signed record"


async def test_deleted_newest_rows_named(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 30)
    await _sql(store, "DELETE FROM audit_events WHERE id > 26")
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 27)
    assert report.problem == "rows 27..30 removed: signed, no longer stored"


async def test_forged_head_rejected(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 10)
    lines = chain.heads.read_text().splitlines()
    head = json.loads(lines[-1])
    head["chain_hash"] = "0" * 64
    chain.heads.write_text("\n".join([*lines[:-1], json.dumps(head)]) + "\n")
    report = await _verify(chain)
    assert not report.ok
    assert "bad signature" in (report.problem or "")


async def test_rolled_back_store_named(store: Store, tmp_path: Path) -> None:
    """Rows deleted, then new ones chained where they were: the heads say rows were lost."""
    chain = await write_chain(store, tmp_path, 20)
    await _sql(store, "DELETE FROM audit_events WHERE id > 15")
    chain.writer = type(chain.writer)(store)
    chain.signer.add(await chain.writer.append(records(3, 500)))
    await chain.signer.sign()
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 16)


@pytest.mark.parametrize("copies", [2, 3])
async def test_redelivery_never_makes_a_second_row(
    store: Store, tmp_path: Path, copies: int
) -> None:
    chain = await write_chain(store, tmp_path, 10)
    first = await chain.writer.append(records(12, 1))
    assert [r.id for r in first] == [11, 12]  # only 11 and 12 were new
    for _ in range(copies):
        assert await chain.writer.append(records(12, 1)) == []
    rows = await _rows(store)
    assert [r["id"] for r in rows] == list(range(1, 13))
    assert len({(r["stream"], r["stream_seq"]) for r in rows}) == 12
