"""The sample community and residents for the benchmarks: many bound users, spread over its buildings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.config import SAMPLE_COMMUNITY
from domain.community_file import import_community, load_community_file
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.migrate import upgrade_database
from storage.models import Building, User


async def sample_database(db_url: str, now: datetime) -> tuple[AsyncEngine, SessionFactory]:
    """The database at ``db_url``, migrated to the newest revision, with the sample community imported."""
    engine = create_engine(db_url)
    await upgrade_database(engine)
    sessions = create_session_factory(engine)
    async with sessions() as session:
        await import_community(session, load_community_file(SAMPLE_COMMUNITY), now)
    return engine, sessions


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
