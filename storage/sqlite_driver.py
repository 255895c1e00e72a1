"""SQLite through aiosqlite with one trip to its thread per statement instead of four.

aiosqlite runs every call on the sqlite3 connection in a thread of its own, and SQLAlchemy's adapter makes four
such calls per statement: open a cursor, execute, fetch the rows, close the cursor. Each trip is a hand-over
between threads that costs more than a short statement itself (bench/intake.py counts them). The cursor here
does all four in one trip, and keeps what SQLAlchemy reads afterwards (the rows, ``description``,
``rowcount``, ``lastrowid``). Everything else is SQLAlchemy's own aiosqlite dialect; storage/db.py uses this
one for every ``sqlite+aiosqlite`` URL.

A transaction's BEGIN IMMEDIATE goes with its first statement, in the same trip. Writes whose outcome nobody reads
(what a commit hook adds: the wizard state, the inbox's "handled"; the routing's load counter) can go the same way,
with whatever trip comes next (:func:`storage.db.execute_pipelined`), and so can a read whose rows are wanted only
after that trip (:func:`storage.db.read_pipelined`: a new ticket's id, read with the routing's query).
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "sqlite+aiosqlite_onetrip"

Outcome = tuple[Any, int, int | None, list[Any], bool]


# A statement to send with the next trip: SQL, parameters, executemany, and the list its rows go to (None: no rows
# wanted).
Pending = tuple[str, Any, bool, list[Any] | None]
# What storage/db.py opens each transaction with.
BEGINS = frozenset({"BEGIN IMMEDIATE", "BEGIN"})


def _statement(cursor: sqlite3.Cursor, operation: str, parameters: Any, many: bool) -> None:
    if many:
        cursor.executemany(operation, parameters)
    elif parameters is None:
        cursor.execute(operation)
    else:
        cursor.execute(operation, parameters)


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool, pending: list[Pending]
) -> Outcome:
    """In aiosqlite's thread: the statements still pending (OneTripConnection.pipelined), in order, then the whole
    statement, from cursor to rows."""
    cursor = connection.cursor()
    try:
        _run_pending(cursor, pending)
        _statement(cursor, operation, parameters, many)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows, connection.in_transaction
    finally:
        cursor.close()


def _run_pending(cursor: sqlite3.Cursor, pending: list[Pending]) -> None:
    for operation, parameters, many, rows in pending:
        _statement(cursor, operation, parameters, many)
        if rows is not None:
            rows.extend(cursor.fetchall())


def _run_and_commit(connection: sqlite3.Connection, pending: list[Pending]) -> None:
    """In aiosqlite's thread: the statements still pending, then the commit. A failure leaves the transaction
    open, for SQLAlchemy to roll back."""
    cursor = connection.cursor()
    try:
        _run_pending(cursor, pending)
    finally:
        cursor.close()
    connection.commit()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No aiosqlite cursor: each statement opens and closes a sqlite3 cursor in the thread.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return None  # nothing stays open between statements

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        # A BEGIN is sent with the transaction's first statement, in its trip (or never, should none follow).
        if self._adapt_connection._pipelining or (operation in BEGINS and not parameters):  # type: ignore[attr-defined]
            return self._defer(operation, parameters, many=False)
        try:
            return await_(self._in_thread(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        if self._adapt_connection._pipelining:  # type: ignore[attr-defined]
            return self._defer(operation, seq_of_parameters, many=True)
        try:
            return await_(self._in_thread(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def _defer(self, operation: Any, parameters: Any, many: bool) -> None:
        """Sent with the next trip (OneTripConnection.pipelined): no rows, no row count."""
        adapt_connection: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        adapt_connection._pending.append((operation, parameters, many, adapt_connection._rows_to))
        self._description, self._rowcount, self._lastrowid = None, -1, None
        self._rows = collections.deque()

    async def _in_thread(self, operation: Any, parameters: Any, many: bool) -> None:
        adapt_connection: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        async with adapt_connection._execute_mutex:
            connection = self._connection._conn
            adapt_connection._in_transaction = True  # until the statement says otherwise (it may fail)
            pending, adapt_connection._pending = adapt_connection._pending, []
            outcome: Outcome = await self._connection._execute(_run, connection, operation, parameters, many, pending)
        self._description, self._rowcount, self._lastrowid, rows, adapt_connection._in_transaction = outcome
        self._rows = collections.deque(rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """Also skips the trip of a COMMIT or ROLLBACK when no transaction is open, which sqlite3 would skip in the
    thread anyway: the pool's rollback of every connection it takes back after a commit, the commit of a read
    made without BEGIN (storage.db.AUTOCOMMIT_READ)."""

    __slots__ = ("_in_transaction", "_pending", "_pipelining", "_rows_to")
    _cursor_cls = OneTripCursor  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Pending] = []  # to send with the next trip, before its own statement
        self._pipelining = False
        self._rows_to: list[Any] | None = None  # where the rows of statements pipelined now go
        # Whether sqlite3 has a transaction open, as the last statement left it; True when not known.
        self._in_transaction = True

    @contextlib.contextmanager
    def pipelined(self, rows_to: list[Any] | None = None) -> Iterator[None]:
        """Statements executed inside are sent with the next trip (a statement's, or the COMMIT's), in order and
        before it; a rollback drops them. They return no rows and no row count, and what goes wrong in one is
        raised by the statement or commit that carried it. ``rows_to``: the list their rows are added to, as
        sqlite3 returns them (no type processing), when that trip has run."""
        self._pipelining, self._rows_to = True, rows_to
        try:
            yield
        finally:
            self._pipelining, self._rows_to = False, None

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        if all(operation in BEGINS for operation, *_ in pending):
            # Nothing was done but a BEGIN not yet sent: no BEGIN, no COMMIT.
            if self._in_transaction:
                super().commit()
                self._in_transaction = False
            return
        self._in_transaction = True  # until the commit has succeeded
        try:
            await_(self._connection._execute(_run_and_commit, self._connection._conn, pending))
        except Exception as error:
            self._handle_exception(error)  # the transaction stays open, for the rollback
        self._in_transaction = False

    def rollback(self) -> None:
        self._pending = []
        if self._in_transaction:
            super().rollback()
            self._in_transaction = False


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        return OneTripConnection(self, super().connect(*arg, **kw)._connection)


class OneTripDialect(SQLiteDialect_aiosqlite):
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneTripDBAPI:  # type: ignore[override]
        return OneTripDBAPI(__import__("aiosqlite"), sqlite3)


registry.register(DRIVER.replace("+", "."), __name__, "OneTripDialect")
