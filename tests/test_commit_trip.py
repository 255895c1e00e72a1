"""Fewer trips per update, same outcome: writes a commit hook adds ride in the commit (storage.db.execute_pipelined),
written exactly when the transaction commits; COMMIT and ROLLBACK with no transaction open cost nothing; a person
who changed nothing is read without the write lock."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Table, event, exc, insert, select, update
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from domain.followers import similar_open_tickets
from domain.people import touch_user
from storage.db import SessionFactory, SessionHooks, add_hooks, execute_pipelined
from storage.models import FsmRecord, Membership, User
from tests.harness import Harness
from tests.test_report_flow import bind, texts

_TABLE = FsmRecord.__table__
assert isinstance(_TABLE, Table)


class Writes(SessionHooks):
    def __init__(self, key: str) -> None:
        self.key = key
        self.wrote_seen = False

    def wrote(self) -> None:
        self.wrote_seen = True

    def before_commit(self, session: Session) -> None:
        execute_pipelined(session, insert(_TABLE), [{"key": self.key, "state": "s", "data": {}}])


async def keys(session_factory: SessionFactory) -> list[str]:
    async with session_factory() as session:
        return list(await session.scalars(select(FsmRecord.key).order_by(FsmRecord.key)))


async def test_a_write_at_commit_is_written_with_the_transaction(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        hooks = Writes("hooked")
        add_hooks(session, hooks)
        async with session.begin():
            session.add(FsmRecord(key="own", state="x", data={}))
        assert hooks.wrote_seen, "the commit hooks hear of it as a change"
    assert await keys(session_factory) == ["hooked", "own"]


async def test_a_failing_write_at_commit_fails_the_commit_and_keeps_nothing(session_factory: SessionFactory) -> None:
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="taken", state="x", data={}))
    async with session_factory() as session:
        add_hooks(session, Writes("taken"))  # the primary key exists: the commit must fail
        with pytest.raises(exc.IntegrityError):
            async with session.begin():
                session.add(FsmRecord(key="own", state="x", data={}))
    assert await keys(session_factory) == ["taken"], "neither the transaction's own row nor the hook's"
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="after", state="x", data={}))
    assert await keys(session_factory) == ["after", "taken"], "the connection is fine afterwards"


async def test_a_rolled_back_transaction_drops_its_writes_at_commit(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                session.add(FsmRecord(key="own", state="x", data={}))
                await session.flush()
                held = [{"key": "held", "state": "s", "data": {}}]
                await session.run_sync(lambda sync: execute_pipelined(sync, insert(_TABLE), held))
                raise RuntimeError("the domain refused")
        async with session.begin():
            session.add(FsmRecord(key="next", state="x", data={}))
    assert await keys(session_factory) == ["next"], "the held write went with its transaction"


async def test_a_session_closed_mid_transaction_leaves_nothing_behind(session_factory: SessionFactory) -> None:
    """The trips of COMMIT and ROLLBACK are skipped only when no transaction is open."""
    session = session_factory()
    await session.execute(insert(_TABLE), [{"key": "abandoned", "state": "s", "data": {}}])
    await session.close()
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="next", state="x", data={}))
    assert await keys(session_factory) == ["next"]


async def test_a_person_who_changed_nothing_is_read_without_the_write_lock(
    session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    async with session_factory() as session:
        await touch_user(session, 77, "居民", "zh-hans", now)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    async with session_factory() as session:
        person = await touch_user(session, 77, "居民", "zh-hans", now)
    assert person.full_name == "居民"
    assert not any(s.startswith("BEGIN") for s in statements), statements
    assert not any(s.startswith(("UPDATE", "INSERT")) for s in statements), statements

    async with session_factory() as session, session.begin():
        user = await session.get(User, 77)
        assert user is not None
        user.unreachable_at = now
    async with session_factory() as session:
        person = await touch_user(session, 77, "新名字", "en", now)
    assert (person.full_name, person.telegram_language) == ("新名字", "en")
    async with session_factory() as session:
        user = await session.get(User, 77)
        assert user is not None
        assert (user.full_name, user.telegram_language, user.unreachable_at) == ("新名字", "en", None)


async def test_a_read_alone_starts_no_transaction(
    session_factory: SessionFactory, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUTOCOMMIT_READ: the unchanged person's read and the "me too" list start no transaction in the database (on
    SQLite no BEGIN IMMEDIATE, so no write lock; on PostgreSQL no BEGIN and COMMIT round trips), and a transaction
    after them on the same connection is one again."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    async with session_factory() as session:
        await touch_user(session, 77, "居民", "zh-hans", now)
    started: list[str] = []
    if engine.dialect.name == "sqlite":
        event.listen(
            engine.sync_engine,
            "before_cursor_execute",
            lambda *args: started.append(args[2]) if args[2].startswith("BEGIN") else None,
        )
    else:
        begin = AsyncAdapt_asyncpg_connection._start_transaction

        async def counted(connection: AsyncAdapt_asyncpg_connection) -> None:
            if connection.isolation_level != "autocommit":
                started.append("BEGIN")
            await begin(connection)

        monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_start_transaction", counted)
    async with session_factory() as session:
        await touch_user(session, 77, "居民", "zh-hans", now)
        assert await similar_open_tickets(session, user_id=77, building_id=1, category_id=1) == []
    assert started == []
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="after", state="x", data={}))
    assert len(started) == 1, "a transaction that writes is one"


async def test_the_read_without_the_write_lock_gives_the_same_person_as_the_full_one(
    session_factory: SessionFactory, community: None
) -> None:
    """The usual read is plain columns, not a loaded record: it must tell everything the record does, a worker's
    duty and a resident's home included."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    async with session_factory() as session:
        worker = await session.scalar(select(Membership.user_id).where(Membership.active.is_(True)).limit(1))
        assert worker is not None
    async with session_factory() as session, session.begin():
        session.add(User(id=78, full_name="居民", telegram_language="zh-hans", language="en", unit=3, created_at=now))
    for user_id in (worker, 78):
        async with session_factory() as session:
            refreshed = await touch_user(session, user_id, "新名字", "zh-hans", now)  # a change: the full record
        async with session_factory() as session:
            read = await touch_user(session, user_id, "新名字", "zh-hans", now)  # nothing changed: the plain read
        assert read == refreshed
    assert read.language == "en" and read.unit == 3 and not read.is_worker
    async with session_factory() as session:
        assert (await touch_user(session, worker, "新名字", "zh-hans", now)).is_worker


