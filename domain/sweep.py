"""The deadline sweep: what happens to open tickets as their deadlines come close and pass.

Run every minute by the scheduler (``scheduler/sweep.py``), and by tests after moving the clock:

- **yellow** (less than the yellow share of the window left): the assignee is reminded, once per deadline;
- **red, not accepted** (past accept-by): the ticket goes to the grid's backup worker, then to community
  staff; at the community office and above, to a colleague of the same level who has not let it lapse yet;
- **red, accepted** (past resolve-by): the ticket escalates itself one level (grid → community → street
  office) with fresh deadlines at the new level;
- **red, and nobody to pass it to**: it is marked overdue and the assignee told, once.

"Once" is kept in the ticket's history, not in memory: a ``reminded`` (or ``overdue``) event records the
deadline it was for, so a second sweep, a second process or a restart never repeats it. Every ticket is
handled in its own short transaction, with the ticket row locked, and every notice goes through the outbox in
that transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.cards import refresh_copies
from domain.deadlines import (
    DEFAULT_YELLOW_SHARE,
    Colour,
    Deadline,
    Due,
    colour_at,
    current_due,
    next_wake,
    restart_response,
)
from domain.escalation import escalate_overdue
from domain.outbox import Notice, enqueue
from domain.routing import RouteReason, RoutingDecision, choose_assignee, choose_at_level
from domain.tickets import _apply_decision, _record_routing
from storage.models import (
    EventKind,
    Level,
    Membership,
    Rank,
    Role,
    Ticket,
    TicketEvent,
    TicketStatus,
)

MARKERS = (EventKind.REMINDED, EventKind.OVERDUE)
CHUNK = 500


@dataclass
class SweepReport:
    reminded: list[int] = field(default_factory=list)  # ticket ids whose assignee was reminded
    passed_on: list[int] = field(default_factory=list)  # not accepted in time: given to someone else
    escalated: list[int] = field(default_factory=list)  # not resolved in time: one level up
    overdue: list[int] = field(default_factory=list)  # red with nobody to pass it to: marked and assignee told

    @property
    def changed(self) -> bool:
        return bool(self.reminded or self.passed_on or self.escalated or self.overdue)


def due_key(moment: datetime) -> str:
    """How a deadline is written into an event, to recognise it again."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


async def _markers(session: AsyncSession, ticket_ids: Sequence[int]) -> set[tuple[int, str, str]]:
    """(ticket id, event kind, due) of the reminders and overdue marks already written."""
    found: set[tuple[int, str, str]] = set()
    for start in range(0, len(ticket_ids), CHUNK):
        rows = await session.execute(
            select(TicketEvent.ticket_id, TicketEvent.kind, TicketEvent.data).where(
                TicketEvent.ticket_id.in_(ticket_ids[start : start + CHUNK]), TicketEvent.kind.in_(MARKERS)
            )
        )
        found |= {(ticket_id, kind, str((data or {}).get("due", ""))) for ticket_id, kind, data in rows}
    return found


def _needs_action(ticket: Ticket, now: datetime, share: float, markers: set[tuple[int, str, str]]) -> bool:
    due = current_due(ticket)
    if due is None:
        return False
    colour = colour_at(due.at, due.window, now, share)
    key = due_key(due.at)
    if colour == Colour.YELLOW:
        return (ticket.id, EventKind.REMINDED, key) not in markers and ticket.assignee_id is not None
    return colour == Colour.RED and (ticket.id, EventKind.OVERDUE, key) not in markers


async def sweep(session: AsyncSession, now: datetime, *, yellow_share: float = DEFAULT_YELLOW_SHARE) -> SweepReport:
    """Remind, pass on and escalate open tickets by their deadlines at ``now``.

    Reads only the open tickets whose ``wake_at`` has come (``ix_tickets_wake``): those whose colour may have
    changed, or that changed since the last look. A ticket that needs nothing now is woken next when its colour
    changes; one that is red and marked is not read again until something changes it.
    """
    report = SweepReport()
    while True:
        async with session.begin():
            # The ids from ix_tickets_wake first: with the tickets' eager joins in the same query, SQLite may
            # start from the buildings and read every open ticket of each.
            ids = list(
                await session.scalars(
                    select(Ticket.id)
                    .where(Ticket.status.in_(TicketStatus.open_statuses()), Ticket.wake_at <= now)
                    .order_by(Ticket.wake_at, Ticket.id)
                    .limit(CHUNK)
                )
            )
            woken = list(await session.scalars(select(Ticket).where(Ticket.id.in_(ids)).order_by(Ticket.id)))
            markers = await _markers(session, [t.id for t in woken])
            due_now = [t.id for t in woken if _needs_action(t, now, yellow_share, markers)]
            await _reschedule(session, [t for t in woken if t.id not in due_now], now, yellow_share, markers)
        for ticket_id in due_now:
            async with session.begin():
                await _sweep_one(session, ticket_id, now, yellow_share, report)
        if len(ids) < CHUNK:
            return report


