"""The three-colour ledger (三色台账) for community staff: open tickets by colour per grid, and the red ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.deadlines import DEFAULT_YELLOW_SHARE, Colour, ticket_colour
from domain.errors import AccessDenied
from domain.people import load_duties
from storage.models import (
    Building,
    Category,
    Compound,
    Grid,
    Membership,
    OutboxMessage,
    OutboxStatus,
    Ticket,
    TicketStatus,
    Topic,
    User,
)

MAX_RED_ITEMS = 30
# Personal messages that finally failed are shown for this long, at most this many (newest first).
UNDELIVERED_WINDOW = timedelta(days=7)
MAX_UNDELIVERED = 10


@dataclass(frozen=True)
class Undelivered:
    """A personal message the sender gave up on: what it was, for whom, and Telegram's last answer."""

    kind: str  # a domain.outbox.Notice
    recipient: str
    ticket_id: int | None
    topic_id: int | None
    error: str
    queued_at: datetime


@dataclass(frozen=True)
class OpenTicket:
    status: str
    respond_by: datetime | None
    resolve_by: datetime | None
    category: Category


@dataclass
class GridLine:
    grid: Grid
    counts: dict[Colour, int] = field(default_factory=lambda: dict.fromkeys(Colour, 0))


@dataclass
class Ledger:
    lines: list[GridLine]
    red: list[Ticket]  # overdue tickets, most overdue first (at most MAX_RED_ITEMS)
    red_total: int
    # Telegram answered 403 for these: their cards and updates cannot reach them until they write to the bot.
    unreachable_staff: list[str] = field(default_factory=list)  # names of workers, staff, officials
    unreachable_residents: int = 0
    undelivered: list[Undelivered] = field(default_factory=list)
    undelivered_total: int = 0

    def total(self, colour: Colour) -> int:
        return sum(line.counts[colour] for line in self.lines)


async def ledger(
    session: AsyncSession, *, viewer_id: int, now: datetime, yellow_share: float = DEFAULT_YELLOW_SHARE
) -> Ledger:
    """Counts by colour per grid of the communities ``viewer_id`` staffs; refused for anyone else."""
    async with session.begin():
        duties = await load_duties(session, viewer_id)
        communities = duties.staff_community_ids
        if not communities:
            raise AccessDenied("ledger")
        grids = list(
            await session.scalars(
                select(Grid).where(Grid.community_id.in_(communities)).order_by(Grid.community_id, Grid.id)
            )
        )
        lines = {grid.id: GridLine(grid) for grid in grids}
        categories = {
            category.id: category
            for category in await session.scalars(select(Category).where(Category.community_id.in_(communities)))
        }
        # Only the columns a colour needs: a district's ledger colours tens of thousands of open tickets, and
        # only the red ones shown are loaded whole.
        open_tickets = await session.execute(
            select(
                Ticket.id, Ticket.grid_id, Ticket.status, Ticket.respond_by, Ticket.resolve_by, Ticket.category_id
            ).where(Ticket.community_id.in_(communities), Ticket.status.in_(TicketStatus.open_statuses()))
        )
        red: list[tuple[datetime, int]] = []
        for ticket_id, grid_id, status, respond_by, resolve_by, category_id in open_tickets:
            timed = OpenTicket(status, respond_by, resolve_by, categories[category_id])
            colour = ticket_colour(timed, now, yellow_share) or Colour.GREEN
            line = lines.get(grid_id)
            if line is not None:
                line.counts[colour] += 1
            if colour == Colour.RED:
                due = respond_by if status == TicketStatus.ASSIGNED else resolve_by
                red.append((due or now, ticket_id))
        red.sort()
        shown_red = [ticket_id for _, ticket_id in red[:MAX_RED_ITEMS]]
        loaded = {ticket.id: ticket for ticket in await session.scalars(select(Ticket).where(Ticket.id.in_(shown_red)))}
        unreachable_staff = sorted(
            set(
                await session.scalars(
                    select(Membership.display_name)
                    .join(User, User.id == Membership.user_id)
                    .where(
                        Membership.community_id.in_(communities),
                        Membership.active.is_(True),
                        User.unreachable_at.is_not(None),
                    )
                )
            )
        )
        unreachable_residents = await session.scalar(
            select(func.count(User.id))
            .join(Building, Building.id == User.building_id)
            .join(Compound, Compound.id == Building.compound_id)
            .where(Compound.community_id.in_(communities), User.unreachable_at.is_not(None))
        )
        undelivered = await undelivered_messages(session, communities, now)
    shown = [line for line in lines.values() if line.grid.active or any(line.counts.values())]
    return Ledger(
        shown,
        [loaded[ticket_id] for ticket_id in shown_red],
        len(red),
        unreachable_staff,
        unreachable_residents or 0,
        undelivered[:MAX_UNDELIVERED],
        len(undelivered),
    )


async def undelivered_messages(session: AsyncSession, communities: frozenset[int], now: datetime) -> list[Undelivered]:
    """Failed personal messages of the last days about tickets or topics of ``communities``, newest first."""
    rows = (
        await session.execute(
            select(OutboxMessage, User.full_name)
            .outerjoin(User, User.id == OutboxMessage.chat_id)
            .where(
                OutboxMessage.status == OutboxStatus.FAILED,
                OutboxMessage.broadcast_id.is_(None),
                OutboxMessage.created_at >= now - UNDELIVERED_WINDOW,
            )
            .order_by(OutboxMessage.id.desc())
            .limit(500)
        )
    ).all()
    ticket_ids = {row.payload["ticket_id"] for row, _ in rows if "ticket_id" in row.payload}
    topic_ids = {row.payload["topic_id"] for row, _ in rows if "topic_id" in row.payload}
    ours_tickets = set(
        await session.scalars(select(Ticket.id).where(Ticket.id.in_(ticket_ids), Ticket.community_id.in_(communities)))
    )
    ours_topics = set(
        await session.scalars(select(Topic.id).where(Topic.id.in_(topic_ids), Topic.community_id.in_(communities)))
    )
    found = []
    for row, name in rows:
        ticket_id, topic_id = row.payload.get("ticket_id"), row.payload.get("topic_id")
        if ticket_id in ours_tickets or topic_id in ours_topics:
            found.append(Undelivered(row.kind, name or "", ticket_id, topic_id, row.error, row.created_at))
    return found
