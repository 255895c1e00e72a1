"""Public notices (公示) in a community's own Telegram channel or group, named in its community file.

It is the one place the bot posts outside private chats, and only what is meant for everyone: the monthly
execution feedback, each topic's public notice, and, when the office switches it on, a short notice of each
closed ticket (category, building, what was done, the "after" photo), never who reported it. Each post is an
outbox row written in the transaction of the change it announces, so it is retried like every other message.

What is posted there reaches residents privately only when it is their own matter or they asked for a copy:
the execution feedback goes privately only to those who asked (``users.public_copy``, in /settings); a topic's
public notice goes to the residents behind the topic, as every step of it did, and to those who asked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.outbox import Notice, enqueue
from storage.models import Building, Community, Compound, Ticket, User


async def post_publicly(session: AsyncSession, community_id: int, now: datetime, **payload: Any) -> bool:
    """Queue a post in the community's public chat, inside the caller's transaction; False when it has none."""
    chat_id = await session.scalar(select(Community.public_chat_id).where(Community.id == community_id))
    if chat_id is None:
        return False
    enqueue(session, chat_id, Notice.PUBLIC_POST, now, **payload)
    return True


# Residents who did not turn broadcasts off and have not blocked the bot: the condition of ix_users_recipients.
WANTS_BROADCASTS = (User.broadcasts_off.is_(False), User.unreachable_at.is_(None))
# ... who also asked for a private copy of what their community posts publicly (/settings).
WANTS_A_COPY = (*WANTS_BROADCASTS, User.public_copy.is_(True))


async def private_copies(session: AsyncSession, community_id: int) -> list[int]:
    """The residents of the community who asked for a private copy of what it posts publicly (/settings,
    ``users.public_copy``), want broadcasts and have not blocked the bot; by id. Inside the caller's transaction."""
    return list(
        await session.scalars(
            select(User.id)
            .join(Building, Building.id == User.building_id)
            .join(Compound, Compound.id == Building.compound_id)
            .where(Compound.community_id == community_id, Building.active.is_(True), *WANTS_A_COPY)
            .order_by(User.id)
        )
    )


async def post_closed_ticket(session: AsyncSession, ticket: Ticket, now: datetime) -> bool:
    """A closed ticket's short public notice, when the community posts those; inside the caller's transaction."""
    wanted = await session.scalar(select(Community.public_closed_tickets).where(Community.id == ticket.community_id))
    if not wanted:
        return False
    return await post_publicly(session, ticket.community_id, now, ticket_id=ticket.id)


async def public_chat_community(session: AsyncSession, chat_id: int) -> Community | None:
    """The community whose public notice chat this is, if any."""
    async with session.begin():
        return await session.scalar(select(Community).where(Community.public_chat_id == chat_id).limit(1))
