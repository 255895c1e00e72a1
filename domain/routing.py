"""Who should handle a ticket: building → grid → that grid's workers, else community staff.

Among candidates the rule is the same at every level: primary before backup, then the fewest open tickets,
then the one whose last assignment is oldest (idle longest). Every decision carries its reason, which is
written to the ticket's history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, bindparam, event, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.db import execute_pipelined
from storage.models import Level, Membership, Rank, Role, Ticket, TicketStatus, User


class RouteReason(StrEnum):
    GRID_WORKER = "grid_worker"  # the grid's least-loaded worker
    CATEGORY_LEVEL = "category_level"  # the category is handled above the grid
    NO_GRID_WORKER = "no_grid_worker"  # the grid has nobody (left) to take it
    UNROUTED = "unrouted"  # nobody at all: the community file lacks staff
    OVERDUE = "overdue"  # the assignee did not accept in time (the deadline sweep)
    ESCALATED = "escalated"  # moved up the ladder (by hand, or by the sweep when overdue)
    SENT_DOWN = "sent_down"  # sent back down the ladder


@dataclass(frozen=True)
class Candidate:
    user_id: int
    role: str
    rank: str
    open_tickets: int
    last_assigned_at: datetime | None
    reachable: bool = True  # False once Telegram said they blocked the bot (or never started it)


@dataclass(frozen=True)
class RoutingDecision:
    assignee: Candidate | None
    reason: RouteReason
    level: Level
    considered: list[Candidate] = field(default_factory=list)

    def as_event_data(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "level": self.level,
            "assignee": self.assignee.user_id if self.assignee else None,
            "candidates": [
                {"user": c.user_id, "rank": c.rank, "open": c.open_tickets, "reachable": c.reachable}
                for c in self.considered
            ],
        }


def _least_loaded_first(candidate: Candidate) -> tuple[Any, ...]:
    never_assigned = candidate.last_assigned_at is None
    return (
        not candidate.reachable,
        candidate.rank != Rank.PRIMARY,
        candidate.open_tickets,
        not never_assigned,
        candidate.last_assigned_at.timestamp() if candidate.last_assigned_at else 0.0,
        candidate.user_id,
    )


_MEMBERSHIPS = cast(Table, Membership.__table__)
_USERS = cast(Table, User.__table__)
# Built once (with bound parameters): constructing these on every report cost as much as running them. Of the
# tables, not the mapped classes: a query of mapped attributes goes through the ORM's loading at every execution,
# which cost more than the rest of it (bench/intake.py).
_COMMUNITY_CANDIDATES = (
    select(
        _MEMBERSHIPS.c.user_id,
        _MEMBERSHIPS.c.rank,
        func.max(_MEMBERSHIPS.c.last_assigned_at).label("last_assigned_at"),
        _USERS.c.open_tickets,
        _USERS.c.unreachable_at.is_(None).label("reachable"),
    )
    .join(_USERS, _USERS.c.id == _MEMBERSHIPS.c.user_id)
    .where(
        _MEMBERSHIPS.c.community_id == bindparam("community_id"),
        _MEMBERSHIPS.c.role == bindparam("role"),
        _MEMBERSHIPS.c.active.is_(True),
    )
    .group_by(_MEMBERSHIPS.c.user_id, _MEMBERSHIPS.c.rank, _USERS.c.unreachable_at, _USERS.c.open_tickets)
)
_GRID_CANDIDATES = _COMMUNITY_CANDIDATES.where(_MEMBERSHIPS.c.grid_id == bindparam("grid_id"))
_SCOPED_CANDIDATES = _COMMUNITY_CANDIDATES.where(_MEMBERSHIPS.c.scope == bindparam("scope"))
# A plain table statement: what is read of it later is read in SQL (the candidates), never from loaded objects.
_RECORD_ASSIGNMENT = (
    update(_MEMBERSHIPS)
    .where(_MEMBERSHIPS.c.community_id == bindparam("in_community"), _MEMBERSHIPS.c.user_id == bindparam("person"))
    .values(last_assigned_at=bindparam("now"))
)


async def _candidates(session: AsyncSession, *, role: Role, community_id: int, grid_id: int | None) -> list[Candidate]:
    if grid_id is None:
        query, params = _COMMUNITY_CANDIDATES, {"community_id": community_id, "role": role}
    else:
        query, params = _GRID_CANDIDATES, {"community_id": community_id, "role": role, "grid_id": grid_id}
    rows = (await session.execute(query, params)).all()
    return [Candidate(r.user_id, role, r.rank, r.open_tickets, r.last_assigned_at, bool(r.reachable)) for r in rows]


async def choose_assignee(
    session: AsyncSession,
    *,
    community_id: int,
    grid_id: int,
    category_level: str,
    exclude: Collection[int] = (),
) -> RoutingDecision:
    """Pick who gets the ticket; ``exclude`` holds people who already handed it back."""
    if category_level == Level.GRID:
        # A worker Telegram cannot reach would never see the card: the ticket goes on to staff instead.
        workers = [
            c
            for c in await _candidates(session, role=Role.GRID_WORKER, community_id=community_id, grid_id=grid_id)
            if c.user_id not in exclude and c.reachable
        ]
        if workers:
            workers.sort(key=_least_loaded_first)
            return RoutingDecision(workers[0], RouteReason.GRID_WORKER, Level.GRID, workers)
        reason = RouteReason.NO_GRID_WORKER
    else:
        reason = RouteReason.CATEGORY_LEVEL

    staff = [
        c
        for c in await _candidates(session, role=Role.STAFF, community_id=community_id, grid_id=None)
        if c.user_id not in exclude
    ]
    if not staff:
        return RoutingDecision(None, RouteReason.UNROUTED, Level.COMMUNITY)
    # Staff are the last resort, so even an unreachable one is better than nobody: /tickets shows it to them.
    staff.sort(key=_least_loaded_first)
    return RoutingDecision(staff[0], reason, Level.COMMUNITY, staff)


def record_assignment(session: Session, *, community_id: int, user_id: int, now: datetime) -> None:
    """Remember when someone was last given a ticket: the tie-breaker for the next one. Sent with the
    transaction's next statement (on SQLite, one trip to its thread fewer)."""
    params = {"in_community": community_id, "person": user_id, "now": now}
    execute_pipelined(session, _RECORD_ASSIGNMENT, params)


