"""Deadlines, colours and the sweep, on the domain directly; time is moved with the FakeClock, never slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import select

from domain import tickets
from domain.deadlines import Colour, colour_at, ticket_colour
from domain.outbox import Notice
from domain.sweep import sweep
from scheduler.jobs import INTERVAL_SECONDS, create_scheduler, every_minute, run_sweep
from storage.db import SessionFactory
from storage.models import EventKind, Level, OutboxMessage, Ticket, TicketEvent, TicketStatus
from tests.conftest import FakeClock
from tests.test_routing import report, resident_in

LI_JUAN, MA_LI, ZHANG_WEI = 200001, 200002, 200003
STAFF = {100001, 100002}
STREET_CHEN = 500001
RESIDENT = 900100


async def load(session_factory: SessionFactory, ticket_id: int) -> Ticket:
    async with session_factory() as session:
        found = await session.get(Ticket, ticket_id)
        assert found is not None
        return found


async def kinds(session_factory: SessionFactory, ticket_id: int) -> list[str]:
    async with session_factory() as session:
        return list(
            await session.scalars(
                select(TicketEvent.kind).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
            )
        )


async def outbox(session_factory: SessionFactory, kind: Notice) -> list[OutboxMessage]:
    async with session_factory() as session:
        return list(await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == kind)))


async def run(session_factory: SessionFactory, clock: FakeClock):  # type: ignore[no-untyped-def]
    async with session_factory() as session:
        return await sweep(session, clock())


def test_colours_at_the_boundaries() -> None:
    due = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    window = timedelta(hours=4)  # yellow with less than 1 h (a quarter) left
    assert colour_at(due, window, due - timedelta(hours=4)) == Colour.GREEN
    assert colour_at(due, window, due - timedelta(hours=1)) == Colour.GREEN  # exactly a quarter left
    assert colour_at(due, window, due - timedelta(minutes=59, seconds=59)) == Colour.YELLOW
    assert colour_at(due, window, due) == Colour.YELLOW  # due now is not overdue yet
    assert colour_at(due, window, due + timedelta(seconds=1)) == Colour.RED
    assert colour_at(due, window, due - timedelta(hours=2), yellow_share=0.5) == Colour.GREEN
    assert colour_at(due, window, due - timedelta(hours=1, minutes=59), yellow_share=0.5) == Colour.YELLOW


async def test_filing_sets_deadlines_and_the_colour_follows_the_status(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT, code="flying-lead")  # accept within 2 h, resolve in 24 h
    ticket = await load(session_factory, filed.ticket.id)
    assert ticket.respond_by == clock.now + timedelta(hours=2)
    assert ticket.resolve_by == clock.now + timedelta(hours=24)
    assert ticket_colour(ticket, clock.now) == Colour.GREEN
    assert ticket_colour(ticket, clock.now + timedelta(minutes=91)) == Colour.YELLOW  # 29 min of 2 h left
    assert ticket_colour(ticket, clock.now + timedelta(hours=3)) == Colour.RED
    async with session_factory() as session:
        await tickets.accept(session, actor_id=LI_JUAN, ticket_id=ticket.id, now=clock())
    ticket = await load(session_factory, ticket.id)
    # Accepted: measured against resolve-by now, so 3 hours in is green again.
    assert ticket_colour(ticket, clock.now + timedelta(hours=3)) == Colour.GREEN
    assert ticket_colour(ticket, clock.now + timedelta(hours=19)) == Colour.YELLOW
    assert ticket_colour(ticket, clock.now + timedelta(hours=25)) == Colour.RED


async def test_yellow_reminds_the_assignee_exactly_once(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT)  # light: accept within 24 h
    clock.advance(hours=17)
    assert not (await run(session_factory, clock)).changed, "green: nothing to do"
    clock.advance(hours=2)  # 5 h of 24 left: yellow
    first = await run(session_factory, clock)
    assert first.reminded == [filed.ticket.id]
    clock.advance(minutes=1)
    assert not (await run(session_factory, clock)).changed, "a second sweep does not remind again"
    reminders = await outbox(session_factory, Notice.DEADLINE_REMINDER)
    assert [r.chat_id for r in reminders] == [LI_JUAN]
    assert (await kinds(session_factory, filed.ticket.id)).count(EventKind.REMINDED) == 1


async def test_unaccepted_goes_to_the_backup_then_to_staff(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT)
    ticket_id = filed.ticket.id
    assert filed.ticket.assignee_id == LI_JUAN

    clock.advance(hours=24, seconds=1)
    result = await run(session_factory, clock)
    assert result.passed_on == [ticket_id]
    ticket = await load(session_factory, ticket_id)
    # Not the other primary (Ma Li): the grid's backup worker, with a fresh day to accept it.
    assert ticket.assignee_id == ZHANG_WEI and ticket.level == Level.GRID
    assert ticket.respond_by == clock.now + timedelta(hours=24)
    cards = [r.chat_id for r in await outbox(session_factory, Notice.TICKET_CARD)]
    assert cards == [LI_JUAN, ZHANG_WEI]

    clock.advance(hours=24, seconds=1)
    assert (await run(session_factory, clock)).passed_on == [ticket_id]
    ticket = await load(session_factory, ticket_id)
    assert ticket.assignee_id in STAFF and ticket.level == Level.COMMUNITY
    first_staff = ticket.assignee_id

    clock.advance(hours=24, seconds=1)
    assert (await run(session_factory, clock)).passed_on == [ticket_id]
    ticket = await load(session_factory, ticket_id)
    assert ticket.assignee_id in STAFF - {first_staff}

    # Nobody left: marked overdue and the assignee told, once.
    clock.advance(hours=24, seconds=1)
    assert (await run(session_factory, clock)).overdue == [ticket_id]
    assert not (await run(session_factory, clock)).changed
    history = await kinds(session_factory, ticket_id)
    assert history.count(EventKind.OVERDUE) == 4
    async with session_factory() as session:
        routed = list(
            await session.scalars(
                select(TicketEvent).where(TicketEvent.ticket_id == ticket_id, TicketEvent.kind == EventKind.ROUTED)
            )
        )
    assert [e.data["reason"] for e in routed] == ["grid_worker", "overdue", "overdue", "overdue"]


async def test_overdue_accepted_ticket_escalates_one_level_with_fresh_deadlines(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT)  # light: resolve within 72 h
    ticket_id = filed.ticket.id
    async with session_factory() as session:
        await tickets.accept(session, actor_id=LI_JUAN, ticket_id=ticket_id, now=clock())

    clock.advance(hours=72, seconds=1)
    result = await run(session_factory, clock)
    assert result.escalated == [ticket_id]
    ticket = await load(session_factory, ticket_id)
    assert ticket.level == Level.COMMUNITY and ticket.assignee_id in STAFF
    assert ticket.status == TicketStatus.ASSIGNED
    assert ticket.respond_by == clock.now + timedelta(hours=24)
    assert ticket.resolve_by == clock.now + timedelta(hours=72)
    updates = await outbox(session_factory, Notice.TICKET_UPDATE)
    assert RESIDENT in [u.chat_id for u in updates], "the resident is told who now handles it"

    # Staff accept and also run out of time: on to the street office.
    assert ticket.assignee_id is not None
    async with session_factory() as session:
        await tickets.accept(session, actor_id=ticket.assignee_id, ticket_id=ticket_id, now=clock())
    clock.advance(hours=72, seconds=1)
    assert (await run(session_factory, clock)).escalated == [ticket_id]
    ticket = await load(session_factory, ticket_id)
    assert ticket.level == Level.STREET and ticket.assignee_id == STREET_CHEN

    # The street office must choose a department itself: the sweep only marks it overdue, once.
    async with session_factory() as session:
        await tickets.accept(session, actor_id=STREET_CHEN, ticket_id=ticket_id, now=clock())
    clock.advance(hours=72, seconds=1)
    assert (await run(session_factory, clock)).overdue == [ticket_id]
    assert not (await run(session_factory, clock)).changed
    assert (await load(session_factory, ticket_id)).level == Level.STREET


async def test_resolved_tickets_are_left_alone(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT)
    async with session_factory() as session:
        await tickets.accept(session, actor_id=LI_JUAN, ticket_id=filed.ticket.id, now=clock())
    async with session_factory() as session:
        await tickets.resolve(
            session, actor_id=LI_JUAN, ticket_id=filed.ticket.id, note="换了灯泡", photo=None, now=clock()
        )
    clock.advance(days=30)
    assert not (await run(session_factory, clock)).changed


async def test_scheduler_runs_the_sweep_every_minute(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    scheduler = create_scheduler()
    woken: list[bool] = []
    every_minute(
        scheduler,
        "deadline-sweep",
        partial(sweep, yellow_share=0.25),
        session_factory,
        clock,
        lambda: woken.append(True),
    )
    job = scheduler.get_job("deadline-sweep")
    assert job is not None and job.trigger.interval == timedelta(seconds=INTERVAL_SECONDS)
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT)
    clock.advance(hours=20)
    result = await run_sweep(*job.args)
    assert result is not None and result.reminded == [filed.ticket.id]
    assert woken == [True], "the sender is woken when the sweep queued messages"


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_yellow_share_is_configurable(share: float) -> None:
    due = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    left = timedelta(hours=10) * share
    assert colour_at(due, timedelta(hours=10), due - left, share) == Colour.GREEN
    assert colour_at(due, timedelta(hours=10), due - left + timedelta(seconds=1), share) == Colour.YELLOW
