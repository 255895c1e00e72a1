"""Residents for the benchmarks: many bound users, spread over the sample community's buildings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Building, User


async def add_residents(session: AsyncSession, first_id: int, count: int, now: datetime, english_every: int) -> None:
    """``count`` residents from ``first_id`` on, one bulk insert, every ``english_every``-th with an English client."""
    buildings = list(await session.scalars(select(Building.id).order_by(Building.id)))
    assert buildings, "import a community first"
    rows = [
        {
            "id": first_id + n,
            "full_name": f"居民{n}",
            "telegram_language": "zh-hans" if n % english_every else "en",
            "building_id": buildings[n % len(buildings)],
            "unit": 1,
            "created_at": now,
        }
        for n in range(count)
    ]
    if rows:
        await session.execute(insert(User), rows)