LEVEL_ROLES = {Level.COMMUNITY: Role.STAFF, Level.STREET: Role.STREET, Level.DEPARTMENT: Role.DEPARTMENT}


async def choose_at_level(
    session: AsyncSession,
    *,
    community_id: int,
    level: Level,
    department: str | None = None,
    reason: RouteReason,
    exclude: Collection[int] = (),
) -> RoutingDecision:
    """Pick someone at a level above the grid (staff, the street office, one department) by the usual rule.

    The decision's assignee is None when that level has nobody (left) to take the ticket.
    """
    role = LEVEL_ROLES[level]
    params = {"community_id": community_id, "role": role}
    query = _COMMUNITY_CANDIDATES
    if level == Level.DEPARTMENT:
        query, params = _SCOPED_CANDIDATES, {**params, "scope": department or ""}
    rows = (await session.execute(query, params)).all()
    people = [
        Candidate(r.user_id, role, r.rank, r.open_tickets, r.last_assigned_at, bool(r.reachable))
        for r in rows
        if r.user_id not in exclude
    ]
    if not people:
        return RoutingDecision(None, reason, level)
    people.sort(key=_least_loaded_first)
    return RoutingDecision(people[0], reason, level, people)


# --- the load: each person's open tickets, counted as tickets change -------------------------------------

_ADD_LOAD = (
    update(_USERS)
    .where(_USERS.c.id == bindparam("person"))
    .values(open_tickets=_USERS.c.open_tickets + bindparam("by"))
)


def _before(ticket: Ticket, name: str) -> Any:
    """An attribute's value before this flush."""
    history = inspect(ticket).attrs[name].history
    return (history.deleted or history.unchanged or (None,))[0]


@event.listens_for(Session, "after_flush")
def _count_load(session: Session, flush_context: Any) -> None:
    """Keep ``User.open_tickets`` right in the transaction that files, hands on, accepts, resolves or reopens
    a ticket: one open ticket less for who had it, one more for who has it now. Any path that writes a ticket
    through the session comes here, so none can forget it (filing, which does not, calls ``add_load``). People
    are updated in id order, so two transactions never wait on each other's rows in a cycle."""
    load: Counter[int] = Counter()
    for ticket in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(ticket, Ticket):
            continue
        status = ticket.status or TicketStatus.ASSIGNED  # a new ticket's status may be the column default
        open_now = ticket not in session.deleted and status in TicketStatus.open_statuses()
        now_with = ticket.assignee_id if open_now else None
        if ticket in session.new:
            before_with = None
        else:
            before_with = (
                _before(ticket, "assignee_id") if _before(ticket, "status") in TicketStatus.open_statuses() else None
            )
        if before_with != now_with:
            if before_with is not None:
                load[before_with] -= 1
            if now_with is not None:
                load[now_with] += 1
    add_load(session, load)


def add_load(session: Session, load: Mapping[int, int]) -> None:
    """Add to each person's ``open_tickets``, in id order, with the transaction's next statement (the hook above,
    and filing, which inserts the new ticket with a plain statement: domain/tickets.py)."""
    changes = [{"person": person, "by": by} for person, by in sorted(load.items()) if by]
    if changes:
        execute_pipelined(session, _ADD_LOAD, changes)
