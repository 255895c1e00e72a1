"""The three-colour ledger (三色台账) for community staff: open tickets by colour per grid, and the red ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.deadlines import DEFAULT_YELLOW_SHARE, Colour, ticket_colour
from domain.errors import AccessDenied
from domain.people import load_duties
from storage.models import Building, Compound, Grid, Membership, Ticket, TicketStatus, User

MAX_RED_ITEMS = 30


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
        open_tickets = await session.scalars(
            select(Ticket).where(Ticket.community_id.in_(communities), Ticket.status.in_(TicketStatus.open_statuses()))
        )
        red: list[tuple[datetime, Ticket]] = []
        for ticket in open_tickets:
            colour = ticket_colour(ticket, now, yellow_share) or Colour.GREEN
            line = lines.get(ticket.grid_id)
            if line is not None:
                line.counts[colour] += 1
            if colour == Colour.RED:
                due = ticket.respond_by if ticket.status == TicketStatus.ASSIGNED else ticket.resolve_by
                red.append((due or now, ticket))
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
    red.sort(key=lambda item: (item[0], item[1].id))
    shown = [line for line in lines.values() if line.grid.active or any(line.counts.values())]
    return Ledger(
        shown,
        [ticket for _, ticket in red[:MAX_RED_ITEMS]],
        len(red),
        unreachable_staff,
        unreachable_residents or 0,
    )
