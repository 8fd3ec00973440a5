"""``stockade audit search|export|verify``: every option on SQLite and PostgreSQL (acceptance 5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from audit.samples import sample_event, stream_of
from sqlalchemy import text
from typer.testing import CliRunner

from stockade.audit import AuditWriter, HeadKey, HeadSigner, record_from_event
from stockade.cli import _common, app
from stockade.store import Store

NOW = datetime.now(UTC)
COUNT = 30


def _at(i: int) -> datetime:
    """Event i happened (COUNT - i) hours ago: 1 is the oldest, COUNT the newest."""
    return NOW - timedelta(hours=COUNT - i, minutes=1)


def _records(first: int, count: int) -> list:  # type: ignore[type-arg]
    out = []
    for i in range(first, first + count):
        event = sample_event(i, at=_at(i))
        out.append(
            record_from_event(stream_of(event), i, event.subject, event.to_bytes(), event.at)
        )
    return out


async def _populate(url: str, data: Path) -> None:
    store = Store(url)
    await store.migrate()
    key = HeadKey.load_or_create(data / "keys" / "audit_heads.pem")
    signer = HeadSigner(key, data / "audit" / "heads.jsonl", publish=None, every_rows=10,
                        every_seconds=3600)  # fmt: skip
    signer.add(await AuditWriter(store).append(_records(1, COUNT)))
    await signer.sign()
    await store.close()


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    data = tmp_path / "data"
    asyncio.run(_populate(database_url, data))
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(data))
    monkeypatch.setenv("STOCKADE_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield database_url
    _common.settings.cache_clear()
    structlog.reset_defaults()


runner = CliRunner()


def _search(*args: str) -> list[dict]:  # type: ignore[type-arg]
    result = runner.invoke(app, ["audit", "search", "--json", *args])
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    return page["events"]  # type: ignore[no-any-return]


def _ids(*args: str) -> list[int]:
    return [e["id"] for e in _search(*args)]


def _expected(predicate) -> list[int]:  # type: ignore[no-untyped-def]
    return [i for i in range(COUNT, 0, -1) if predicate(sample_event(i, at=_at(i)))]


def test_search_newest_first_and_table(env: str) -> None:
    assert _ids() == list(range(COUNT, 0, -1))
    table = runner.invoke(app, ["audit", "search"])
    assert table.exit_code == 0, table.output
    assert "auth.failed" in table.stdout
    assert "198.51.100." in table.stdout


def test_user(env: str) -> None:
    assert _ids("--user", "bob") == _expected(lambda e: getattr(e, "username", None) == "bob"
                                              or getattr(e, "user", None) == "bob")  # fmt: skip
    assert _ids("--user", "nobody") == []


def test_action_exact_and_prefix(env: str) -> None:
    assert _ids("--action", "ssh.connect") == _expected(lambda e: e.subject.endswith("decision"))
    assert _ids("--action", "auth.*") == _expected(lambda e: e.subject.startswith("stockade.auth."))
    assert _ids("--action", "file.upload") == _expected(lambda e: e.subject.endswith(".transfer"))


def test_decision(env: str) -> None:
    denied = _search("--decision", "deny")
    assert denied
    assert {e["decision"] for e in denied} == {"deny"}
    assert {e["action"] for e in denied} <= {"auth.failed", "ssh.connect"}
    allowed = _ids("--decision", "allow")
    assert set(allowed).isdisjoint(e["id"] for e in denied)


def test_source(env: str) -> None:
    found = _search("--source", "198.51.100.3")
    assert found
    assert {e["source_ip"] for e in found} == {"198.51.100.3"}


def test_session(env: str) -> None:
    events = _search("--session", "s-9")
    assert [(e["action"], e["id"]) for e in events] == [
        ("file.upload", 11),
        ("credential.get", 10),
        ("session.started", 9),
    ]


def _register_sessions(*ids: str) -> None:
    from stockade.cli._datadir import keyring_for
    from stockade.core import load_settings
    from stockade.identity import IdentityService

    cfg = load_settings()

    async def run() -> None:
        store = Store(cfg.database_url)
        await store.migrate()
        identity = IdentityService(store=store, settings=cfg.identity, keyring=keyring_for(cfg))
        try:
            await identity.add_user("alice")
            for sid in ids:
                await identity.start_session(
                    sid, username="alice", workspace="ws", client_ip="127.0.0.1", client_port=1
                )
        finally:
            await store.close()

    asyncio.run(run())


def test_session_by_unique_prefix(env: str) -> None:
    _register_sessions("s-9", "s-27")
    assert [e["id"] for e in _search("--session", "s-9")] == [11, 10, 9]  # exact
    by_prefix = _search("--session", "s-2")  # unique among identity's: s-27
    assert {e["session_id"] for e in by_prefix} == {"s-27"}
    result = runner.invoke(app, ["audit", "search", "--json", "--session", "s-"])
    assert result.exit_code == 2, result.output
    assert "s-9" in result.stderr
    assert "s-27" in result.stderr
    assert [e["id"] for e in _search("--session", "s-3")] != []  # unknown to identity: as given


def test_since_and_until(env: str) -> None:
    assert _ids("--since", "3h") == [30, 29, 28]
    assert _ids("--until", "27h") == [3, 2, 1]
    stamp = _at(10).isoformat()
    assert _ids("--since", stamp, "--until", _at(12).isoformat()) == [12, 11, 10]
    naive = (_at(29) + timedelta(seconds=1)).replace(tzinfo=None, microsecond=0).isoformat()
    assert _ids("--since", naive) == [30]


def test_pagination(env: str) -> None:
    result = runner.invoke(app, ["audit", "search", "--json", "--limit", "4"])
    page = json.loads(result.stdout)
    assert [e["id"] for e in page["events"]] == [30, 29, 28, 27]
    assert page["next_before"] == 27
    assert _ids("--limit", "4", "--before", "27") == [26, 25, 24, 23]
    table = runner.invoke(app, ["audit", "search", "--limit", "4"])
    assert "--before 27" in table.stderr


def test_filters_combine(env: str) -> None:
    events = _search("--user", "alice", "--action", "auth.*", "--since", "1d")
    assert events
    assert all(e["user"] == "alice" and e["action"].startswith("auth.") for e in events)


def test_export_jsonl_oldest_first(env: str) -> None:
    result = runner.invoke(app, ["audit", "export", "--since", "7d"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["id"] for e in lines] == list(range(1, COUNT + 1))
    assert {e["schema"] for e in lines} == {"stockade.audit/1"}
    assert lines[0]["event"]["username"] == "bob"
    recent = runner.invoke(app, ["audit", "export", "--since", "2h", "--user", "alice"])
    assert [json.loads(x)["id"] for x in recent.stdout.splitlines()] == [30]


BAD = [
    (["--since", "yesterday"], "--since"),
    (["--until", "2026-13-45"], "--until"),
    (["--source", "300.1.2.3"], "--source"),
    (["--source", "10.0.0.0/8"], "--source"),
    (["--decision", "maybe"], "--decision"),
    (["--since", "1h", "--until", "2h"], "--until"),
    (["--user", "a\nb"], "--user"),
    (["--session", "x" * 65], "--session"),
]
PAGING = [
    (["--limit", "0"], "--limit"),
    (["--limit", "many"], "--limit"),
    (["--before", "x"], "--before"),
]


@pytest.mark.parametrize(
    ("command", "args", "option"),
    [("search", a, o) for a, o in BAD + PAGING] + [("export", a, o) for a, o in BAD],
)
def test_bad_input_one_line_exit_2(env: str, command: str, args: list[str], option: str) -> None:
    result = runner.invoke(app, ["audit", command, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {option}:"), lines[0]
    assert result.stdout == ""


def test_verify_ok_then_tampered(env: str) -> None:
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert f"ok: {COUNT} rows chained" in ok.stdout
    as_json = json.loads(runner.invoke(app, ["audit", "verify", "--json"]).stdout)
    assert (as_json["ok"], as_json["rows"], as_json["signed_through"]) == (True, COUNT, COUNT)

    async def tamper() -> None:
        store = Store(env)
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE audit_events SET \"user\" = 'eve' WHERE id = 7"))
        await store.close()

    asyncio.run(tamper())
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "error: audit store tampered: row 7 altered: its content differs from the signed record"
    )
    bad_json = runner.invoke(app, ["audit", "verify", "--json"])
    assert bad_json.exit_code == 1
    assert json.loads(bad_json.stdout)["row"] == 7


def test_verify_without_a_key_is_bad_input(env: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "keys" / "audit_heads.pem.pub").unlink()
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 2
    assert "audit public key not found" in result.stderr


def test_follow_prints_new_events(env: str, tmp_path: Path) -> None:
    stockade = Path(sys.executable).with_name("stockade")
    proc = subprocess.Popen(
        [str(stockade), "audit", "search", "--follow", "--json", "--user", "carol",
         "--since", "2h"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline())
        assert (first["id"], first["user"]) == (29, "carol")  # the current page, oldest first

        async def more() -> None:
            store = Store(env)
            await AuditWriter(store).append(_records(COUNT + 1, 6))  # 31..36
            await store.close()

        time.sleep(0.3)
        asyncio.run(more())
        followed = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["id"], e["user"]) for e in followed] == [(32, "carol"), (35, "carol")]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
            assert proc.stderr is not None
            proc.stderr.close()
    assert proc.returncode == 0
