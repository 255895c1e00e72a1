"""Who someone is: their user record, the building they live in, and the duties they hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.errors import NotFound
from domain.households import end_on_move
from domain.text import clean
from storage.db import read_alone
from storage.models import Building, Community, Compound, Level, Membership, Role, Ticket, User


@dataclass(frozen=True)
class Duties:
    """The grids someone works in, the communities they staff, and their street-office and department duties."""

    grid_ids: frozenset[int] = field(default_factory=frozenset)
    staff_community_ids: frozenset[int] = field(default_factory=frozenset)
    street_community_ids: frozenset[int] = field(default_factory=frozenset)
    departments: frozenset[tuple[int, str]] = field(default_factory=frozenset)  # (community id, department code)

    @property
    def is_worker(self) -> bool:
        return bool(self.grid_ids or self.staff_community_ids or self.street_community_ids or self.departments)

    def covers(self, ticket: Ticket) -> bool:
        """May see the ticket: own grid, own community (staff), or escalated to their street office or department."""
        return (
            ticket.grid_id in self.grid_ids
            or ticket.community_id in self.staff_community_ids
            or (ticket.level in ABOVE_COMMUNITY and ticket.community_id in self.street_community_ids)
            or (ticket.level == Level.DEPARTMENT and (ticket.community_id, ticket.department) in self.departments)
        )

    def sees_as_worker(self, ticket: Ticket, user_id: int) -> bool:
        """Gets the worker's card and history, internal reasons included: its assignee, or whose duties cover it.

        Being its reporter or a household that joined gives only the resident's view, whatever button was pressed.
        """
        return ticket.assignee_id == user_id or self.covers(ticket)

    def can_take_to_deliberation(self, ticket: Ticket) -> bool:
        """May say the ticket needs the monthly deliberation: while it is at the grid, the grid's workers and the
        community's staff; at the community office, its staff. Above that the ticket is in the street office's or a
        department's hands, and whoever only follows it does not move it (as on the card: History only)."""
        match ticket.level:
            case Level.GRID:
                return ticket.grid_id in self.grid_ids or ticket.community_id in self.staff_community_ids
            case Level.COMMUNITY:
                return ticket.community_id in self.staff_community_ids
        return False

    def can_handle(self, ticket: Ticket, user_id: int) -> bool:
        """May work the ticket at its current level: its assignee, or a colleague of that level.

        Community staff may step in on tickets at the grid and community levels; the street office on tickets
        at its level; a department's people on tickets sent to that department. A grid worker cannot act on a
        ticket while it is above the grid (unless it is assigned to them).
        """
        if ticket.assignee_id == user_id:
            return True
        match ticket.level:
            case Level.GRID | Level.COMMUNITY:
                return ticket.community_id in self.staff_community_ids
            case Level.STREET:
                return ticket.community_id in self.street_community_ids
            case Level.DEPARTMENT:
                return (ticket.community_id, ticket.department) in self.departments
        return False


ABOVE_COMMUNITY = (Level.STREET, Level.DEPARTMENT)


@dataclass(frozen=True)
class Person:
    """Who sent an update: a snapshot of their user record that stays valid whatever the session does."""

    id: int
    full_name: str
    language: str | None
    telegram_language: str | None
    building_id: int | None
    unit: int | None
    is_worker: bool  # a grid worker or community staff somewhere


# session.info key: ids of people whose record an operation changed, so snapshots of them can be dropped.
CHANGED_PEOPLE = "people_changed"


def _changed(session: AsyncSession, user_id: int) -> None:
    session.info.setdefault(CHANGED_PEOPLE, set()).add(user_id)


# Built once: this runs for every first update of a person, and building the statement costs as much as running it.
_USER_AND_DUTY = select(
    User,
    exists().where(Membership.user_id == User.id, Membership.active.is_(True)).label("is_worker"),
).where(User.id == bindparam("user_id"))
# The same read as plain columns of the table, for the usual case of nothing to change: a row of values costs a
# fraction of loading a User object into the session, or even of a query of mapped attributes, which goes through
# the ORM's loading all the same (bench/intake.py); the snapshot needs only these.
_USERS = cast(Table, User.__table__)
_MEMBERSHIPS = cast(Table, Membership.__table__)
_PERSON_AS_THEY_ARE = select(
    _USERS.c.id,
    _USERS.c.full_name,
    _USERS.c.language,
    _USERS.c.telegram_language,
    _USERS.c.building_id,
    _USERS.c.unit,
    exists().where(_MEMBERSHIPS.c.user_id == _USERS.c.id, _MEMBERSHIPS.c.active.is_(True)).label("is_worker"),
    _USERS.c.unreachable_at,
).where(_USERS.c.id == bindparam("user_id"))


