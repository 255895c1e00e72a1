"""Closing the loop with the resident: "Is it fixed?", the satisfaction rating, reopening, and auto-close.

When a worker resolves a ticket, the reporter and every household that joined it are asked "Is it fixed?"
(the resolution update carries Yes / No buttons). The first answer decides:

- **Yes** closes the ticket (``closed``); the one who said so may then rate it 1-5, once, and add a comment.
- **No**, with a reason, reopens it to the same worker (``in_progress`` again, ``reopen_count`` + 1, a fresh
  resolution deadline) and sends them the card again, showing the reason.
- **No answer** within ``within`` (``CONFIRM_WITHIN_DAYS``): :func:`close_unconfirmed` asks once more at half
  that time, then closes the ticket as ``unconfirmed`` (resolved, unconfirmed).

Only the reporter or a joined household may answer, and only one verified for a household of the ticket's
building (domain/households.py), and only while the ticket is in the matching state: a forged or stale button
is refused here and changes nothing. Every change is an event in the ticket's history, and the worker hears of
every answer through the outbox. Once the question is settled, the other households' "Is it fixed?" messages
lose their buttons and say what happened (domain/questions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.cards import refresh_copies
from domain.deadlines import start_window
from domain.errors import AccessDenied, InvalidTransition, NotFound
from domain.followers import household_ids, is_household, tell_households
from domain.households import require_verified
from domain.outbox import Notice, enqueue, mark_queued
from domain.public_notices import post_closed_ticket
from domain.questions import settle_questions
from domain.text import required_text
from domain.tickets import MAX_NOTE
from storage.models import EventKind, OutboxMessage, OutboxStatus, Ticket, TicketEvent, TicketStatus

DEFAULT_WITHIN = timedelta(days=7)
MIN_STARS, MAX_STARS = 1, 5
SWEEP_BATCH = 500
# How long the worker's message about a confirmation waits for the rating and comment to join it.
FEEDBACK_GATHERING = timedelta(minutes=15)


async def _ticket_for_household(session: AsyncSession, actor_id: int, ticket_id: int) -> Ticket:
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        raise NotFound(ticket_id)
    if not await is_household(session, ticket, actor_id):
        raise AccessDenied(ticket_id)
    await require_verified(session, actor_id, ticket.building_id)
    return ticket


def _require(ticket: Ticket, status: TicketStatus) -> None:
    if ticket.status != status:
        raise InvalidTransition(ticket.status)


async def _record(
    session: AsyncSession, ticket: Ticket, kind: EventKind, actor_id: int | None, now: datetime, note: str = "", **data
) -> TicketEvent:
    event = TicketEvent(ticket_id=ticket.id, at=now, actor_id=actor_id, kind=kind, note=note, data=data)
    session.add(event)
    ticket.updated_at = now
    await session.flush()
    return event


async def _tell_worker(session: AsyncSession, ticket: Ticket, event: TicketEvent, now: datetime) -> None:
    """The worker hears a resident's answer in one message, not one per tap: a confirmation waits up to
    ``FEEDBACK_GATHERING`` for the rating and comment that usually follow; they join it (the message is written
    when it is sent, from every answer there is by then), and the comment, the last word, sends it at once.
    An answer that comes after it was sent gets a message of its own."""
    if ticket.assignee_id is None:
        return
    if event.kind == EventKind.CONFIRMED:
        enqueue(
            session,
            ticket.assignee_id,
            Notice.RESIDENT_FEEDBACK,
            now,
            not_before=now + FEEDBACK_GATHERING,
            ticket_id=ticket.id,
            event_id=event.id,
        )
        return
    waiting = await session.scalars(
        select(OutboxMessage).where(
            # The unique (broadcast_id, chat_id) index finds the worker's personal rows: no scan of a broadcast's.
            OutboxMessage.broadcast_id.is_(None),
            OutboxMessage.chat_id == ticket.assignee_id,
            OutboxMessage.created_at >= now - FEEDBACK_GATHERING,
            OutboxMessage.kind == Notice.RESIDENT_FEEDBACK,
            OutboxMessage.status == OutboxStatus.PENDING,
        )
    )
    gathering = next((row for row in waiting if row.payload.get("ticket_id") == ticket.id), None)
    if gathering is None:
        enqueue(session, ticket.assignee_id, Notice.RESIDENT_FEEDBACK, now, ticket_id=ticket.id, event_id=event.id)
    elif event.kind == EventKind.RATING_COMMENT:
        gathering.not_before = now
        mark_queued(session)


async def check_can_answer(session: AsyncSession, *, actor_id: int, ticket_id: int) -> Ticket:
    """Refuse a forged or stale "Is it fixed?" button before the resident types a reason."""
    async with session.begin():
        ticket = await _ticket_for_household(session, actor_id, ticket_id)
        _require(ticket, TicketStatus.RESOLVED)
    return ticket


async def confirm_fixed(session: AsyncSession, *, actor_id: int, ticket_id: int, now: datetime) -> Ticket:
    """Yes, it is fixed: the ticket is closed; the worker and the other households are told."""
    async with session.begin():
        ticket = await _ticket_for_household(session, actor_id, ticket_id)
        _require(ticket, TicketStatus.RESOLVED)
        ticket.status = TicketStatus.CLOSED
        ticket.closed_at = now
        event = await _record(session, ticket, EventKind.CONFIRMED, actor_id, now)
        await _tell_worker(session, ticket, event, now)
        await post_closed_ticket(session, ticket, now)
        await tell_households(session, ticket, event, now, skip=actor_id)
        await refresh_copies(session, ticket, now)
        await settle_questions(session, ticket, event, now)
    return ticket


async def reopen(session: AsyncSession, *, actor_id: int, ticket_id: int, reason: str, now: datetime) -> Ticket:
    """No, it is not fixed: back to the same worker, in progress, with the reason on the card."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_household(session, actor_id, ticket_id)
        _require(ticket, TicketStatus.RESOLVED)
        ticket.status = TicketStatus.IN_PROGRESS
        ticket.resolved_at = None
        ticket.reopen_count = (ticket.reopen_count or 0) + 1
        start_window(ticket, ticket.category, now)  # the worker gets a fresh resolution deadline
        event = await _record(
            session, ticket, EventKind.REOPENED, actor_id, now, note=reason, count=ticket.reopen_count
        )
        if ticket.assignee_id is not None:
            enqueue(session, ticket.assignee_id, Notice.TICKET_CARD, now, ticket_id=ticket.id)
        await tell_households(session, ticket, event, now, skip=actor_id)
        await refresh_copies(session, ticket, now)
        await settle_questions(session, ticket, event, now)
    return ticket


