"""The :class:`Store`: one async engine, transactions, migrations, and the error boundary.

Errors of SQLAlchemy and the drivers never leave this module unmapped::

    unique constraint violated        -> AlreadyExists (kind from the table, value when known)
    other integrity violation         -> InvalidInput
    connection / operational failure  -> StoreUnavailable (says how to fix it)

The questions on the login path (a key lookup, a token check) skip the ORM: :meth:`Store.prepare`
compiles a Core ``select()`` once for the store's dialect, and :meth:`Store.fetch` runs it as one
statement straight on the driver, outside any explicit transaction (a single SELECT sees one
consistent snapshot): a dedicated read-only aiosqlite connection on SQLite, a few read-only
asyncpg connections on PostgreSQL whose statement caches make it a prepared statement after the
first call. Column
values get the same conversions the ORM applies (the column types' result processors).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Select, event, exc, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from stockade.core.errors import AlreadyExists, InvalidInput, StockadeError, StoreUnavailable

__all__ = ["Prepared", "Store", "async_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_SQLITE_BUSY_TIMEOUT_MS = 5000
#: Arbitrary constant: the PostgreSQL advisory lock serializing concurrent ``migrate()`` calls.
_MIGRATION_LOCK = 0x5707_CADE
#: What a duplicate in each unique column is called in error messages.
_UNIQUE_KINDS = {
    "users.name": "user",
    "ssh_keys.fingerprint": "ssh key",
    "workspaces.name": "workspace",
    "sessions.id": "session",
}
_PG_CONSTRAINT = re.compile(r"^(?:uq|pk)_([a-z_]+?)_(name|fingerprint)$|^pk_(sessions)$")
_PG_DETAIL_VALUE = re.compile(r"Key \([^)]*\)=\((.*)\) already exists")
#: PostgreSQL connections :meth:`Store.fetch` may open (the ORM's pool is separate).
_FAST_POOL_SIZE = 4


@dataclass(frozen=True, slots=True)
class Prepared:
    """A SELECT compiled for one store's dialect (see :meth:`Store.prepare`)."""

    sql: str
    binds: tuple[str, ...]
    """The bind parameter names, in the order :meth:`Store.fetch` takes their values."""
    convert: tuple[Callable[[Any], Any] | None, ...]
    """Per column, the conversion the ORM would apply to the driver's value (None: as is)."""
    dialect: str
    converted: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
    """``(column index, conversion)`` of the columns that have one (the hot loop's list)."""

    def __repr__(self) -> str:
        return f"Prepared({self.sql!r})"


_CLOSE_DRAIN = 5.0
"""Seconds :meth:`Store.close` waits for running transactions."""


