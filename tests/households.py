"""Verified households for tests: a resident becomes one the way residents do, never by a shortcut past the gate.

Their number is put into the register for a room of the building they are bound to, and they share their own
contact (domain.verification.verify_by_contact), so everything a verified resident may do is checked exactly as
in production.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from domain.households import phone_digest
from domain.verification import verify_by_contact
from storage.db import SessionFactory
from storage.models import Building, Household, HouseholdMember, User, Verification
from tests.harness import PHONE_SECRET, Person


def phone_of(user_id: int) -> str:
    """A made-up mobile number, one per user id."""
    return f"139{user_id % 10**8:08d}"


async def register_phone(
    sessions: SessionFactory, *, building_id: int, unit: int, room: str, phone: str, now: datetime, name: str = ""
) -> int:
    """Put a number into the register for a room (creating the household if needed); returns the household id."""
    async with sessions() as session, session.begin():
        building = await session.get(Building, building_id)
        assert building is not None
        household = await session.scalar(
            select(Household).where(
                Household.building_id == building_id, Household.unit == unit, Household.room == room
            )
        )
        if household is None:
            household = Household(
                community_id=building.compound.community_id,
                building_id=building_id,
                unit=unit,
                room=room,
                created_at=now,
                updated_at=now,
            )
            session.add(household)
            await session.flush()
        session.add(HouseholdMember(household_id=household.id, name=name, phone_hash=phone_digest(PHONE_SECRET, phone)))
        return household.id


async def verify(person: Person, room: str | None = None) -> Verification:
    """Make a resident of the harness, bound already, a verified household (of a room of their own by default)."""
    harness = person.harness
    return await verify_household(harness.sessions, person.id, harness.clock(), room or str(person.id % 10_000))


async def verify_household(sessions: SessionFactory, user_id: int, now: datetime, room: str = "101") -> Verification:
    """Make a resident, bound to a building already, a verified household of ``room`` there (by their phone)."""
    async with sessions() as session, session.begin():
        user = await session.get(User, user_id)
        assert user is not None and user.building_id is not None, "bind the resident to a building first"
        building_id, unit = user.building_id, user.unit or 1
    await register_phone(sessions, building_id=building_id, unit=unit, room=room, phone=phone_of(user_id), now=now)
    async with sessions() as session:
        verified = await verify_by_contact(
            session, user_id=user_id, contact_user_id=user_id, phone=phone_of(user_id), secret=PHONE_SECRET, now=now
        )
    assert verified is not None
    return verified
