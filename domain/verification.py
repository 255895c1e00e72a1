"""Verifying residents: by their phone number against the register, or by their grid worker; and taking it back.

- **By phone.** A resident bound to a building shares their own contact (Telegram's "share my phone number").
  A contact whose ``user_id`` is not the sender's is refused. If its number is a register member's of exactly
  one household of that building, the resident is verified for that room at once.
- **By the grid worker.** Otherwise (no match, or they would rather not share it) the resident names their
  room and may add a photo; the grid workers of the building's grid (community staff when it has none) get a
  short request through the outbox, and one of them verifies or declines it with a reason (``/verify``).
- **Revoked.** Community staff may take a verification back, with a reason.

Every decision is kept on the verification's row: who decided, when and why (domain/households.py has the
statuses and the gate the rest of the domain asks). The resident hears of every decision through the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.errors import AccessDenied, DomainError, InvalidTransition, NotBound, NotFound
from domain.households import MAX_ROOM, normalise_room, phone_digest, verified_household
from domain.outbox import Notice, enqueue
from domain.people import CHANGED_PEOPLE, load_duties
from domain.text import required_text
from domain.tickets import MAX_NOTE
from storage.models import (
    Building,
    Compound,
    Household,
    HouseholdMember,
    Membership,
    Role,
    User,
    Verification,
    VerificationMethod,
    VerificationStatus,
)

PENDING_LIMIT = 30  # a /verify list; the rest follow once these are decided
# Requests one resident may send the grid workers in a day: each one reaches every worker of the grid.
REQUESTS_PER_DAY = 3


class ForeignContact(DomainError):
    """The shared contact is not the sender's own (someone else's card, or a forged user id)."""


class AlreadyVerified(DomainError):
    """The resident is verified already."""


class BadRoom(DomainError):
    """A room is a short number like 302."""


class TooManyRequests(DomainError):
    """The resident asked the grid workers REQUESTS_PER_DAY times in the last day already."""


@dataclass(frozen=True)
class HomeStatus:
    """Where a resident stands: verified (for which room), waiting for the grid worker, or neither, with the
    latest decision against them (declined, revoked, moved out) so /home can say why."""

    building: Building | None
    unit: int | None
    verified: Verification | None = None
    pending: Verification | None = None
    latest: Verification | None = None


@dataclass(frozen=True)
class RequestView:
    """A pending request as its grid worker sees it, with what the register lists for the claimed room."""

    verification: Verification
    building: Building
    in_register: bool  # the claimed room is an active household of the register
    register_names: list[str]


@dataclass(frozen=True)
class BuildingCount:
    """Staff's view of one building: households on record, and its bound residents by verification."""

    building: Building
    households: int
    residents: int
    verified: int
    pending: int

    @property
    def unverified(self) -> int:
        return self.residents - self.verified - self.pending


def _tell_resident(session: AsyncSession, verification: Verification, now: datetime) -> None:
    """The resident hears the decision as it was made, even if another follows before the message goes out."""
    enqueue(
        session,
        verification.user_id,
        Notice.VERIFICATION_RESULT,
        now,
        verification_id=verification.id,
        outcome=verification.status,
    )


def _changed(session: AsyncSession, user_id: int) -> None:
    session.info.setdefault(CHANGED_PEOPLE, set()).add(user_id)


async def _bound(session: AsyncSession, user_id: int) -> tuple[User, Building]:
    user = await session.get(User, user_id)
    building = None if user is None or user.building_id is None else await session.get(Building, user.building_id)
    if user is None or building is None or not building.active:
        raise NotBound()
    return user, building


async def _withdraw_pending(session: AsyncSession, user_id: int, now: datetime) -> None:
    for row in await session.scalars(
        select(Verification).where(Verification.user_id == user_id, Verification.status == VerificationStatus.PENDING)
    ):
        row.status, row.ended_at, row.ended_by = VerificationStatus.WITHDRAWN, now, user_id


async def home_status(session: AsyncSession, user_id: int) -> HomeStatus:
    """What /home shows: the resident's building and unit, and their verification."""
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None or user.building_id is None:
            return HomeStatus(None, None)
        building = await session.get(Building, user.building_id)
        if building is None or not building.active:
            return HomeStatus(None, None)
        rows = list(
            await session.scalars(
                select(Verification).where(Verification.user_id == user_id).order_by(Verification.id.desc()).limit(5)
            )
        )
    by_status = {row.status: row for row in reversed(rows)}  # the newest of each status
    return HomeStatus(
        building,
        user.unit,
        verified=by_status.get(VerificationStatus.VERIFIED),
        pending=by_status.get(VerificationStatus.PENDING),
        latest=rows[0] if rows else None,
    )