def async_url(url: str) -> tuple[URL, dict[str, Any]]:
    """Map a user-facing database URL to its async driver and the driver's connect arguments.

    ``sqlite:///path`` becomes ``sqlite+aiosqlite``; ``postgresql://`` (or ``postgres://``)
    becomes ``postgresql+asyncpg``, and a libpq ``options=-c name=value ...`` query parameter
    becomes asyncpg ``server_settings`` (so ``options=-csearch_path%3Dschema`` selects a schema).
    Raises :class:`InvalidInput` for anything else.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as err:
        raise InvalidInput("store.url", f"not a database URL: {err}") from err
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidInput("store.url", "SQLite needs a file path: sqlite:////abs/path.db")
        return parsed.set(drivername="sqlite+aiosqlite"), connect_args
    if backend in ("postgresql", "postgres"):
        query = dict(parsed.query)
        options = query.pop("options", None)
        if options is not None:
            connect_args["server_settings"] = _parse_pg_options(str(options))
        return parsed.set(drivername="postgresql+asyncpg", query=query), connect_args
    raise InvalidInput(
        "store.url", f"unsupported database {backend!r}; use sqlite:///PATH or postgresql://..."
    )


def _parse_pg_options(options: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    words = shlex.split(options)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            index += 1
            word = "-c" + words[index]
        if not word.startswith("-c") or "=" not in word:
            raise InvalidInput("store.url", f"options: expected -c name=value, got {word!r}")
        name, _, value = word[2:].partition("=")
        settings[name.strip().replace("-", "_")] = value
        index += 1
    return settings


def _unique_kind(err: exc.IntegrityError) -> tuple[str, str] | None:
    """``(kind, value)`` when ``err`` is a unique violation we can name, else None."""
    orig = err.orig
    message = str(orig)
    if "UNIQUE constraint failed:" in message:  # SQLite: "UNIQUE constraint failed: users.name"
        column = message.split("UNIQUE constraint failed:", 1)[1].split(",")[0].strip()
        return _UNIQUE_KINDS.get(column, column), ""
    cause = getattr(orig, "__cause__", None)
    if getattr(cause, "sqlstate", None) == "23505":  # asyncpg UniqueViolationError
        constraint = str(getattr(cause, "constraint_name", "") or "")
        match = _PG_CONSTRAINT.match(constraint)
        column = ""
        if match:
            column = f"{match.group(1)}.{match.group(2)}" if match.group(1) else "sessions.id"
        detail = _PG_DETAIL_VALUE.search(str(getattr(cause, "detail", "") or ""))
        return _UNIQUE_KINDS.get(column, constraint or "record"), detail.group(1) if detail else ""
    return None


class Store:
    """The database: SQLite (a file, WAL mode) or PostgreSQL (asyncpg).

    Construction only validates the URL; the first transaction connects. Every database error
    raised inside :meth:`transaction` or :meth:`migrate` reaches the caller as a
    :class:`~stockade.core.errors.StockadeError` (see the module docstring).
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        sa_url, connect_args = async_url(url)
        self._url = sa_url
        self._dialect: str = sa_url.get_backend_name()
        self._closed = False
        if sa_url.get_backend_name() == "sqlite":
            database = Path(str(sa_url.database))
            if not database.parent.is_dir():
                raise StoreUnavailable(
                    f"SQLite database directory {database.parent} does not exist; "
                    "create the data dir or set STOCKADE_DATABASE_URL"
                )
        self._engine: AsyncEngine = create_async_engine(
            sa_url, echo=echo, connect_args=connect_args, pool_pre_ping=False
        )
        if self.dialect == "sqlite":
            _configure_sqlite(self._engine)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        self._write_lock: asyncio.Lock | None = None
        """SQLite takes one writer at a time: this process's writers queue here instead of
        failing with "database is locked" (PostgreSQL needs no such lock)."""
        self._readers = async_sessionmaker(
            self._engine.execution_options(stockade_readonly=True), expire_on_commit=False
        )
        self._active = 0
        self._idle: asyncio.Event | None = None
        """Set while no transaction runs: :meth:`close` waits for it, so a transaction that
        started before the close cannot open a connection on the disposed engine (a new pool
        that nobody would ever close)."""
        self._connect_args = connect_args
        self._fast: Any = None
        """The driver-level reader of :meth:`fetch` (aiosqlite connection or _PgReaders)."""
        self._fast_task: asyncio.Task[Any] | None = None
        """Opening the reader: its own task, so a caller cancelled meanwhile leaves no
        connection half-open (the task finishes it, and ``close()`` closes it)."""

    def __repr__(self) -> str:
        return f"Store({self._url.render_as_string(hide_password=True)!r})"

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for bulk work (benchmarks, migrations tests)."""
        return self._engine

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block exits normally, rolled back on any error.

        ``readonly=True`` starts a deferred transaction on SQLite (no write lock); writes in it
        may fail with "database is locked". On PostgreSQL both are READ COMMITTED.
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        factory = self._readers if readonly else self._sessions
        lock: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if not readonly and self.dialect == "sqlite":
            if self._write_lock is None:
                self._write_lock = asyncio.Lock()
            lock = self._write_lock
        self._enter()
        try:
            async with lock:
                if self._closed:
                    raise StoreUnavailable("the store is closed")
                async with factory() as session, session.begin():
                    yield session
        except StockadeError:
            raise
        except exc.IntegrityError as err:
            named = _unique_kind(err)
            if named is not None:
                kind, value = named
                raise AlreadyExists(kind, value or "(concurrent insert)") from err
            raise InvalidInput("database", f"constraint violated: {err.orig}") from err
        except (exc.SQLAlchemyError, OSError) as err:
            raise self._unavailable(err) from err
        finally:
            self._leave()

    def _enter(self) -> None:
        self._active += 1
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0 and self._idle is not None:
            self._idle.set()

    def prepare(self, statement: Select[*tuple[Any, ...]]) -> Prepared:
        """Compile ``statement`` (a Core ``select()`` with named ``bindparam``s, each used once)
        for this store's dialect, for :meth:`fetch`. Compile once, at construction."""
        dialect = self._engine.dialect
        compiled = statement.compile(dialect=dialect)
        binds = tuple(compiled.positiontup or ())
        if len(set(binds)) != len(binds):
            raise ValueError("each bind parameter of a prepared statement must be used once")
        convert = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        )
        converted = tuple((i, fn) for i, fn in enumerate(convert) if fn is not None)
        return Prepared(str(compiled), binds, convert, self.dialect, converted)

    async def fetch(self, prepared: Prepared, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of ``prepared`` with its bind parameters from ``params`` (plain str, int or
        None), run as one statement on the driver, read-only. Errors as :meth:`transaction`."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if prepared.dialect != self.dialect:
            raise ValueError("statement prepared for another store")
        values = tuple(params[name] for name in prepared.binds)
        try:
            reader = self._fast or await self._open_fast()
            if self.dialect == "sqlite":
                rows: Any = await reader.execute_fetchall(prepared.sql, values)
            else:
                rows = await reader.fetch(prepared.sql, *values)
        except StockadeError:
            raise
        except (sqlite3.Error, OSError, exc.SQLAlchemyError) as err:
            raise self._unavailable(err) from err
        except Exception as err:  # asyncpg's errors share no base with the others
            if type(err).__module__.startswith("asyncpg"):
                raise self._unavailable(err) from err
            raise
        converted = prepared.converted
        if not converted:
            return [tuple(row) for row in rows]
        out: list[tuple[Any, ...]] = []
        for row in rows:
            cells = list(row)
            for index, fn in converted:
                cell = cells[index]
                if cell is not None:
                    cells[index] = fn(cell)
            out.append(tuple(cells))
        return out

    async def _open_fast(self) -> Any:
        task = self._fast_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._fast_task = asyncio.ensure_future(self._connect_fast())
            task.add_done_callback(_retrieved)
        return await asyncio.shield(task)

    async def _connect_fast(self) -> Any:
        reader: Any
        if self.dialect == "sqlite":
            import aiosqlite

            reader = await aiosqlite.connect(str(self._url.database), isolation_level=None)
            try:
                await reader.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
                await reader.execute("PRAGMA query_only = ON")
            except BaseException:
                await reader.close()
                raise
        else:
            import asyncpg

            args, kwargs = self._engine.dialect.create_connect_args(self._url)
            kwargs.update(self._connect_args)
            settings = dict(kwargs.pop("server_settings", None) or {})
            settings.setdefault("default_transaction_read_only", "on")

            async def connect() -> Any:
                return await asyncpg.connect(*args, server_settings=settings, **kwargs)

            reader = _PgReaders(connect, _FAST_POOL_SIZE)
        if self._closed:
            await reader.close()
            raise StoreUnavailable("the store is closed")
        self._fast = reader
        return reader

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe to run concurrently)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._engine.begin() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
                await conn.run_sync(_upgrade)
        except StockadeError:
            raise
        except (exc.SQLAlchemyError, OSError) as err:
            raise self._unavailable(err) from err

    async def close(self, *, drain: float = _CLOSE_DRAIN) -> None:
        """Close every pooled connection; later transactions raise StoreUnavailable.

        Transactions already running get ``drain`` seconds to finish first (those still
        waiting for the SQLite write lock give up at once).
        """
        self._closed = True
        if self._active and self._idle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain)
        opening = self._fast_task
        if opening is not None and not opening.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(opening), 10)
        fast, self._fast = self._fast, None
        if fast is not None:
            with contextlib.suppress(Exception):
                await fast.close()
        await self._engine.dispose()

    def _unavailable(self, err: BaseException) -> StoreUnavailable:
        where = self._url.render_as_string(hide_password=True)
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
        if self.dialect == "postgresql":
            fix = (
                "check that PostgreSQL is running and reachable, the database exists and the "
                "credentials are right (STOCKADE_DATABASE_URL)"
            )
        else:
            fix = "check that the data dir is writable and the file is not corrupt"
        return StoreUnavailable(f"database {where} failed: {reason}; {fix}")


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark the opening task's failure as seen (its awaiters, if any, got it)."""
    if not task.cancelled():
        task.exception()


