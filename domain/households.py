"""Who speaks for a household (户): the rules every gated action asks, and phone numbers as keyed hashes.

A household is a room of a building in the community's register (``households``). A resident bound to a
building may report; only one **verified** for a household of that building (their phone number matched the
register, or the grid worker confirmed them: domain/verification.py) joins a neighbour's ticket, sees the
"me too" descriptions, answers "Is it fixed?", rates and votes, and a household has one vote.

Phone numbers never reach the database or a log as written: :func:`phone_digest` keeps an HMAC-SHA256 of the
normalised number under the secret setting ``HOUSEHOLD_PHONE_SECRET``, so the register can be matched but not
read back, and a leaked database cannot be turned into numbers without the secret.

This module imports only the models, so the people, ticket and deliberation rules can all ask it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.errors import DomainError
from storage.models import Verification, VerificationStatus

MAX_ROOM = 16  # the width of the room columns


class NotVerified(DomainError):
    """Only a verified household of the place may do this: the resident is not verified (for that building)."""


class NoPhoneSecret(DomainError):
    """HOUSEHOLD_PHONE_SECRET is not set, so phone numbers cannot be kept (nor matched)."""


def normalise_phone(raw: str) -> str:
    """The digits of a number as people write it: "+86 138-9500-0101", "8613895000101" and "13895000101" are one.

    Landlines keep their area code ("0951-5012345" → "09515012345"). An empty result means no number.
    """
    digits = "".join(ch for ch in raw if ch.isdigit())
    for prefix in ("0086", "86"):
        # A mainland mobile number is 11 digits starting with 1; Telegram sends it with the country code.
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11 and digits[len(prefix)] == "1":
            return digits[len(prefix) :]
    return digits


def phone_digest(secret: bytes, raw: str) -> str:
    """The keyed hash kept instead of the number; "" for no number. Raises NoPhoneSecret without a secret."""
    if not secret:
        raise NoPhoneSecret()
    digits = normalise_phone(raw)
    if not digits:
        return ""
    return hmac.new(secret, digits.encode(), hashlib.sha256).hexdigest()


def normalise_room(raw: str) -> str:
    """A room as the register and residents write it: "302", " 302室 " and "302号" are one."""
    room = "".join(raw.split())
    for suffix in ("室", "号", "户"):
        if room.endswith(suffix) and len(room) > len(suffix):
            room = room[: -len(suffix)]
    return room.upper()


# Built once: every gated action asks it.
_SPEAKING_FOR = select(Verification).where(
    Verification.user_id == bindparam("user_id"), Verification.status == VerificationStatus.VERIFIED
)


async def verified_household(session: AsyncSession, user_id: int) -> Verification | None:
    """The resident's current verification, inside the caller's transaction; None when they are not verified."""
    return (await session.scalars(_SPEAKING_FOR, {"user_id": user_id})).first()


# In SQL: the resident (parameter ``resident``) is verified for a household of the building (``building``);
# evaluated inside another statement, so filing a report asks it without a round trip of its own.
SPEAKS_FOR: ColumnElement[bool] = exists().where(
    Verification.user_id == bindparam("resident"),
    Verification.status == VerificationStatus.VERIFIED,
    Verification.building_id == bindparam("building"),
)


async def require_verified(session: AsyncSession, user_id: int, building_id: int) -> Verification:
    """The gate: the resident speaks for a household of this building, or NotVerified is raised."""
    verification = await verified_household(session, user_id)
    if verification is None or verification.building_id != building_id:
        raise NotVerified(building_id)
    return verification


async def end_on_move(session: AsyncSession, user_id: int, building_id: int, unit: int | None, now: datetime) -> bool:
    """A resident who binds themselves to another building (or unit) no longer speaks for their household, and a
    request still waiting for the grid worker is withdrawn. Re-binding to the same place changes nothing.

    Inside the caller's transaction; True when anything ended.
    """
    unit = unit or 1
    rows = list(
        await session.scalars(
            select(Verification).where(
                Verification.user_id == user_id,
                Verification.status.in_((VerificationStatus.VERIFIED, VerificationStatus.PENDING)),
            )
        )
    )
    moved = [row for row in rows if (row.building_id, row.unit) != (building_id, unit)]
    for row in moved:
        row.status = (
            VerificationStatus.MOVED_AWAY if row.status == VerificationStatus.VERIFIED else VerificationStatus.WITHDRAWN
        )
        row.ended_at, row.ended_by = now, user_id
    return bool(moved)


async def end_for_households(session: AsyncSession, household_ids: list[int], now: datetime) -> int:
    """Households that left the register: whoever was verified for them is not any more. Returns how many."""
    if not household_ids:
        return 0
    result = await session.execute(
        update(Verification)
        .where(Verification.household_id.in_(household_ids), Verification.status == VerificationStatus.VERIFIED)
        .values(status=VerificationStatus.MOVED_OUT, ended_at=now, ended_by=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
