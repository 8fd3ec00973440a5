"""Independent attacks on the audit trail (issue 11): an insider with SQL access or file access
to the data dir, a hostile event publisher, a hostile searcher. Each test is one attack; the
held ones stay as regression tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from stockade.audit import (
    AuditQuery,
    AuditSearch,
    HeadKey,
    HeadSigner,
    load_public_key,
    record_from_event,
    verify_store,
)
from stockade.audit._search import export_record
from stockade.cli.audit import _text
from stockade.core import events as ev
from stockade.core.errors import InvalidInput
from stockade.store import Store

from .conftest import Chain, records, write_chain


async def _verify(chain: Chain):  # type: ignore[no-untyped-def]
    return await verify_store(chain.store, chain.heads, load_public_key(chain.key))


async def _sql(store: Store, statement: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


# --- tampering (SQL insider) ------------------------------------------------------------------


async def test_swapped_payloads_keeping_hashes_caught(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 20)
    await _sql(
        store,
        "UPDATE audit_events SET payload = CASE id WHEN 7 THEN "
        "(SELECT payload FROM audit_events WHERE id = 8) ELSE "
        "(SELECT payload FROM audit_events WHERE id = 7) END WHERE id IN (7, 8)",
    )
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 7)
    assert "altered" in (report.problem or "")


@pytest.mark.parametrize(
    "change",
    [
        "received_at = received_at + INTERVAL '1 second'",
        "count = count + 1",
    ],
)
async def test_only_received_at_or_count_changed_caught(
    store: Store, tmp_path: Path, change: str
) -> None:
    chain = await write_chain(store, tmp_path, 20)
    if store.dialect == "sqlite" and "INTERVAL" in change:
        change = "received_at = '2020-01-01 00:00:00.000000'"
    await _sql(store, f"UPDATE audit_events SET {change} WHERE id = 11")  # noqa: S608 - ours
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 11)


async def test_reordered_ids_caught(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 20)
    await _sql(store, "UPDATE audit_events SET id = 1000 WHERE id = 5")
    await _sql(store, "UPDATE audit_events SET id = 5 WHERE id = 6")
    await _sql(store, "UPDATE audit_events SET id = 6 WHERE id = 1000")
    report = await _verify(chain)
    assert not report.ok
    assert report.row == 5


async def test_delete_everything_caught(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 20)
    await _sql(store, "DELETE FROM audit_events")
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 1)
    assert "removed" in (report.problem or "")


async def test_delete_everything_and_rewrite_caught(store: Store, tmp_path: Path) -> None:
    """Delete every row, then write a fresh (different) chain with the store's own writer."""
    chain = await write_chain(store, tmp_path, 20)
    await _sql(store, "DELETE FROM audit_events")
    from stockade.audit import AuditWriter

    await AuditWriter(store).append(records(20, 500))
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 1)


# --- tampering (file access to the data dir) --------------------------------------------------


async def test_heads_signed_by_another_key_rejected(store: Store, tmp_path: Path) -> None:
    chain = await write_chain(store, tmp_path, 10)
    await _sql(store, "UPDATE audit_events SET \"user\" = 'mallory' WHERE id = 3")
    mine = HeadKey.load_or_create(tmp_path / "mine" / "k.pem")
    forged = tmp_path / "forged.jsonl"
    signer = HeadSigner(mine, forged, publish=None, every_rows=100, every_seconds=3600)
    from stockade.audit import AppendedRow, AuditRecord

    async with store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM audit_events ORDER BY id"))).mappings()
        signer.add(
            [AppendedRow(r["id"], AuditRecord.from_row(r).digest(), r["hash"]) for r in rows]
        )
    await signer.sign()
    chain.heads.write_bytes(forged.read_bytes())
    report = await _verify(chain)
    assert not report.ok
    assert "bad signature or key" in (report.problem or "")