class _PgReaders:
    """Up to ``size`` asyncpg connections for :meth:`Store.fetch`, the idle ones on a stack: an
    uncontended fetch takes one without waiting (asyncpg's Pool spends a reset and its own
    bookkeeping on every use). Each connection's statement cache prepares a statement once.
    A connection that failed is closed, and a reused one that turns out dead (the server
    restarted) is replaced once."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)
        self._open: set[Any] = set()
        self._closed = False

    async def fetch(self, sql: str, *values: Any) -> list[Any]:
        async with self._slots:
            for attempt in (1, 2):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._new()
                try:
                    rows: list[Any] = await conn.fetch(sql, *values)
                except BaseException:
                    self._open.discard(conn)
                    dead = conn.is_closed()
                    conn.terminate()
                    if reused and dead and attempt == 1:
                        continue
                    raise
                if self._closed:
                    self._open.discard(conn)
                    conn.terminate()
                else:
                    self._idle.append(conn)
                return rows
        raise AssertionError("unreachable")

    async def _new(self) -> Any:
        conn = await self._connect()
        try:
            await _json_codec(conn)
        except BaseException:
            conn.terminate()
            raise
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
        self._open.clear()


async def _json_codec(connection: Any) -> None:
    """JSON columns decoded as SQLAlchemy's asyncpg dialect decodes them (its JSON type has no
    result processor of its own: the codec does it)."""
    await connection.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, busy timeout, and transactions that really begin at BEGIN.

    pysqlite's own transaction handling is switched off so SQLAlchemy's "begin" emits the
    BEGIN: IMMEDIATE for writers (no lock-upgrade deadlock), deferred for readers.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("stockade_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _upgrade(connection: Connection) -> None:
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
