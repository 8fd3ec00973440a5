"""The Store: URL mapping, transactions, SQLite pragmas, error mapping at the boundary."""

from __future__ import annotations

import asyncio
import gc
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from stockade.core.errors import AlreadyExists, InvalidInput, StoreUnavailable
from stockade.store import SessionRow, SshKeyRow, Store, UserRow, async_url
from tests.conftest import free_port


def _user(name: str) -> UserRow:
    return UserRow(name=name, display_name="", email="", roles=["dev"], groups=[], disabled=False)


def _key(fingerprint: str) -> SshKeyRow:
    return SshKeyRow(
        fingerprint=fingerprint, key_type="ssh-ed25519", bits=256, comment="", public_key="x"
    )


def test_sqlite_url_maps_to_aiosqlite() -> None:
    url, args = async_url("sqlite:////tmp/x.db")
    assert url.drivername == "sqlite+aiosqlite"
    assert url.database == "/tmp/x.db"
    assert args == {}


def test_postgres_url_maps_to_asyncpg_with_options_as_server_settings() -> None:
    url, args = async_url(
        "postgresql://u@h:5432/db?options=-csearch_path%3Dt_1%20-c%20work_mem=4MB"
    )
    assert url.drivername == "postgresql+asyncpg"
    assert "options" not in url.query
    assert args == {"server_settings": {"search_path": "t_1", "work_mem": "4MB"}}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://h/db", "unsupported database"),
        ("sqlite://", "needs a file path"),
        ("not a url", "not a database URL"),
        ("postgresql://h/db?options=search_path%3Dx", "expected -c name=value"),
    ],
)
def test_bad_urls_are_invalid_input(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        Store(url)


def test_missing_sqlite_directory_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")


async def test_unreachable_postgres_is_store_unavailable_with_a_fix() -> None:
    store = Store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(StoreUnavailable, match="check that PostgreSQL is running") as info:
        await store.migrate()
    assert info.value.__cause__ is not None
    await store.close()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    async with store.transaction(readonly=True) as session:
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await session.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
    await store.close()


async def test_commit_and_rollback(store: Store) -> None:
    async with store.transaction() as session:
        session.add(_user("alice"))

    async def add_bob_then_fail() -> None:
        async with store.transaction() as session:
            session.add(_user("bob"))
            await session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_bob_then_fail()
    async with store.transaction(readonly=True) as session:
        names = (await session.scalars(select(UserRow.name))).all()
    assert names == ["alice"]


async def test_unique_violation_is_already_exists(store: Store) -> None:
    async with store.transaction() as session:
        session.add(_user("alice"))
    with pytest.raises(AlreadyExists, match="user") as info:
        async with store.transaction() as session:
            session.add(_user("alice"))
    assert info.value.kind == "user"
    if store.dialect == "postgresql":  # PostgreSQL reports the duplicate value too
        assert info.value.name == "alice"


async def test_duplicate_fingerprint_is_already_exists(store: Store) -> None:
    async with store.transaction() as session:
        alice, bob = _user("alice"), _user("bob")
        alice.keys.append(_key("SHA256:same"))
        session.add_all([alice, bob])

    async def give_bob_the_same_key() -> None:
        async with store.transaction() as session:
            row = await session.scalar(select(UserRow).where(UserRow.name == "bob"))
            assert row is not None
            session.add(SshKeyRow(user_id=row.id, **_key_fields("SHA256:same")))

    with pytest.raises(AlreadyExists) as info:
        await give_bob_the_same_key()
    assert info.value.kind == "ssh key"


def _key_fields(fingerprint: str) -> dict[str, object]:
    return {
        "fingerprint": fingerprint,
        "key_type": "ssh-ed25519",
        "bits": 256,
        "comment": "",
        "public_key": "x",
    }


async def test_deleting_a_user_cascades_to_keys_in_the_database(store: Store) -> None:
    async with store.transaction() as session:
        alice = _user("alice")
        alice.keys.append(_key("SHA256:a"))
        session.add(alice)
    async with store.transaction() as session:
        # Core DELETE: the database's ON DELETE CASCADE, not the ORM, removes the key.
        await session.execute(UserRow.__table__.delete())
    async with store.transaction(readonly=True) as session:
        assert await session.scalar(select(func.count()).select_from(SshKeyRow)) == 0


async def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(InvalidInput, match="constraint violated"):
        async with store.transaction() as session:
            session.add(SshKeyRow(user_id=12345, **_key_fields("SHA256:orphan")))


async def test_timestamps_come_back_timezone_aware_utc(store: Store) -> None:
    started = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with store.transaction() as session:
        session.add(
            SessionRow(
                id="s1",
                username="alice",
                workspace="w",
                client_ip="::1",
                client_port=1,
                started_at=started,
            )
        )
    async with store.transaction(readonly=True) as session:
        row = await session.get(SessionRow, "s1")
        assert row is not None
        assert row.started_at == started
        assert row.started_at.tzinfo is not None
        assert row.bytes_in == 0


async def test_concurrent_writers_do_not_deadlock(store: Store) -> None:
    async with store.transaction() as session:
        session.add(_user("counter"))

    async def bump() -> None:
        async with store.transaction() as session:
            row = await session.scalar(select(UserRow).where(UserRow.name == "counter"))
            assert row is not None
            await asyncio.sleep(0)
            row.groups = [*row.groups, "g"]

    await asyncio.gather(*(bump() for _ in range(10)))
    async with store.transaction(readonly=True) as session:
        row = await session.scalar(select(UserRow).where(UserRow.name == "counter"))
        assert row is not None
        if store.dialect == "sqlite":  # BEGIN IMMEDIATE serializes writers: no lost update
            assert len(row.groups) == 10
        else:
            assert 1 <= len(row.groups) <= 10


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        async with store.transaction():
            pass


def test_repr_hides_secrets_and_passwords() -> None:
    row = UserRow(name="alice", password_hash="$argon2id$v=19$secret", totp_secret="v1:xyz")
    shown = repr(row)
    assert "argon2id" not in shown
    assert "xyz" not in shown
    assert "[secure]" in shown
    store = Store("postgresql://admin:hunter2@db.example/stockade")
    assert "hunter2" not in repr(store)


async def test_close_waits_for_running_transactions_and_leaks_no_connection(
    store: Store,
) -> None:
    """A transaction that began before ``close`` must not open a connection on the disposed
    engine: that connection would belong to a fresh pool nobody closes (seen as an aiosqlite
    ResourceWarning in CI, when a gateway's last session ended during shutdown)."""
    finished: list[str] = []

    async def write(n: int) -> None:
        try:
            async with store.transaction() as session:
                await asyncio.sleep(0.01)
                await session.execute(text("SELECT 1"))
            finished.append("ok")
        except StoreUnavailable:
            finished.append("closed")

    tasks = [asyncio.create_task(write(n)) for n in range(20)]
    await asyncio.sleep(0.005)
    await store.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.gather(*tasks)
        gc.collect()
    assert len(finished) == 20
    assert "ok" in finished
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    with pytest.raises(StoreUnavailable):
        async with store.transaction():
            pass


async def test_fetch_converts_like_the_orm(store: Store) -> None:
    """A prepared statement on the driver reads the values the ORM reads: aware UTC datetimes,
    JSON lists, booleans (SQLite stores 0/1 and text), NULLs."""
    from sqlalchemy import bindparam

    async with store.transaction() as session:
        user = _user("alice")
        user.roles, user.groups, user.password_hash = ["dev", "ops"], ["g"], "$argon2id$x"
        user.keys.append(_key("SHA256:a"))
        session.add(user)
    async with store.transaction(readonly=True) as session:
        orm = await session.scalar(select(UserRow).where(UserRow.name == "alice"))
        assert orm is not None
        expected = (orm.name, orm.roles, orm.groups, orm.disabled, orm.created_at, None)
    prepared = store.prepare(
        select(UserRow.name, UserRow.roles, UserRow.groups, UserRow.disabled, UserRow.created_at,
               UserRow.totp_last_step)
        .join(SshKeyRow, SshKeyRow.user_id == UserRow.id)
        .where(SshKeyRow.fingerprint == bindparam("fp"), UserRow.name == bindparam("name"))
    )  # fmt: skip
    assert prepared.binds == ("fp", "name")
    rows = await store.fetch(prepared, {"name": "alice", "fp": "SHA256:a"})
    assert rows == [expected]
    assert rows[0][4].tzinfo is UTC
    assert rows[0][3] is False
    assert await store.fetch(prepared, {"name": "alice", "fp": "SHA256:b"}) == []
    assert await store.fetch(prepared, {"name": "x' OR '1'='1", "fp": "SHA256:a"}) == []
    # many at once share the reader (one aiosqlite connection, or the asyncpg pool)
    many = await asyncio.gather(
        *(store.fetch(prepared, {"name": "alice", "fp": "SHA256:a"}) for _ in range(50))
    )
    assert all(r == [expected] for r in many)


async def test_fetch_reader_is_read_only(store: Store) -> None:
    from sqlalchemy import bindparam, literal_column

    # PostgreSQL: a SELECT that writes (nextval) is refused; SQLite: the reader is query_only
    if store.dialect == "postgresql":
        statement = select(literal_column("1")).where(
            literal_column("pg_catalog.set_config('x.y', 'z', false)") == bindparam("v")
        )
        assert await store.fetch(store.prepare(statement), {"v": "z"}) == [(1,)]
        writer = select(literal_column("1")).select_from(
            text("(SELECT nextval(pg_catalog.pg_get_serial_sequence('users', 'id'))) AS s")
        )
        with pytest.raises(StoreUnavailable, match="read-only"):
            await store.fetch(store.prepare(writer), {})
    else:
        await store.fetch(store.prepare(select(literal_column("1"))), {})
        import sqlite3

        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # PRAGMA query_only
            await store._fast.execute("INSERT INTO users (name) VALUES ('x')")


async def test_fetch_after_close_and_unreachable(tmp_path: Path) -> None:
    from sqlalchemy import literal_column

    store = Store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    prepared = store.prepare(select(literal_column("1")))
    with pytest.raises(StoreUnavailable, match="check that PostgreSQL is running"):
        await store.fetch(prepared, {})
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.fetch(prepared, {})
    lite = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="another store"):
        await lite.fetch(prepared, {})
    await lite.close()


