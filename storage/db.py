"""Engine and session factory for SQLite (default) and PostgreSQL, chosen by the database URL."""

from __future__ import annotations

import weakref
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, bindparam, event, exc, func, literal_column, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

from storage import sqlite_driver
from storage.wal import FALLBACK_PAGES, Checkpointer

SessionFactory = async_sessionmaker[AsyncSession]

# Execution options for a transaction that only reads, in one statement: on SQLite it takes no lock and costs
# one trip to aiosqlite's thread instead of four (BEGIN IMMEDIATE, the read, COMMIT, the pool's rollback); on
# PostgreSQL it runs in autocommit, one round trip instead of three (BEGIN, the read, COMMIT). The statement sees
# the database as it is at that moment. Never write in one. :func:`read_alone` runs one.
AUTOCOMMIT_READ = {"autocommit_read": True}

PG_CONNECTIONS = 15  # a process's connections to PostgreSQL, at most and kept


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        # As many connections as SQLAlchemy's default allows at once (5 kept, 10 more in a burst), all kept: a burst
        # of updates closed its extra connections as they came back and opened new ones for the next, each a new
        # server process that prepares every statement again (139 connections opened for 500 report wizards of
        # bench/scale.py, 15 now).
        kwargs = {"pool_size": PG_CONNECTIONS, "max_overflow": 0, **kwargs}
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "set_connection_execution_options", _autocommit_read)
        event.listen(engine.sync_engine.pool, "checkout", _ping)
        return engine

    checkpointer = None
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite has one writer. One pooled connection makes every transaction queue in asyncio instead of
        # spinning in SQLite's busy handler. (An in-memory database has a single connection anyway.)
        kwargs = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60, **kwargs}
        # The log is copied into the database file by a thread, not at the end of a commit (storage/wal.py).
        checkpointer = Checkpointer(parsed.database)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername=sqlite_driver.DRIVER)  # aiosqlite, one thread hop per statement
    engine = create_async_engine(parsed, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # Each commit is on disk before it returns (the log synced: 0.3-1 ms here). With NORMAL a power cut lost
        # the commits since the last checkpoint: a filed report its resident was told about, or updates recorded
        # in the inbox and already confirmed to Telegram, which does not send them again.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        if checkpointer is not None:
            cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
        cursor.close()
        if checkpointer is not None:
            checkpointer.open()

    if checkpointer is not None:
        _checkpointers[engine.sync_engine] = checkpointer
        event.listen(engine.sync_engine, "commit", lambda _connection: checkpointer.committed())
        event.listen(engine.sync_engine.pool, "close", lambda _dbapi, _record: checkpointer.close())
        event.listen(engine.sync_engine.pool, "close_detached", lambda _dbapi: checkpointer.close())

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("autocommit_read"):
            return
        # Take the write lock up front, so a transaction that reads and then writes can never fail
        # half-way with "database is locked" when another connection (a CLI import) writes meanwhile.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_checkpointers: weakref.WeakKeyDictionary[Engine, Checkpointer] = weakref.WeakKeyDictionary()


def _autocommit_read(_connection: Any, options: dict[str, Any]) -> None:
    """AUTOCOMMIT_READ, outside SQLite: the connection's isolation level for this transaction only (SQLAlchemy
    puts it back when the connection returns to the pool)."""
    if options.get("autocommit_read"):
        options["isolation_level"] = "AUTOCOMMIT"


def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Whether a pooled PostgreSQL connection still answers, before it is handed out (a restarted server, a dropped
    network). SQLAlchemy's own ``pool_pre_ping`` asks asyncpg in three round trips (BEGIN, the query, ROLLBACK), for
    every checkout: on top of an update's one or two statements, most of its trips. One query by the simple
    protocol, outside any transaction, tells as much, in one. A connection that does not answer is replaced: the
    pool retries the checkout with a new one (``DisconnectionError``), as after a failed pre-ping."""
    try:
        dbapi_connection.run_async(lambda driver: driver.execute("SELECT 1"))
    except Exception as error:
        raise exc.DisconnectionError(f"the pooled connection did not answer: {error}") from error


def wal_checkpointer(engine: AsyncEngine) -> Checkpointer | None:
    """The thread that checkpoints an SQLite file database's log (storage/wal.py); None for anything else."""
    return _checkpointers.get(engine.sync_engine)


# Tables with an index that has no row in sqlite_stat1: never analysed, or a migration just added the index.
# ANALYZE writes no row for an empty table or an empty partial index either: the first are left out below,
# the second here.
_UNANALYSED = (
    "SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'index' AND tbl_name NOT LIKE 'sqlite_%'"
    " AND (sql IS NULL OR sql NOT LIKE '% WHERE %')"
    " AND name NOT IN (SELECT idx FROM sqlite_stat1 WHERE idx IS NOT NULL)"
)


async def refresh_statistics(engine: AsyncEngine, *, at_start: bool = False) -> None:
    """Keep SQLite's query planner statistics current, so its plans do not depend on luck.

    Without them SQLite guesses, and a guess once read a million tickets through the topic index for
    "topic_id IS NULL". At start, a database whose indexes were never analysed (a new one, or after a
    migration added indexes) is analysed in full: seconds for a million tickets, once. Otherwise, and then
    hourly (scheduler), ``PRAGMA optimize`` analyses only tables whose statistics the planner used and that
    have grown or shrunk a lot since: usually nothing. PostgreSQL's autovacuum keeps its own statistics.
    """
    if engine.dialect.name != "sqlite":
        return
    async with engine.begin() as conn:
        if at_start and await _unanalysed(conn):
            await conn.exec_driver_sql("ANALYZE")
        else:
            await conn.exec_driver_sql("PRAGMA optimize")


async def _unanalysed(conn: AsyncConnection) -> bool:
    """Whether a table with rows has an index the planner has no statistics for."""
    if (await conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first() is None:
        return True
    for table in (await conn.exec_driver_sql(_UNANALYSED)).scalars():
        if (await conn.exec_driver_sql(f'SELECT 1 FROM "{table}" LIMIT 1')).first() is not None:
            return True
    return False


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    # Objects stay readable after commit: handlers render what the domain just changed.
    return async_sessionmaker(engine, expire_on_commit=False)


# --- per-update hooks on a session ------------------------------------------------------------------------

_HOOKS = "update_hooks"
_READING_ALONE = "reading_alone"


class SessionHooks:
    """What one update's middleware does at its session's commits (the wizard state's write-along, the inbox's
    "handled"). Added to a session's ``info`` (:func:`add_hooks`); the listeners below, registered once for
    every session, call them in the order they were added. Listening on each update's session instead cost
    more than the rest of a wizard step's bookkeeping (bench/intake.py)."""

    def wrote(self) -> None:
        """The session flushed, or executed an INSERT, UPDATE or DELETE."""

    def before_commit(self, session: Session) -> None:
        pass

    def after_commit(self) -> None:
        pass

    def after_rollback(self) -> None:
        pass


def add_hooks(session: AsyncSession, hooks: SessionHooks) -> None:
    session.sync_session.info.setdefault(_HOOKS, []).append(hooks)


def remove_hooks(session: AsyncSession, hooks: SessionHooks) -> None:
    listed: list[SessionHooks] = session.sync_session.info.get(_HOOKS, [])
    if hooks in listed:
        listed.remove(hooks)


def execute_pipelined(session: Session, statement: Any, params: Any) -> None:
    """A write whose outcome (rows, row count) nobody reads, executed now, or on SQLite sent with the next trip to
    aiosqlite's thread, in order (storage/sqlite_driver.py): with the next statement, or the COMMIT when it is a
    commit hook's; elsewhere, after :func:`hold_writes`, sent with the others just before the COMMIT. What goes wrong
    in it is raised there. Counts as a change for the hooks."""
    connection = session.connection()
    dbapi_connection = connection.connection.dbapi_connection
    held: list[tuple[Any, Any]] | None = session.info.get(_HELD)
    if isinstance(dbapi_connection, sqlite_driver.OneTripConnection):
        with dbapi_connection.pipelined():
            connection.execute(statement, params)
    elif held is not None:
        held.append((statement, params))
    else:
        connection.execute(statement, params)
    for hooks in session.info.get(_HOOKS, ()):
        hooks.wrote()


_HELD = "held_writes"


def hold_writes(session: Session) -> None:
    """Called first in a transaction that writes only by execute_pipelined (its commit hooks' writes included): on
    PostgreSQL its reads run alone, without BEGIN (as AUTOCOMMIT_READ), and its writes are held and sent at the commit
    as one statement, atomic by itself. That is one round trip for all the writes, none for BEGIN and COMMIT, and a
    row they lock (a worker's load, a month's count: every report of a grid writes them) is locked for that
    statement only, never across a round trip: with 50 reports at once, each held them from its first write to its
    COMMIT, waited on by the others, which then waited for the event loop's turn to come back to each holder
    (bench/wizards.py). On SQLite nothing changes: the writes go with the COMMIT's trip, under BEGIN IMMEDIATE.
    Not for writes that a later statement of the transaction reads back, nor two writes of one row (in one statement
    neither sees the other's changes), nor savepoints."""
    if session.get_bind().dialect.name != "sqlite":
        session.connection(execution_options=AUTOCOMMIT_READ)
        session.info[_HELD] = []


def _send_held(session: Session) -> None:
    held: list[tuple[Any, Any]] | None = session.info.pop(_HELD, None)
    if not held:
        return
    shapes: list[tuple[Any, tuple[str, ...]]] = []
    values: dict[str, Any] = {}
    for statement, params in held:
        for row in params if isinstance(params, list) else [params]:
            n = len(shapes)
            if statement.is_insert:
                row = {**row, **{c.key: _default(c) for c in _defaulted(statement.table, tuple(row))}}
            shapes.append((statement, tuple(row)))
            values.update({f"w{n}_{key}": value for key, value in row.items()})
    session.connection().execute(_together(tuple(shapes)), values)


@lru_cache(maxsize=64)
def _together(shapes: tuple[tuple[Any, tuple[str, ...]], ...]) -> Any:
    """The held writes as one statement: each a WITH clause of its own, its parameters renamed apart (``w<n>_``).
    PostgreSQL runs a statement's WITH clauses in no set order, so each one waits for the one before by reading it
    (its condition counts that clause's rows, always true): rows are written, and locked, in the order the writes
    were made, as they were one statement each (a ticket's history and photos are numbered in that order). Built once
    for each sequence of statements and columns, so that SQLAlchemy compiles it once too (an INSERT of several rows
    would never be cached: one clause per row instead)."""
    clauses: list[Any] = []
    for n, (statement, columns) in enumerate(shapes):
        after = (
            select(func.count()).select_from(clauses[-1]).scalar_subquery() >= 0 if clauses else literal_column("true")
        )
        if statement.is_insert:
            table = statement.table
            names = (*columns, *(c.key for c in _defaulted(table, columns)))
            row = select(*(bindparam(f"w{n}_{name}", type_=table.c[name].type) for name in names)).where(after)
            clause = statement.from_select(names, row)
        else:
            clause = replacement_traverse(statement, {}, partial(_renamed, f"w{n}_", columns)).where(after)
        clauses.append(clause.returning(literal_column("1")).cte(f"w{n}"))
    return select(literal_column("1")).add_cte(*clauses)


@lru_cache(maxsize=64)
def _defaulted(table: Any, columns: tuple[str, ...]) -> list[Any]:
    """The columns an INSERT leaves to their defaults: a WITH clause does not apply SQLAlchemy's, so they are sent."""
    return [c for c in table.columns if c.default is not None and c.key not in columns]


def _default(column: Any) -> Any:
    default = column.default
    if default.is_scalar:
        return default.arg
    if default.is_callable:
        return default.arg(None)
    raise ValueError(f"{column} has a default that a held write cannot carry")


def _renamed(prefix: str, names: tuple[str, ...], element: Any, **_kw: Any) -> Any:
    if isinstance(element, BindParameter) and element.key in names:
        return bindparam(prefix + element.key, type_=element.type)
    return None


async def read_alone(session: AsyncSession, statement: Any, params: Any = None) -> list[Row[Any]]:
    """One read in a transaction of its own, without the write lock (AUTOCOMMIT_READ), its rows as plain rows: begun,
    run and ended in one call into the session's synchronous layer. Step by step (begin, connection, execute,
    commit), the session makes each step a greenlet switch of its own, which cost more than the query (a wizard
    step's reads, bench/intake.py)."""
    return await session.run_sync(_read_alone, statement, params)


def _read_alone(session: Session, statement: Any, params: Any) -> list[Row[Any]]:
    session.info[_READING_ALONE] = True  # its commit carries none of the update's hooks (see _before_commit)
    try:
        with session.begin():
            return list(session.connection(execution_options=AUTOCOMMIT_READ).execute(statement, params))
    finally:
        del session.info[_READING_ALONE]


def read_pipelined(session: Session, statement: Any, params: Any = None) -> list[Any]:
    """A read whose rows are wanted only after the transaction's next statement: on SQLite sent with that statement's
    trip to aiosqlite's thread, before it (storage/sqlite_driver.py), elsewhere executed now. The list is filled
    once that trip has run, with the rows as the driver returns them (no type processing: for integers, booleans
    read as integers, and the like)."""
    connection = session.connection()
    dbapi_connection = connection.connection.dbapi_connection
    if isinstance(dbapi_connection, sqlite_driver.OneTripConnection):
        rows: list[Any] = []
        with dbapi_connection.pipelined(rows_to=rows):
            connection.execute(statement, params)
        return rows
    return [tuple(row) for row in connection.execute(statement, params)]


@event.listens_for(Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    listed = state.session.info.get(_HOOKS)
    if listed and (state.is_insert or state.is_update or state.is_delete):
        for hooks in listed:
            hooks.wrote()


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _context: object) -> None:
    for hooks in session.info.get(_HOOKS, ()):
        hooks.wrote()


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    # Not in a read alone's: in it each statement commits by itself, so the wizard state and the inbox's "handled"
    # would be written apart (a crash between them, the state kept and the update not handled). They go with the
    # update's next commit, or after it has been handled (storage/fsm.py, bot/intake.py).
    if session.info.get(_READING_ALONE):
        return
    for hooks in session.info.get(_HOOKS, ()):
        hooks.before_commit(session)
    _send_held(session)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.get(_READING_ALONE):
        return
    for hooks in session.info.get(_HOOKS, ()):
        hooks.after_commit()


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_HELD, None)  # rolled back: what was held goes with it


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous_transaction: object) -> None:
    for hooks in session.info.get(_HOOKS, ()):
        hooks.after_rollback()