async def test_truncated_heads_file_reported_as_unsigned(store: Store, tmp_path: Path) -> None:
    """Truncating the heads file is not 'tampered' for verify alone (the bus copy is the second
    witness); it is visible: every row is reported as not yet signed."""
    chain = await write_chain(store, tmp_path, 20)
    chain.heads.write_bytes(b"")
    report = await _verify(chain)
    assert report.ok
    assert (report.signed_through, report.unsigned) == (0, 20)


async def test_heads_file_cut_mid_line_still_checks_earlier_heads(
    store: Store, tmp_path: Path
) -> None:
    chain = await write_chain(store, tmp_path, 20)
    data = chain.heads.read_bytes()
    chain.heads.write_bytes(data[: len(data) - 40])  # the last head torn
    await _sql(store, "UPDATE audit_events SET \"user\" = 'mallory' WHERE id = 2")
    report = await _verify(chain)
    assert (report.ok, report.row) == (False, 2)


# --- hostile publisher -------------------------------------------------------------------------


async def test_redelivery_makes_no_second_row(store: Store) -> None:
    from stockade.audit import AuditWriter

    writer = AuditWriter(store)
    first = await writer.append(records(5))
    again = await writer.append(records(5) + records(5))
    assert len(first) == 5
    assert again == []


def test_session_id_of_10kb_rejected() -> None:
    event = ev.SessionStarted(
        at=datetime.now(UTC), session_id="s" * 10_000, username="u", workspace="w",
        client_ip="192.0.2.1",
    )  # fmt: skip
    with pytest.raises(InvalidInput):
        record_from_event("STOCKADE_AUDIT", 1, event.subject, event.to_bytes(), event.at)


def test_huge_reasons_list_rejected() -> None:
    event = ev.DecisionRecord(
        at=datetime.now(UTC), action="ssh.connect", resource={"kind": "workspace", "name": "w"},
        user="u", allow=False, reasons=["x" * 100] * 2000, obligations={}, count=1,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="exceeds"):
        record_from_event("STOCKADE_AUDIT", 1, event.subject, event.to_bytes(), event.at)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[1]", b'{"v": true}', b'{"v":1,"at":"x"}'])
def test_poison_message_rejected_cleanly(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        record_from_event("STOCKADE_AUDIT", 1, "stockade.unknown.thing", data, datetime.now(UTC))


def _exported(username: str) -> dict[str, object]:
    event = ev.AuthFailed(
        at=datetime.now(UTC), client_ip="192.0.2.1", client_port=1, username=username,
        method="password", reason="bad\x1b[2Jreason\nforged", gateway_id="gw",
    )  # fmt: skip
    record = record_from_event("STOCKADE_AUTH", 1, event.subject, event.to_bytes(), event.at)
    row = {f: getattr(record, f) for f in record.__slots__}  # type: ignore[attr-defined]
    return export_record({**row, "id": 1, "prev_hash": "0" * 64, "hash": "0" * 64})


def test_username_with_newline_and_escapes_cannot_forge_search_lines() -> None:
    """``audit search`` piped (and ``--follow``) prints one line per event: a username or reason
    chosen by an SSH client must not start a second line or drive the terminal."""
    line = _text(_exported("alice\n2  2026-01-01T00:00:00  auth.succeeded  root  allow\x1b[31m"))
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\r" not in line


async def test_user_filter_is_exact_not_a_like_pattern(store: Store, tmp_path: Path) -> None:
    await write_chain(store, tmp_path, 12)
    search = AuditSearch(store)
    for pattern in ("%", "_lice", "al%"):
        page = await search.search(AuditQuery.parse(user=pattern))
        assert page.events == []
    assert (await search.search(AuditQuery.parse(user="alice"))).events


# --- hostile searcher ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "1000000"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"since": "1000000000d"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
        ({"user": "a\nb"}, "user"),
        ({"limit": "1e3"}, "limit"),
        ({"where": "1=1"}, "where"),
    ],
)
async def test_hostile_search_parameters_name_the_field(
    store: Store, params: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await AuditSearch(store).search_params(params)
    assert raised.value.field == field


def test_huge_duration_is_one_clear_error() -> None:
    with pytest.raises(InvalidInput):
        AuditQuery.parse(since=f"{timedelta.max.days + 1}d")
