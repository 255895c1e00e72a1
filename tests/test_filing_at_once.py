"""Residents reporting at once to one grid worker: no filing waits on another's round trips, and a filing is still
all or nothing (storage.db.hold_writes)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, exc, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import await_

from domain import tickets
from domain.directory import Directory
from domain.people import touch_user
from storage.db import SessionFactory, SessionHooks, add_hooks, execute_pipelined
from storage.models import (
    EventKind,
    FsmRecord,
    OutboxMessage,
    Ticket,
    TicketCount,
    TicketEvent,
    TicketPhoto,
    User,
)
from tests.conftest import FakeClock
from tests.test_routing import LI_JUAN, category, report, resident_in


async def test_a_filing_never_keeps_the_workers_row_locked_between_its_round_trips(
    session_factory: SessionFactory, clock: FakeClock, community: None, engine: AsyncEngine
) -> None:
    """Every report of a grid adds to its worker's load. When a filing kept that row locked from its write to its
    COMMIT, the grid's other reports waited for it, round trip after round trip (fifty at once queued on it)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite has one writer)")
    await resident_in(session_factory, clock, 1, "yinba/1")
    other = await asyncpg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    locked_after: list[str] = []

    def try_the_row(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        """After each of the filing's statements, as another report would: is the worker's row free?"""
        try:
            await_(other.execute(f"SELECT 1 FROM users WHERE id = {LI_JUAN} FOR UPDATE NOWAIT"))
        except asyncpg.LockNotAvailableError:
            locked_after.append(statement.split("(")[0])

    event.listen(engine.sync_engine, "after_cursor_execute", try_the_row)
    try:
        filed = await report(session_factory, clock, 1)
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", try_the_row)
        await other.close()
    assert filed.decision.assignee is not None and filed.decision.assignee.user_id == LI_JUAN
    assert locked_after == []
    async with session_factory() as session:
        assert await session.scalar(select(User.open_tickets).where(User.id == LI_JUAN)) == 1


class FailsAtCommit(SessionHooks):
    """A write at the commit that cannot be made (its key exists), as a wizard state's write-along could fail."""

    def before_commit(self, session: Session) -> None:
        execute_pipelined(session, insert(FsmRecord.__table__), [{"key": "taken", "state": "s", "data": {}}])


async def test_a_filing_whose_last_write_fails_leaves_nothing_of_it(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    cat = await category(session_factory, "light")
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="taken", state="x", data={}))
    async with session_factory() as session:
        reporter = await touch_user(session, 1, "resident", "zh-hans", clock())
        home = await Directory().home(session, reporter)
        assert home is not None
        add_hooks(session, FailsAtCommit())
        draft = tickets.ReportDraft(category_id=cat.id, description="路灯不亮", photos=["photo-1", "photo-2"])
        with pytest.raises(exc.IntegrityError):
            await tickets.file_report(session, reporter=reporter, building=home, category=cat, draft=draft, now=clock())
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 0
        assert await session.scalar(select(func.count()).select_from(TicketPhoto)) == 0
        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
        assert await session.scalar(select(func.coalesce(func.sum(TicketCount.tickets), 0))) == 0
        assert await session.scalar(select(func.sum(User.open_tickets))) == 0, "nobody's load moved"

    # The same report, once the write can be made, is filed whole, its rows in the order they were made: its photos
    # with their captions' defaults, its history from its filing on.
    async with session_factory() as session:
        reporter = await touch_user(session, 1, "resident", "zh-hans", clock())
        home = await Directory().home(session, reporter)
        assert home is not None
        filed = await tickets.file_report(
            session, reporter=reporter, building=home, category=cat, draft=draft, now=clock()
        )
    async with session_factory() as session:
        photos = list(await session.scalars(select(TicketPhoto).where(TicketPhoto.ticket_id == filed.ticket.id)))
        photos.sort(key=lambda p: p.id)
        assert [(p.file_id, p.caption) for p in photos] == [("photo-1", ""), ("photo-2", "")]
        history = await session.scalars(
            select(TicketEvent.kind).where(TicketEvent.ticket_id == filed.ticket.id).order_by(TicketEvent.id)
        )
        assert list(history) == [EventKind.CREATED, EventKind.ROUTED]
        assert await session.scalar(select(func.sum(TicketCount.tickets))) == 1
        assert await session.scalar(select(User.open_tickets).where(User.id == LI_JUAN)) == 1
