"""The escalation ladder: grid → community → street office → department (小事不出网格 … 街乡吹哨、部门报到).

- A grid worker escalates a ticket to the community office, with a reason.
- Community staff escalate further, to the street office or straight to a chosen department, or send it back
  down to the grid with an instruction.
- The street office escalates to a department, or sends it down to the community office.
- A department resolves it, or sends it back to the level it came from.
- The deadline sweep escalates an accepted ticket one level when its resolve-by deadline has passed.

Every move starts fresh deadlines at the new level, is written to the ticket's history (an ``escalated`` or
``sent_down`` event, then the ``routed`` event with the new assignee), sends the new assignee the card, and
tells the resident who now handles it. Access is checked here for every action: button data can be forged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.cards import refresh_copies
from domain.deadlines import start_window
from domain.errors import InvalidTransition
from domain.outbox import Notice, enqueue
from domain.routing import RouteReason, RoutingDecision, choose_assignee, choose_at_level
from domain.text import required_text
from domain.tickets import (
    MAX_NOTE,
    FiledTicket,
    NobodyToHandTo,
    _apply_decision,
    _record_routing,
    _ticket_for_worker,
)
from storage.models import Department, EventKind, Level, Membership, Role, Ticket, TicketEvent

LADDER = (Level.GRID, Level.COMMUNITY, Level.STREET, Level.DEPARTMENT)


@dataclass(frozen=True)
class Target:
    """Where a ticket can go up to: a level, and for the department level which department."""

    level: Level
    department: str | None = None
    name: str = ""  # the department's names, for buttons and messages
    name_en: str = ""


def _check_open(ticket: Ticket) -> None:
    if not ticket.is_open:
        raise InvalidTransition(ticket.status)


async def _departments(session: AsyncSession, community_id: int) -> list[Target]:
    """Active departments that have at least one active person, in file order."""
    staffed = exists().where(
        Membership.community_id == community_id,
        Membership.role == Role.DEPARTMENT,
        Membership.scope == Department.code,
        Membership.active.is_(True),
    )
    rows = await session.scalars(
        select(Department)
        .where(Department.community_id == community_id, Department.active.is_(True), staffed)
        .order_by(Department.sort_order, Department.id)
    )
    return [Target(Level.DEPARTMENT, d.code, d.name, d.name_en) for d in rows]


async def _has_street(session: AsyncSession, community_id: int) -> bool:
    found = await session.scalar(
        select(
            exists().where(
                Membership.community_id == community_id,
                Membership.role == Role.STREET,
                Membership.active.is_(True),
            )
        )
    )
    return bool(found)


async def _targets(session: AsyncSession, ticket: Ticket) -> list[Target]:
    match ticket.level:
        case Level.GRID:
            return [Target(Level.COMMUNITY)]
        case Level.COMMUNITY:
            street = [Target(Level.STREET)] if await _has_street(session, ticket.community_id) else []
            return street + await _departments(session, ticket.community_id)
        case Level.STREET:
            return await _departments(session, ticket.community_id)
    return []


async def escalation_targets(session: AsyncSession, *, actor_id: int, ticket_id: int) -> list[Target]:
    """Where ``actor_id`` may escalate the ticket now; refuses (like ``escalate``) if they may not at all."""
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        _check_open(ticket)
        targets = await _targets(session, ticket)
    if not targets:
        raise InvalidTransition(ticket.level)
    return targets


async def department_names(session: AsyncSession, community_id: int) -> dict[str, tuple[str, str]]:
    """Every department's (name, name_en) by code, inside the caller's transaction."""
    rows = await session.execute(
        select(Department.code, Department.name, Department.name_en).where(Department.community_id == community_id)
    )
    return {code: (name, name_en) for code, name, name_en in rows}


async def _move(
    session: AsyncSession,
    ticket: Ticket,
    decision: RoutingDecision,
    kind: EventKind,
    actor_id: int | None,
    note: str,
    now: datetime,
    department: str | None = None,
    **extra: Any,
) -> TicketEvent:
    """Record the move, hand the ticket to the new level's person with fresh deadlines, tell the resident."""
    data: dict[str, Any] = {"from": ticket.level, "to": decision.level, **extra}
    if department is not None:
        data["department"] = department
        names = (await department_names(session, ticket.community_id)).get(department)
        if names is not None:
            data["department_name"], data["department_name_en"] = names
    event = TicketEvent(ticket_id=ticket.id, at=now, actor_id=actor_id, kind=kind, note=note, data=data)
    session.add(event)
    _apply_decision(ticket, decision, now)
    ticket.department = department if decision.level == Level.DEPARTMENT else None
    start_window(ticket, ticket.category, now)
    await session.flush()
    await _record_routing(session, ticket, decision, now)
    await refresh_copies(session, ticket, now)
    enqueue(session, ticket.reporter_id, Notice.TICKET_UPDATE, now, ticket_id=ticket.id, event_id=event.id)
    return event