async def test_fetch_replaces_a_connection_the_server_closed(pg_schema_url: str) -> None:
    """A PostgreSQL reader connection killed while idle (a server restart, a terminated
    backend) costs no failed lookup: the next fetch replaces it once."""
    from sqlalchemy import literal_column

    store = Store(pg_schema_url)
    try:
        prepared = store.prepare(select(literal_column("1")))
        assert await store.fetch(prepared, {}) == [(1,)]
        idle = store._fast._idle
        assert len(idle) == 1
        pid = idle[0].get_server_pid()
        async with store.transaction() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(100):  # the server closes it asynchronously
            if idle[0].is_closed():
                break
            await asyncio.sleep(0.02)
        assert await store.fetch(prepared, {}) == [(1,)]
        assert idle[0].get_server_pid() != pid
    finally:
        await store.close()


async def test_a_fetch_cancelled_while_the_reader_opens_leaks_no_connection(
    tmp_path: Path,
) -> None:
    """A login cancelled (the gateway stopping) during the store's first fetch: the reader's
    opening goes on in its own task and ``close()`` closes it (no connection left to the
    garbage collector, whose ResourceWarning fails the test)."""
    import gc

    from sqlalchemy import literal_column

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    prepared = store.prepare(select(literal_column("1")))
    task = asyncio.ensure_future(store.fetch(prepared, {}))
    await asyncio.sleep(0)  # inside the reader's opening
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()
    assert store._fast is None
    gc.collect()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.fetch(prepared, {})