def _wake(ticket: Ticket, now: datetime, share: float, markers: set[tuple[int, str, str]]) -> datetime | None:
    due = current_due(ticket)
    key = "" if due is None else due_key(due.at)
    reminded = (ticket.id, EventKind.REMINDED, key) in markers
    return next_wake(ticket, now, share, reminded, (ticket.id, EventKind.OVERDUE, key) in markers)


async def _reschedule(
    session: AsyncSession, tickets: Sequence[Ticket], now: datetime, share: float, markers: set[tuple[int, str, str]]
) -> None:
    """Wake each ticket next when its colour changes. Only if nothing moved it since it was read: a change made
    meanwhile (an accept on PostgreSQL) has woken it afresh, and that stands."""
    if tickets:
        await session.execute(
            _RESCHEDULE,
            [{"tid": t.id, "old": t.wake_at, "new": _wake(t, now, share, markers)} for t in tickets],
        )


_TICKETS = cast(Table, Ticket.__table__)
_RESCHEDULE = (
    update(_TICKETS)
    .where(_TICKETS.c.id == bindparam("tid"), _TICKETS.c.wake_at == bindparam("old"))
    .values(wake_at=bindparam("new"))
)


async def _sweep_one(session: AsyncSession, ticket_id: int, now: datetime, share: float, report: SweepReport) -> None:
    # Locked and read again: another sweep or a worker may have moved it since the candidates were read.
    ticket = await session.get(Ticket, ticket_id, with_for_update=True, populate_existing=True)
    if ticket is None or not ticket.is_open:
        return
    markers = await _markers(session, [ticket.id])
    if not _needs_action(ticket, now, share, markers):
        ticket.wake_at = _wake(ticket, now, share, markers)
        return
    due = current_due(ticket)
    assert due is not None
    if colour_at(due.at, due.window, now, share) == Colour.YELLOW:
        await _mark(session, ticket, EventKind.REMINDED, due, now)
        report.reminded.append(ticket.id)
    elif due.deadline == Deadline.RESPOND and await _pass_on(session, ticket, due, now):
        report.passed_on.append(ticket.id)
    elif due.deadline == Deadline.RESOLVE and await escalate_overdue(session, ticket, now, due.at):
        report.escalated.append(ticket.id)
    else:
        await _mark(session, ticket, EventKind.OVERDUE, due, now, stuck=True)
        report.overdue.append(ticket.id)
    await session.flush()
    ticket.wake_at = _wake(ticket, now, share, await _markers(session, [ticket.id]))


async def _mark(
    session: AsyncSession, ticket: Ticket, kind: EventKind, due: Due, now: datetime, **extra: object
) -> None:
    """The once-only marker in the history, and the assignee's reminder."""
    data = {"deadline": due.deadline, "due": due_key(due.at), "from": ticket.assignee_id, **extra}
    event = TicketEvent(ticket_id=ticket.id, at=now, kind=kind, data=data)
    session.add(event)
    await session.flush()
    if ticket.assignee_id is not None:
        enqueue(session, ticket.assignee_id, Notice.DEADLINE_REMINDER, now, ticket_id=ticket.id, event_id=event.id)


async def _lapsed(session: AsyncSession, ticket: Ticket) -> set[int]:
    """Everyone who let this ticket's accept-by deadline pass, and the current assignee."""
    rows = await session.scalars(
        select(TicketEvent.data).where(TicketEvent.ticket_id == ticket.id, TicketEvent.kind == EventKind.OVERDUE)
    )
    lapsed = {int(data["from"]) for data in rows if data and data.get("from") is not None}
    if ticket.assignee_id is not None:
        lapsed.add(ticket.assignee_id)
    return lapsed


async def _pass_on(session: AsyncSession, ticket: Ticket, due: Due, now: datetime) -> bool:
    """Not accepted in time: to the grid's backup worker, else community staff; above the grid, a colleague."""
    lapsed = await _lapsed(session, ticket)
    if ticket.level == Level.GRID:
        primaries = set(
            await session.scalars(
                select(Membership.user_id).where(
                    Membership.grid_id == ticket.grid_id,
                    Membership.role == Role.GRID_WORKER,
                    Membership.rank == Rank.PRIMARY,
                    Membership.active.is_(True),
                )
            )
        )
        found = await choose_assignee(
            session,
            community_id=ticket.community_id,
            grid_id=ticket.grid_id,
            category_level=Level.GRID,
            exclude=lapsed | primaries,
        )
    else:
        found = await choose_at_level(
            session,
            community_id=ticket.community_id,
            level=Level(ticket.level),
            department=ticket.department,
            reason=RouteReason.OVERDUE,
            exclude=lapsed,
        )
    if found.assignee is None:
        return False
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            at=now,
            kind=EventKind.OVERDUE,
            data={"deadline": due.deadline, "due": due_key(due.at), "from": ticket.assignee_id},
        )
    )
    decision = RoutingDecision(found.assignee, RouteReason.OVERDUE, found.level, found.considered)
    _apply_decision(ticket, decision, now)
    restart_response(ticket, ticket.category, now)
    await _record_routing(session, ticket, decision, now)
    await refresh_copies(session, ticket, now)
    return True
