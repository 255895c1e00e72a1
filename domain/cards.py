"""Cards kept current: every message holding a ticket's card is recorded, and edited when the ticket changes.

A worker may have several copies of one card (the one the bot sent when the ticket came to them, others
opened from /tickets or the ledger), and so may colleagues who opened it. When the ticket's status, assignee,
level or possible actions change, each copy is re-rendered from the ticket as it is then: an edit queued in
the outbox, in the transaction of the change, so it survives a crash and keeps to Telegram's rate limits.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.outbox import Notice, enqueue
from storage.models import Ticket, TicketCardCopy, TicketStatus

COPIES_PER_CHAT = 3
FINAL = frozenset({TicketStatus.CLOSED, TicketStatus.UNCONFIRMED})  # nothing on the card changes after these


def record_copy(session: AsyncSession, *, ticket_id: int, chat_id: int, message_id: int, now: datetime) -> None:
    """A card the bot has just sent, inside the caller's transaction."""
    session.add(TicketCardCopy(ticket_id=ticket_id, chat_id=chat_id, message_id=message_id, sent_at=now))


async def remember_copy(session: AsyncSession, *, ticket_id: int, chat_id: int, message_id: int, now: datetime) -> None:
    """A card shown as an answer (opened from a list): recorded in a transaction of its own."""
    async with session.begin():
        record_copy(session, ticket_id=ticket_id, chat_id=chat_id, message_id=message_id, now=now)


async def forget_copy(session: AsyncSession, *, chat_id: int, message_id: int) -> None:
    """Telegram no longer has the message (the person deleted it): nothing there to keep current."""
    await session.execute(
        delete(TicketCardCopy).where(TicketCardCopy.chat_id == chat_id, TicketCardCopy.message_id == message_id)
    )


async def refresh_copies(session: AsyncSession, ticket: Ticket, now: datetime) -> None:
    """Queue an edit of the ticket's card copies, inside the caller's transaction (the change's own).

    The newest ``COPIES_PER_CHAT`` in each chat are edited: someone who opened a card fifty times scrolls back
    through a few, not fifty, and a button on an older one is still refused when pressed. A ticket that is
    closed for good changes no more, so its copies are forgotten once their last edit is queued.
    """
    copies = await session.execute(
        select(TicketCardCopy.chat_id, TicketCardCopy.message_id)
        .where(TicketCardCopy.ticket_id == ticket.id)
        .order_by(TicketCardCopy.id.desc())
    )
    per_chat: Counter[int] = Counter()
    for chat_id, message_id in copies:
        per_chat[chat_id] += 1
        if per_chat[chat_id] <= COPIES_PER_CHAT:
            enqueue(session, chat_id, Notice.CARD_EDIT, now, ticket_id=ticket.id, message_id=message_id)
    if ticket.status in FINAL:
        await session.execute(delete(TicketCardCopy).where(TicketCardCopy.ticket_id == ticket.id))