async def _confirmer(session: AsyncSession, ticket_id: int) -> int | None:
    return await session.scalar(
        select(TicketEvent.actor_id)
        .where(TicketEvent.ticket_id == ticket_id, TicketEvent.kind == EventKind.CONFIRMED)
        .order_by(TicketEvent.id.desc())
        .limit(1)
    )


async def rate(session: AsyncSession, *, actor_id: int, ticket_id: int, stars: int, now: datetime) -> Ticket:
    """The satisfaction rating, 1-5: once, by the resident who confirmed the fix."""
    if not MIN_STARS <= stars <= MAX_STARS:
        raise AccessDenied(ticket_id)  # only a forged button carries another number
    async with session.begin():
        ticket = await _ticket_for_household(session, actor_id, ticket_id)
        _require(ticket, TicketStatus.CLOSED)
        if ticket.rating is not None or await _confirmer(session, ticket.id) != actor_id:
            raise InvalidTransition("already rated, or confirmed by another household")
        ticket.rating = stars
        event = await _record(session, ticket, EventKind.RATED, actor_id, now, stars=stars)
        await _tell_worker(session, ticket, event, now)
    return ticket


async def check_can_comment(session: AsyncSession, *, actor_id: int, ticket_id: int) -> None:
    """Refuse "add a comment" before the resident types it, as :func:`comment_on_rating` would."""
    async with session.begin():
        await _ticket_to_comment(session, actor_id, ticket_id)


async def _ticket_to_comment(session: AsyncSession, actor_id: int, ticket_id: int) -> Ticket:
    """The ticket, locked, for a comment on its rating: once, by the one who rated."""
    ticket = await _ticket_for_household(session, actor_id, ticket_id)
    _require(ticket, TicketStatus.CLOSED)
    if ticket.rating is None or ticket.rating_comment or await _confirmer(session, ticket.id) != actor_id:
        raise InvalidTransition("no rating to comment on")
    return ticket


