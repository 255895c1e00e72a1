""" "Me too": a resident joins a neighbour's open ticket instead of filing the same problem again.

A joined resident is an affected household (``ticket_followers``): told about the ticket like its reporter
(accepted, progress, resolved, "Is it fixed?"), allowed to answer that question, and counted on the worker's
card. Nobody's identity is shown to anyone: the list a resident sees holds number, words, date and status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import String, Table, bindparam, exists, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.cards import refresh_copies
from domain.errors import AccessDenied, DomainError, InvalidTransition, NotFound
from domain.households import require_verified
from domain.outbox import Notice, enqueue
from storage.db import read_alone
from storage.models import (
    EventKind,
    Ticket,
    TicketEvent,
    TicketFollower,
    TicketStatus,
    User,
    Verification,
    VerificationStatus,
)

SIMILAR_LIMIT = 5


class OwnTicket(DomainError):
    """A resident cannot say "me too" to their own report."""


class AlreadyJoined(DomainError):
    """The resident has joined this ticket already."""


@dataclass(frozen=True)
class SimilarTicket:
    """What a neighbour may see of an open ticket: no names, no place beyond their own building.

    ``description`` is None for a resident who is not a verified household of the building: they learn that
    neighbours reported it, not what they wrote, and cannot join.
    """

    id: int
    description: str | None
    created_at: datetime
    status: str


# Of the tables, not the mapped classes: a query of mapped attributes goes through the ORM's loading at every
# execution, which cost more than the rest of it (bench/intake.py).
_TICKETS = cast(Table, Ticket.__table__)
_FOLLOWERS = cast(Table, TicketFollower.__table__)
_VERIFICATIONS = cast(Table, Verification.__table__)
# Whether the resident speaks for a verified household of the building: asked in the same query as the list.
_VERIFIED_HERE = (
    exists()
    .where(
        _VERIFICATIONS.c.user_id == bindparam("user_id"),
        _VERIFICATIONS.c.status == VerificationStatus.VERIFIED,
        _VERIFICATIONS.c.building_id == bindparam("building_id"),
    )
    .label("verified")
)

# Written into the statement: a list of parameters (``IN`` of values) is rendered again at every execution.
_OPEN = [literal_column(f"'{status}'", String) for status in TicketStatus.open_statuses()]
# Built once: it runs every time a resident picks a category.
_SIMILAR = (
    select(_TICKETS.c.id, _TICKETS.c.description, _TICKETS.c.created_at, _TICKETS.c.status, _VERIFIED_HERE)
    .where(
        _TICKETS.c.building_id == bindparam("building_id"),
        _TICKETS.c.category_id == bindparam("category_id"),
        _TICKETS.c.status.in_(_OPEN),
        _TICKETS.c.reporter_id != bindparam("user_id"),
        ~exists().where(_FOLLOWERS.c.ticket_id == _TICKETS.c.id, _FOLLOWERS.c.user_id == bindparam("user_id")),
    )
    .order_by(_TICKETS.c.id.desc())
    .limit(bindparam("limit"))
)


async def similar_open_tickets(
    session: AsyncSession, *, user_id: int, building_id: int, category_id: int, limit: int = SIMILAR_LIMIT
) -> list[SimilarTicket]:
    """Open tickets of this category in this building that the resident could join (newest first).

    Their own reports and tickets they joined already are left out, and the descriptions are left out for a
    resident who is not verified here. One query, without a transaction of its own (AUTOCOMMIT_READ): on SQLite it
    takes no write lock, and shown at the report wizard's category step it costs one trip.
    """
    params = {"building_id": building_id, "category_id": category_id, "user_id": user_id, "limit": limit}
    rows = await read_alone(session, _SIMILAR, params)
    return [SimilarTicket(r.id, r.description if r.verified else None, r.created_at, r.status) for r in rows]


async def follower_ids(session: AsyncSession, ticket_id: int) -> list[int]:
    """The joined households of a ticket, in the order they joined (inside the caller's transaction)."""
    return list(
        await session.scalars(
            select(TicketFollower.user_id).where(TicketFollower.ticket_id == ticket_id).order_by(TicketFollower.id)
        )
    )


async def household_ids(session: AsyncSession, ticket: Ticket) -> list[int]:
    """Everyone affected: the reporter first, then the households that joined."""
    return [ticket.reporter_id, *(u for u in await follower_ids(session, ticket.id) if u != ticket.reporter_id)]


async def households(session: AsyncSession, ticket_id: int) -> int:
    """How many households the ticket affects: its reporter and everyone who joined."""
    joined = await session.scalar(select(func.count()).where(TicketFollower.ticket_id == ticket_id))
    return 1 + int(joined or 0)


async def is_follower(session: AsyncSession, ticket_id: int, user_id: int) -> bool:
    found = await session.scalar(
        select(TicketFollower.id).where(TicketFollower.ticket_id == ticket_id, TicketFollower.user_id == user_id)
    )
    return found is not None


async def is_household(session: AsyncSession, ticket: Ticket, user_id: int) -> bool:
    """The reporter or a household that joined: those who may answer "Is it fixed?"."""
    return ticket.reporter_id == user_id or await is_follower(session, ticket.id, user_id)


async def tell_households(
    session: AsyncSession, ticket: Ticket, event: TicketEvent, now: datetime, *, skip: int | None = None
) -> None:
    """Queue the update about ``event`` for the reporter and every joined household (but ``skip``)."""
    for user_id in await household_ids(session, ticket):
        if user_id != skip:
            enqueue(session, user_id, Notice.TICKET_UPDATE, now, ticket_id=ticket.id, event_id=event.id)


async def join(session: AsyncSession, *, user_id: int, ticket_id: int, now: datetime) -> tuple[Ticket, int]:
    """Add the resident to a neighbour's open ticket as an affected household; returns it and the new count.

    Refused for a ticket in another building (or a forged id), for a resident who is not a verified household
    of the building, for one's own ticket, for a ticket that is no longer open, and a second time.
    """
    async with session.begin():
        ticket = await session.get(Ticket, ticket_id, with_for_update=True)
        if ticket is None:
            raise NotFound(ticket_id)
        user = await session.get(User, user_id)
        if user is None or user.building_id != ticket.building_id:
            raise AccessDenied(ticket_id)
        await require_verified(session, user_id, ticket.building_id)
        if ticket.reporter_id == user_id:
            raise OwnTicket(ticket_id)
        if not ticket.is_open:
            raise InvalidTransition(ticket.status)
        if await is_follower(session, ticket_id, user_id):
            raise AlreadyJoined(ticket_id)
        session.add(TicketFollower(ticket_id=ticket_id, user_id=user_id, joined_at=now))
        await session.flush()
        count = await households(session, ticket_id)
        event = TicketEvent(
            ticket_id=ticket_id, at=now, actor_id=user_id, kind=EventKind.JOINED, data={"households": count}
        )
        session.add(event)
        await session.flush()
        await tell_households(session, ticket, event, now, skip=user_id)  # the reporter hears of a new household
        await refresh_copies(session, ticket, now)  # the card counts households
    return ticket, count