async def check_can_verify(session: AsyncSession, *, user_id: int) -> None:
    """Refuse the "verify" button before asking for anything: bound to a building, and not verified yet."""
    async with session.begin():
        await _bound(session, user_id)
        if await verified_household(session, user_id) is not None:
            raise AlreadyVerified()


# --- by phone --------------------------------------------------------------------------------------------


async def verify_by_contact(
    session: AsyncSession,
    *,
    user_id: int,
    contact_user_id: int | None,
    phone: str,
    secret: bytes,
    now: datetime,
) -> Verification | None:
    """The resident shared a contact: verified for the room whose register row has the number, or None (no
    match, or several rooms of the building have it: the grid worker decides then).

    Only the sender's own contact counts (Telegram sets its ``user_id``); anything else is ForeignContact.
    The number itself goes no further than its keyed hash.
    """
    if contact_user_id != user_id:
        raise ForeignContact()
    digest = phone_digest(secret, phone)
    async with session.begin():
        user, building = await _bound(session, user_id)
        if await verified_household(session, user_id) is not None:
            raise AlreadyVerified()
        if not digest:
            return None
        matches = list(
            await session.scalars(
                select(Household)
                .join(HouseholdMember, HouseholdMember.household_id == Household.id)
                .where(
                    Household.building_id == building.id,
                    Household.active.is_(True),
                    HouseholdMember.phone_hash == digest,
                )
                .distinct()
            )
        )
        if len(matches) > 1 and user.unit is not None:
            matches = [h for h in matches if h.unit == user.unit]  # the unit they chose settles it
        if len(matches) != 1:
            return None
        household = matches[0]
        await _withdraw_pending(session, user_id, now)
        verification = Verification(
            user_id=user_id,
            building_id=building.id,
            unit=household.unit,
            room=household.room,
            household_id=household.id,
            method=VerificationMethod.PHONE,
            status=VerificationStatus.VERIFIED,
            name=user.full_name,
            created_at=now,
            decided_at=now,
        )
        session.add(verification)
        if building.units > 1:
            user.unit = household.unit  # the register knows their unit better than a tapped button
        _changed(session, user_id)
    return verification


# --- by the grid worker -------------------------------------------------------------------------------------


def check_room(text: str) -> str:
    room = normalise_room(required_text(text, MAX_ROOM * 2))
    if not room or len(room) > MAX_ROOM:
        raise BadRoom()
    return room


async def _deciders(session: AsyncSession, building: Building) -> list[int]:
    """Who verifies residents of a building: its grid's workers, else the community's staff."""
    for role, grid_id in ((Role.GRID_WORKER, building.grid_id), (Role.STAFF, None)):
        query = select(Membership.user_id).where(
            Membership.community_id == building.compound.community_id,
            Membership.role == role,
            Membership.active.is_(True),
        )
        if grid_id is not None:
            query = query.where(Membership.grid_id == grid_id)
        found = list(dict.fromkeys(await session.scalars(query.order_by(Membership.id))))
        if found:
            return found
    return []


async def request_verification(
    session: AsyncSession, *, user_id: int, room: str, photo_file_id: str = "", now: datetime
) -> tuple[Verification, int]:
    """Ask the grid worker(s) to confirm the resident lives in ``room`` of their building (and unit); returns the
    request and how many people were asked. An older request still waiting is withdrawn."""
    room = check_room(room)
    async with session.begin():
        user, building = await _bound(session, user_id)
        if await verified_household(session, user_id) is not None:
            raise AlreadyVerified()
        asked = await session.scalar(
            select(func.count()).where(
                Verification.user_id == user_id,
                Verification.method == VerificationMethod.WORKER,
                Verification.created_at > now - timedelta(days=1),
            )
        )
        if (asked or 0) >= REQUESTS_PER_DAY:
            raise TooManyRequests()
        await _withdraw_pending(session, user_id, now)
        verification = Verification(
            user_id=user_id,
            building_id=building.id,
            unit=user.unit or 1,
            room=room,
            method=VerificationMethod.WORKER,
            status=VerificationStatus.PENDING,
            name=user.full_name,
            photo_file_id=photo_file_id,
            created_at=now,
        )
        session.add(verification)
        await session.flush()
        deciders = await _deciders(session, building)
        for decider in deciders:
            enqueue(session, decider, Notice.VERIFICATION_REQUEST, now, verification_id=verification.id)
    return verification, len(deciders)