async def test_a_transaction_holds_the_write_lock_from_its_first_statement(
    session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    """BEGIN IMMEDIATE travels with the first statement, and still takes the write lock before it runs."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    other = sqlite3.connect(str(engine.url.database), timeout=0, isolation_level=None)
    try:
        async with session_factory() as session, session.begin():
            await session.execute(select(FsmRecord.key))  # a read, first
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at the commit
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_pipelined_write_is_seen_by_the_next_statement(session_factory: SessionFactory) -> None:
    """Sent with the next trip, in order: the transaction reads its own write (routing's load counter)."""
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="k", state="before", data={}))
    async with session_factory() as session, session.begin():
        change = update(_TABLE).where(_TABLE.c.key == "k").values(state="after")
        await session.run_sync(execute_pipelined, change, {})
        assert await session.scalar(select(FsmRecord.state).where(FsmRecord.key == "k")) == "after"
    async with session_factory() as session, session.begin():
        duplicate = insert(_TABLE).values(key="k", state="x", data={})
        with pytest.raises(exc.IntegrityError):  # on SQLite raised by the statement that carries it
            await session.run_sync(execute_pipelined, duplicate, {})
            await session.execute(select(FsmRecord.key))
        await session.rollback()


async def test_a_pooled_postgresql_connection_is_checked_in_one_round_trip(engine: AsyncEngine) -> None:
    """Before a pooled connection is handed out it is asked whether it still answers (storage.db._ping): one empty
    query, not SQLAlchemy's BEGIN, query, ROLLBACK; and one that no longer answers is replaced, not handed out."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's pool")
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
        driver = (await conn.get_raw_connection()).driver_connection
    sent: list[str] = []
    driver.add_query_logger(lambda record: sent.append(record.query))
    async with engine.connect() as conn:
        assert (await conn.get_raw_connection()).driver_connection is driver, "the pooled one"
        await conn.exec_driver_sql("SELECT 2")
    # The ping, then the connection's own transaction (asyncpg logs its prepared SELECT 2 nowhere); SQLAlchemy's
    # pre-ping sent BEGIN, a query and ROLLBACK before these.
    assert sent == ["SELECT 1", "BEGIN;", "ROLLBACK;"], sent

    await driver.close()  # as a server restart leaves it
    async with engine.connect() as conn:
        assert (await conn.get_raw_connection()).driver_connection is not driver
        assert (await conn.exec_driver_sql("SELECT 3")).scalar() == 3


async def test_nothing_is_written_in_a_read_alone(harness: Harness, engine: AsyncEngine) -> None:
    """A read alone commits each statement by itself (AUTOCOMMIT_READ). At the report wizard's category step its
    only transaction is the "me too" read: the wizard's new state goes in a transaction of its own, not as a
    statement of that read's (with the inbox's "handled" as another, a crash between them kept one without the
    other)."""
    resident = harness.person(940101)
    await bind(resident)
    question = await resident.send("/report")
    written_alone: list[str] = []

    def seen(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if connection.get_execution_options().get("autocommit_read") and not statement.lstrip().startswith("SELECT"):
            written_alone.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        asked = await resident.tap(question, "楼道杂物")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)

    assert written_alone == []
    assert texts(asked), "the wizard asks for the description"
    async with harness.sessions() as session:
        states = list(await session.scalars(select(FsmRecord.state)))
    assert [state.split("@")[0] for state in states if state] == ["ReportWizard:description"], "its state is kept"