async def touch_user(
    session: AsyncSession, user_id: int, full_name: str, telegram_language: str | None, now: datetime
) -> Person:
    """Load the user who sent an update, creating or refreshing their record.

    Usually there is nothing to change: that is one read, without the write lock (AUTOCOMMIT_READ).
    """
    full_name = clean(full_name)
    rows = await read_alone(session, _PERSON_AS_THEY_ARE, {"user_id": user_id})
    known = rows[0] if rows else None
    if (
        known is not None
        and known.full_name == full_name
        and known.telegram_language == telegram_language
        and known.unreachable_at is None
    ):
        return _person(known, known.is_worker)
    async with session.begin():
        fresh = _USER_AND_DUTY.execution_options(populate_existing=True)
        found = (await session.execute(fresh, {"user_id": user_id})).first()
        user, is_worker = found if found is not None else (None, False)
        if user is None:
            user = User(id=user_id, full_name=full_name, telegram_language=telegram_language, created_at=now)
            session.add(user)
        elif user.full_name != full_name or user.telegram_language != telegram_language:
            user.full_name, user.telegram_language = full_name, telegram_language
        if user.unreachable_at is not None:
            user.unreachable_at = None  # they wrote to us, so they have unblocked the bot
        return _person(user, is_worker)


def _person(user: User | Row[Any], is_worker: bool) -> Person:
    """The person from their record, or from the plain columns of ``_PERSON_AS_THEY_ARE``."""
    return Person(
        user.id, user.full_name, user.language, user.telegram_language, user.building_id, user.unit, is_worker
    )


async def set_reachable(session: AsyncSession, user_id: int, reachable: bool, now: datetime) -> None:
    """Telegram says the person blocked the bot in their private chat (or unblocked it): messages to them are
    not tried while they cannot be delivered."""
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        user.unreachable_at = None if reachable else now
        _changed(session, user_id)  # so the next message they send is seen as proof they can be reached


async def set_language(session: AsyncSession, user_id: int, language: str) -> None:
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        user.language = language
        _changed(session, user_id)


async def load_duties(session: AsyncSession, user_id: int) -> Duties:
    """What someone is responsible for, inside a transaction the caller already holds."""
    rows = (
        await session.execute(
            select(Membership.role, Membership.grid_id, Membership.community_id, Membership.scope).where(
                Membership.user_id == user_id, Membership.active.is_(True)
            )
        )
    ).all()
    return Duties(
        grid_ids=frozenset(r.grid_id for r in rows if r.role == Role.GRID_WORKER and r.grid_id is not None),
        staff_community_ids=frozenset(r.community_id for r in rows if r.role == Role.STAFF),
        street_community_ids=frozenset(r.community_id for r in rows if r.role == Role.STREET),
        departments=frozenset((r.community_id, r.scope) for r in rows if r.role == Role.DEPARTMENT),
    )


async def display_names(session: AsyncSession, community_id: int, user_ids: Iterable[int | None]) -> dict[int, str]:
    """How workers are named to others: the name from the community file, else their Telegram name.

    Runs inside the caller's transaction.
    """
    wanted = {u for u in user_ids if u is not None}
    if not wanted:
        return {}
    names = {u.id: u.full_name or str(u.id) for u in await session.scalars(select(User).where(User.id.in_(wanted)))}
    for user_id, name in await session.execute(
        select(Membership.user_id, Membership.display_name).where(
            Membership.community_id == community_id,
            Membership.user_id.in_(wanted),
            Membership.display_name != "",
        )
    ):
        names[user_id] = name
    return names


# --- where a resident lives -------------------------------------------------------------------------


async def building_by_link(session: AsyncSession, link_key: str) -> Building | None:
    link_key = clean(link_key)  # typed after /start by hand, it may hold a NUL, which PostgreSQL refuses
    async with session.begin():
        return await session.scalar(select(Building).where(Building.link_key == link_key, Building.active.is_(True)))


async def get_building(session: AsyncSession, building_id: int) -> Building:
    async with session.begin():
        building = await session.get(Building, building_id)
    if building is None or not building.active:
        raise NotFound(building_id)
    return building


async def bind_resident(
    session: AsyncSession, user_id: int, building_id: int, unit: int | None, now: datetime
) -> Building:
    """Record where a resident lives. Ids come from buttons, so they are checked, not trusted.

    Moving to another building or unit ends their household's verification (domain/households.py).
    """
    async with session.begin():
        building = await session.get(Building, building_id)
        if building is None or not building.active:
            raise NotFound(building_id)
        if unit is not None and not 1 <= unit <= building.units:
            raise NotFound(unit)
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        await end_on_move(session, user_id, building.id, unit, now)
        user.building_id, user.unit = building.id, unit
        _changed(session, user_id)
    return building


async def resident_home(session: AsyncSession, user: Person) -> Building | None:
    if user.building_id is None:
        return None
    async with session.begin():
        building = await session.get(Building, user.building_id)
    return building if building is not None and building.active else None


async def list_communities(session: AsyncSession) -> list[Community]:
    async with session.begin():
        return list(await session.scalars(select(Community).order_by(Community.id)))


async def list_compounds(session: AsyncSession, community_id: int) -> list[Compound]:
    async with session.begin():
        return list(
            await session.scalars(
                select(Compound)
                .where(Compound.community_id == community_id, Compound.active.is_(True))
                .order_by(Compound.id)
            )
        )


async def list_buildings(session: AsyncSession, compound_id: int) -> list[Building]:
    async with session.begin():
        return list(
            await session.scalars(
                select(Building)
                .where(Building.compound_id == compound_id, Building.active.is_(True))
                .order_by(Building.id)
            )
        )