async def escalate(
    session: AsyncSession,
    *,
    actor_id: int,
    ticket_id: int,
    level: Level,
    department: str | None,
    reason: str,
    now: datetime,
) -> FiledTicket:
    """Send the ticket up to ``level`` (and ``department``), which must be one of ``escalation_targets``."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        _check_open(ticket)
        allowed = {(t.level, t.department) for t in await _targets(session, ticket)}
        wanted = (level, department if level == Level.DEPARTMENT else None)
        if wanted not in allowed:
            raise InvalidTransition(f"cannot escalate from {ticket.level} to {level}")
        decision = await choose_at_level(
            session,
            community_id=ticket.community_id,
            level=level,
            department=wanted[1],
            reason=RouteReason.ESCALATED,
            exclude={actor_id},
        )
        if decision.assignee is None:
            raise NobodyToHandTo(ticket_id)
        await _move(session, ticket, decision, EventKind.ESCALATED, actor_id, reason, now, department=wanted[1])
    return FiledTicket(ticket, decision)


async def _escalations(session: AsyncSession, ticket: Ticket) -> list[TicketEvent]:
    """The ticket's escalations, oldest first: the last one brought it to its current level."""
    return list(
        await session.scalars(
            select(TicketEvent)
            .where(TicketEvent.ticket_id == ticket.id, TicketEvent.kind == EventKind.ESCALATED)
            .order_by(TicketEvent.id)
        )
    )


async def _down_decision(session: AsyncSession, ticket: Ticket, exclude: set[int]) -> RoutingDecision:
    escalations = await _escalations(session, ticket)
    came_from = escalations[-1].data.get("from") if escalations else None
    if ticket.level == Level.COMMUNITY:
        below = Level.GRID
    elif ticket.level == Level.DEPARTMENT and came_from == Level.STREET:
        below = Level.STREET
    else:
        below = Level.COMMUNITY
    if below == Level.GRID:
        decision = await choose_assignee(
            session, community_id=ticket.community_id, grid_id=ticket.grid_id, category_level=Level.GRID
        )
        if decision.level != Level.GRID:
            return RoutingDecision(None, RouteReason.SENT_DOWN, Level.GRID)
        # The worker who escalated it knows the case best: back to them if they can still take it.
        escalated_by = next((e.actor_id for e in reversed(escalations) if e.data.get("from") == Level.GRID), None)
        chosen = next((c for c in decision.considered if c.user_id == escalated_by), decision.assignee)
        return RoutingDecision(chosen, RouteReason.SENT_DOWN, Level.GRID, decision.considered)
    decision = await choose_at_level(
        session, community_id=ticket.community_id, level=below, reason=RouteReason.SENT_DOWN, exclude=exclude
    )
    if decision.assignee is None and below == Level.STREET:
        decision = await choose_at_level(
            session,
            community_id=ticket.community_id,
            level=Level.COMMUNITY,
            reason=RouteReason.SENT_DOWN,
            exclude=exclude,
        )
    return decision


async def send_down(
    session: AsyncSession, *, actor_id: int, ticket_id: int, instruction: str, now: datetime
) -> FiledTicket:
    """Send the ticket back down with an instruction: community → grid, street → community, department →
    the level it came from."""
    instruction = required_text(instruction, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        _check_open(ticket)
        if ticket.level == Level.GRID:
            raise InvalidTransition(ticket.level)
        decision = await _down_decision(session, ticket, {actor_id})
        if decision.assignee is None:
            raise NobodyToHandTo(ticket_id)
        await _move(session, ticket, decision, EventKind.SENT_DOWN, actor_id, instruction, now)
    return FiledTicket(ticket, decision)


def level_above(level: str) -> Level | None:
    """The next level up for the sweep's automatic escalation; None at the street office and above (a
    department must be chosen by a person)."""
    match level:
        case Level.GRID:
            return Level.COMMUNITY
        case Level.COMMUNITY:
            return Level.STREET
    return None


async def escalate_overdue(session: AsyncSession, ticket: Ticket, now: datetime, due: datetime) -> bool:
    """Escalate an accepted ticket past its resolve-by deadline one level, inside the caller's transaction.

    False when there is no level above that the sweep can choose, or nobody there.
    """
    above = level_above(ticket.level)
    if above is None:
        return False
    decision = await choose_at_level(
        session, community_id=ticket.community_id, level=above, reason=RouteReason.ESCALATED
    )
    if decision.assignee is None:
        return False
    await _move(session, ticket, decision, EventKind.ESCALATED, None, "", now, auto=True, due=due.isoformat())
    return True


async def check_send_down(session: AsyncSession, *, actor_id: int, ticket_id: int) -> None:
    """Refuses (like ``send_down``) when ``actor_id`` may not send the ticket down now."""
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        _check_open(ticket)
        if ticket.level == Level.GRID:
            raise InvalidTransition(ticket.level)
