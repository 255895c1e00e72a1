"""Shared fixtures: a real database on each backend, and a fixed, movable clock.

PostgreSQL tests run when TEST_DATABASE_URL is set (``.ci/run`` sets it) and skip with the reason otherwise.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import SAMPLE_COMMUNITY as SAMPLE
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.models import Base
from tests.harness import FakeClock, Harness

PG_URL = os.environ.get("TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
# .ci/run sets REQUIRE_SERVICES=1: there a missing PostgreSQL or Redis is a failure, not a skip.
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
BACKENDS = ["sqlite", "postgresql"]


def service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def require_postgresql() -> str:
    if not PG_URL:
        service_missing("PostgreSQL tests need TEST_DATABASE_URL=postgresql+asyncpg://user@host:5432/db")
    return PG_URL


def require_redis() -> str:
    if not REDIS_URL:
        service_missing("Redis tests need TEST_REDIS_URL=redis://127.0.0.1:6379/15")
    return REDIS_URL


ROOT = Path(__file__).resolve().parent.parent
SAMPLE_COMMUNITY = SAMPLE


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}")
    else:
        engine = create_engine(require_postgresql())
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(engine)


@pytest.fixture
async def community(session_factory: SessionFactory, clock: FakeClock) -> None:
    """The sample community of the quick start, imported the way an office would."""
    from domain.community_file import import_community, load_community_file

    async with session_factory() as session:
        await import_community(session, load_community_file(SAMPLE_COMMUNITY), clock())


@pytest.fixture
def harness(session_factory: SessionFactory, clock: FakeClock, community: None) -> Harness:
    return Harness(session_factory, clock)
