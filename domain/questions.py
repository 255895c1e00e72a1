""" "Is it fixed?" kept current: the Yes / No buttons go once the question is settled.

The question reaches every household of a resolved ticket (with the resolution update, and again in the
reminder). The first answer settles it for all: the others' buttons would only be refused as out of date. So
each message that asked is recorded as it is sent, and when the question is answered, or the ticket closes
without an answer, each is edited through the outbox (in the transaction of that change) to say what happened,
with only the History button left. Then the copies are forgotten: a reopened ticket that is resolved again
asks afresh.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.outbox import Notice, enqueue
from storage.models import EventKind, Ticket, TicketEvent, TicketQuestionCopy, TicketStatus

# What settles the question: an answer, or the time to answer running out.
SETTLING = (EventKind.CONFIRMED, EventKind.REOPENED, EventKind.AUTO_CLOSED)


def _queue_edit(session: AsyncSession, copy: TicketQuestionCopy, answer: TicketEvent, now: datetime) -> None:
    enqueue(
        session,
        copy.chat_id,
        Notice.QUESTION_EDIT,
        now,
        ticket_id=copy.ticket_id,
        message_id=copy.message_id,
        asked_event_id=copy.event_id,
        answer_event_id=answer.id,
        caption=copy.caption,
    )


async def record_question(
    session: AsyncSession,
    *,
    ticket_id: int,
    chat_id: int,
    message_id: int,
    event_id: int | None,
    caption: bool,
    now: datetime,
) -> None:
    """A question the bot has just sent, inside the sender's transaction.

    The ticket is locked, so an answer committed meanwhile is seen here, and one still to come sees this copy;
    a question that was settled while it was on its way is edited at once.
    """
    ticket = await session.get(Ticket, ticket_id, with_for_update=True, populate_existing=True)
    if ticket is None:
        return
    copy = TicketQuestionCopy(
        ticket_id=ticket_id, chat_id=chat_id, message_id=message_id, event_id=event_id, caption=caption, sent_at=now
    )
    if ticket.status == TicketStatus.RESOLVED:
        session.add(copy)
        return
    answer = await session.scalar(
        select(TicketEvent)
        .where(TicketEvent.ticket_id == ticket_id, TicketEvent.kind.in_(SETTLING))
        .order_by(TicketEvent.id.desc())
        .limit(1)
    )
    if answer is not None:
        _queue_edit(session, copy, answer, now)


async def settle_questions(session: AsyncSession, ticket: Ticket, answer: TicketEvent, now: datetime) -> None:
    """The question is answered (or the ticket closed unanswered): queue an edit of every message that asked it,
    inside the caller's transaction, and forget them."""
    copies = await session.scalars(select(TicketQuestionCopy).where(TicketQuestionCopy.ticket_id == ticket.id))
    for copy in copies:
        _queue_edit(session, copy, answer, now)
    await session.execute(delete(TicketQuestionCopy).where(TicketQuestionCopy.ticket_id == ticket.id))