async def _may_decide(session: AsyncSession, actor_id: int, building: Building) -> None:
    """The building's grid workers, and its community's staff; anyone else (a worker of another grid) is refused."""
    duties = await load_duties(session, actor_id)
    if building.grid_id not in duties.grid_ids and building.compound.community_id not in duties.staff_community_ids:
        raise AccessDenied(building.id)


async def _request(
    session: AsyncSession, actor_id: int, verification_id: int, lock: bool = True
) -> tuple[Verification, Building]:
    verification = await session.get(Verification, verification_id, with_for_update=lock)
    if verification is None:
        raise NotFound(verification_id)
    building = await session.get(Building, verification.building_id)
    assert building is not None
    await _may_decide(session, actor_id, building)
    if verification.status != VerificationStatus.PENDING:
        raise InvalidTransition(verification.status)
    return verification, building


async def pending_requests(session: AsyncSession, *, actor_id: int) -> list[Verification]:
    """/verify: the requests waiting in the actor's grids (all of the community for staff), oldest first."""
    async with session.begin():
        duties = await load_duties(session, actor_id)
        if not duties.grid_ids and not duties.staff_community_ids:
            raise AccessDenied(actor_id)
        buildings = select(Building.id).where(
            Building.grid_id.in_(duties.grid_ids)
            | Building.compound_id.in_(select(Compound.id).where(Compound.community_id.in_(duties.staff_community_ids)))
        )
        return list(
            await session.scalars(
                select(Verification)
                .where(Verification.status == VerificationStatus.PENDING, Verification.building_id.in_(buildings))
                .order_by(Verification.id)
                .limit(PENDING_LIMIT)
            )
        )


async def view_request(session: AsyncSession, *, actor_id: int, verification_id: int) -> RequestView:
    """A pending request for one who may decide it, with the register's names for the claimed room."""
    async with session.begin():
        verification, building = await _request(session, actor_id, verification_id, lock=False)
        return await _load_view(session, verification, building)


async def _load_view(session: AsyncSession, verification: Verification, building: Building) -> RequestView:
    household = await _household(session, verification)
    names: list[str] = []
    if household is not None and household.active:
        names = [
            n
            for n in await session.scalars(
                select(HouseholdMember.name)
                .where(HouseholdMember.household_id == household.id)
                .order_by(HouseholdMember.id)
            )
            if n
        ]
    return RequestView(verification, building, household is not None and household.active, names)


async def request_for_notice(session: AsyncSession, verification_id: int) -> RequestView | None:
    """What the outbox tells the grid worker, while the request still waits (inside the sender's session)."""
    verification = await session.get(Verification, verification_id)
    if verification is None or verification.status != VerificationStatus.PENDING:
        return None
    building = await session.get(Building, verification.building_id)
    return None if building is None else await _load_view(session, verification, building)


async def _household(session: AsyncSession, verification: Verification) -> Household | None:
    return await session.scalar(
        select(Household).where(
            Household.building_id == verification.building_id,
            Household.unit == verification.unit,
            Household.room == verification.room,
        )
    )


async def check_decide(session: AsyncSession, *, actor_id: int, verification_id: int) -> None:
    """Refuse a Decline button before the worker types a reason."""
    async with session.begin():
        await _request(session, actor_id, verification_id, lock=False)


async def approve(session: AsyncSession, *, actor_id: int, verification_id: int, now: datetime) -> Verification:
    """The grid worker confirms the resident lives in the claimed room: verified for that household.

    A room the register does not list (yet) becomes a household on the worker's word; a later register import
    neither lists nor moves it out.
    """
    async with session.begin():
        verification, building = await _request(session, actor_id, verification_id)
        if await verified_household(session, verification.user_id) is not None:
            raise AlreadyVerified()
        household = await _household(session, verification)
        if household is None:
            household = Household(
                community_id=building.compound.community_id,
                building_id=building.id,
                unit=verification.unit,
                room=verification.room,
                in_register=False,
                created_at=now,
                updated_at=now,
            )
            session.add(household)
            await session.flush()
        elif not household.active:
            household.active, household.in_register, household.moved_out_at = True, False, None
            household.updated_at = now
        verification.status, verification.household_id = VerificationStatus.VERIFIED, household.id
        verification.decided_at, verification.decided_by = now, actor_id
        _tell_resident(session, verification, now)
        _changed(session, verification.user_id)
    return verification