async def comment_on_rating(
    session: AsyncSession, *, actor_id: int, ticket_id: int, text: str, now: datetime
) -> Ticket:
    """The optional words after the rating: once, by the one who rated."""
    text = required_text(text, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_to_comment(session, actor_id, ticket_id)
        ticket.rating_comment = text
        event = await _record(session, ticket, EventKind.RATING_COMMENT, actor_id, now, note=text)
        await _tell_worker(session, ticket, event, now)
    return ticket


# --- the sweep: one reminder, then "resolved, unconfirmed" ------------------------------------------------


@dataclass
class ConfirmationSweep:
    """What one run of :func:`close_unconfirmed` did (ticket ids)."""

    reminded: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.reminded or self.closed)


async def close_unconfirmed(
    session: AsyncSession,
    now: datetime,
    *,
    within: timedelta = DEFAULT_WITHIN,
    remind_after: timedelta | None = None,
    batch: int = SWEEP_BATCH,
) -> ConfirmationSweep:
    """Remind, then close, resolved tickets nobody confirmed or reopened. Safe to run as often as you like.

    A ticket resolved ``remind_after`` ago (default: half of ``within``) gets one reminder ("Is it fixed?"
    again) for every household; one resolved ``within`` ago is closed as ``unconfirmed`` and the households
    are told. "Once" is kept by the database: a ``confirm_reminded`` event after the latest resolution, and
    the status itself, so a second run (or a second process) finds nothing left to do. Rows are locked with
    SKIP LOCKED on PostgreSQL, so a resident's answer at the same moment wins or waits, never doubles.
    Handles at most ``batch`` tickets of each kind per run; the next run takes the rest.
    """
    remind_after = within / 2 if remind_after is None else remind_after
    close_before, remind_before = now - within, now - remind_after
    result = ConfirmationSweep()
    async with session.begin():
        due_to_close = await session.scalars(
            select(Ticket.id)
            .where(Ticket.status == TicketStatus.RESOLVED, Ticket.resolved_at <= close_before)
            # The order of ix_tickets_status_resolved: the longest waiting first, read from the index alone.
            .order_by(Ticket.resolved_at, Ticket.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        for ticket_id in list(due_to_close):
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None
            ticket.status = TicketStatus.UNCONFIRMED
            ticket.closed_at = now
            event = await _record(
                session, ticket, EventKind.AUTO_CLOSED, None, now, days=within.total_seconds() / 86400
            )
            await tell_households(session, ticket, event, now)
            await refresh_copies(session, ticket, now)
            await post_closed_ticket(session, ticket, now)
            await settle_questions(session, ticket, event, now)
            result.closed.append(ticket_id)

        reminded_already = exists().where(
            TicketEvent.ticket_id == Ticket.id,
            TicketEvent.kind == EventKind.CONFIRM_REMINDED,
            TicketEvent.at >= Ticket.resolved_at,
        )
        # Only the resolved tickets whose wake_at has come: just resolved (to learn when their reminder is due),
        # or due for it. Reminded ones sleep (wake_at None); closing them goes by resolved_at, above.
        woken = await session.execute(
            select(Ticket.id, Ticket.resolved_at, reminded_already)
            .where(Ticket.status == TicketStatus.RESOLVED, Ticket.wake_at <= now)
            .order_by(Ticket.wake_at, Ticket.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        for ticket_id, resolved_at, reminded in list(woken):
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None and resolved_at is not None
            if resolved_at > remind_before:
                ticket.wake_at = resolved_at + remind_after
                continue
            ticket.wake_at = None
            if reminded or resolved_at <= close_before:
                continue
            close_at = resolved_at + within
            session.add(
                TicketEvent(
                    ticket_id=ticket.id,
                    at=now,
                    kind=EventKind.CONFIRM_REMINDED,
                    data={"close_at": close_at.isoformat()},
                )
            )
            for user_id in await household_ids(session, ticket):
                enqueue(
                    session, user_id, Notice.CONFIRM_REMINDER, now, ticket_id=ticket.id, close_at=close_at.isoformat()
                )
            result.reminded.append(ticket_id)
    return result