async def decline(
    session: AsyncSession, *, actor_id: int, verification_id: int, reason: str, now: datetime
) -> Verification:
    """The grid worker says no, with a reason the resident is told."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        verification, _building = await _request(session, actor_id, verification_id)
        verification.status, verification.reason = VerificationStatus.DECLINED, reason
        verification.decided_at, verification.decided_by = now, actor_id
        _tell_resident(session, verification, now)
    return verification


# --- staff: revoking and counting ------------------------------------------------------------------------


async def _staffed_building(session: AsyncSession, actor_id: int, building_id: int) -> Building:
    building = await session.get(Building, building_id)
    if building is None:
        raise NotFound(building_id)
    if building.compound.community_id not in (await load_duties(session, actor_id)).staff_community_ids:
        raise AccessDenied(building_id)
    return building


async def _verification_to_revoke(session: AsyncSession, actor_id: int, verification_id: int) -> Verification:
    verification = await session.get(Verification, verification_id, with_for_update=True)
    if verification is None:
        raise NotFound(verification_id)
    await _staffed_building(session, actor_id, verification.building_id)
    if verification.status != VerificationStatus.VERIFIED:
        raise InvalidTransition(verification.status)
    return verification


async def check_revoke(session: AsyncSession, *, actor_id: int, verification_id: int) -> None:
    """Refuse a Revoke button before staff type a reason."""
    async with session.begin():
        await _verification_to_revoke(session, actor_id, verification_id)


async def revoke(
    session: AsyncSession, *, actor_id: int, verification_id: int, reason: str, now: datetime
) -> Verification:
    """Community staff take a verification back, with a reason the resident is told."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        verification = await _verification_to_revoke(session, actor_id, verification_id)
        verification.status = VerificationStatus.REVOKED
        verification.ended_at, verification.ended_by, verification.end_reason = now, actor_id, reason
        _tell_resident(session, verification, now)
        _changed(session, verification.user_id)
    return verification


async def verified_in_building(
    session: AsyncSession, *, actor_id: int, building_id: int
) -> tuple[Building, list[Verification]]:
    """Staff: one building of their community and its verified residents, by unit and room."""
    async with session.begin():
        building = await _staffed_building(session, actor_id, building_id)
        found = await session.scalars(
            select(Verification)
            .where(Verification.building_id == building_id, Verification.status == VerificationStatus.VERIFIED)
            .order_by(Verification.unit, Verification.room, Verification.id)
        )
        return building, list(found)


async def staff_community(session: AsyncSession, *, actor_id: int) -> int:
    """The community someone staffs (the first, if several), for importing its register; else AccessDenied."""
    async with session.begin():
        communities = sorted((await load_duties(session, actor_id)).staff_community_ids)
    if not communities:
        raise AccessDenied(actor_id)
    return communities[0]


async def building_counts(session: AsyncSession, *, actor_id: int) -> list[BuildingCount]:
    """Staff: per building of their communities, households on record and residents verified, pending, neither.

    Four grouped queries, whatever the number of buildings.
    """
    async with session.begin():
        communities = (await load_duties(session, actor_id)).staff_community_ids
        if not communities:
            raise AccessDenied(actor_id)
        buildings = list(
            await session.scalars(
                select(Building)
                .join(Compound, Compound.id == Building.compound_id)
                .where(Compound.community_id.in_(communities), Building.active.is_(True))
                .order_by(Building.compound_id, Building.id)
            )
        )
        ids = [b.id for b in buildings]
        households: dict[int, int] = {
            building_id: count
            for building_id, count in await session.execute(
                select(Household.building_id, func.count())
                .where(Household.building_id.in_(ids), Household.active.is_(True))
                .group_by(Household.building_id)
            )
        }
        residents: dict[int | None, int] = {
            building_id: count
            for building_id, count in await session.execute(
                select(User.building_id, func.count()).where(User.building_id.in_(ids)).group_by(User.building_id)
            )
        }
        by_status: dict[tuple[int, str], int] = {}
        for building_id, status, count in await session.execute(
            select(Verification.building_id, Verification.status, func.count(func.distinct(Verification.user_id)))
            .where(
                Verification.building_id.in_(ids),
                Verification.status.in_((VerificationStatus.VERIFIED, VerificationStatus.PENDING)),
            )
            .group_by(Verification.building_id, Verification.status)
        ):
            by_status[(building_id, status)] = count
    return [
        BuildingCount(
            b,
            households.get(b.id, 0),
            residents.get(b.id, 0),
            by_status.get((b.id, VerificationStatus.VERIFIED), 0),
            by_status.get((b.id, VerificationStatus.PENDING), 0),
        )
        for b in buildings
    ]
