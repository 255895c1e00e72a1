"""Alembic migrations: they build the models' schema from nothing, on SQLite and PostgreSQL alike.

``test_migrations_match_models`` is the guard against a model changed without a migration: when it fails,
run ``python -m storage.migrate revision -m "what changed"`` and review the file it writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, bindparam, column, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import table as table_clause

from storage import migrate
from storage.db import create_engine, create_session_factory
from storage.migrate import alembic_config, run_alembic, upgrade_database
from storage.models import Base, Community, Grid, Ticket, TicketCount, User
from tests.conftest import BACKENDS, require_postgresql

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


async def drop_everything(engine: AsyncEngine) -> None:
    """Every table, including ``alembic_version`` and any left by other tests, so the database is empty."""
    async with engine.begin() as conn:
        names = await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_table_names())
        for name in names:
            await conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=BACKENDS)
async def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database (unlike conftest's ``engine``, which runs ``create_all``)."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'migrations.sqlite3'}")
    else:
        engine = create_engine(require_postgresql())
        await drop_everything(engine)
    yield engine
    await engine.dispose()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_table_names()))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())


def schema_differences(sync_conn: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return compare_metadata(context, metadata)


async def test_upgrade_from_empty_creates_every_table(empty_engine: AsyncEngine) -> None:
    assert await table_names(empty_engine) == set()

    await upgrade_database(empty_engine)

    assert await table_names(empty_engine) == set(Base.metadata.tables) | {"alembic_version"}
    assert await current_revision(empty_engine) == HEAD


def test_the_newest_revision_is_named_where_the_start_looks_for_it() -> None:
    assert migrate.HEAD == HEAD, "a new migration: set storage.migrate.HEAD to its revision"


async def test_an_up_to_date_database_is_not_handed_to_alembic(
    empty_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart only reads the version (docs/delivery.md, "Start-up"); a database behind it is migrated."""
    ran: list[object] = []
    real = migrate.run_alembic

    async def counted(engine: AsyncEngine, action: Any) -> None:
        ran.append(action)
        await real(engine, action)

    monkeypatch.setattr(migrate, "run_alembic", counted)
    await upgrade_database(empty_engine)
    assert len(ran) == 1 and await current_revision(empty_engine) == HEAD
    await upgrade_database(empty_engine)
    assert len(ran) == 1, "the version was read, Alembic not run"
    await run_alembic(empty_engine, lambda config: command.downgrade(config, "-1"))
    await upgrade_database(empty_engine)
    assert len(ran) == 2 and await current_revision(empty_engine) == HEAD


async def test_upgrade_twice_is_harmless(empty_engine: AsyncEngine) -> None:
    await upgrade_database(empty_engine)
    async with empty_engine.begin() as conn:
        await conn.execute(insert(Community).values(code="jsx", name="建设巷社区", name_en="", timezone="UTC"))

    await upgrade_database(empty_engine)

    assert await current_revision(empty_engine) == HEAD
    async with empty_engine.connect() as conn:
        assert (await conn.execute(select(Community.code))).scalars().all() == ["jsx"]


async def test_migrations_match_models(empty_engine: AsyncEngine) -> None:
    await upgrade_database(empty_engine)

    async with empty_engine.connect() as conn:
        differences = await conn.run_sync(schema_differences, Base.metadata)

    assert differences == [], (
        "storage/models.py differs from the schema the migrations build; "
        'run `python -m storage.migrate revision -m "..."` and review the new file'
    )


async def test_the_guard_sees_a_column_added_without_a_migration(empty_engine: AsyncEngine) -> None:
    await upgrade_database(empty_engine)
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["communities"].append_column(Column("guard_probe", String(20), nullable=True))

    async with empty_engine.connect() as conn:
        differences = await conn.run_sync(schema_differences, changed)

    assert [(d[0], d[2], d[3].name) for d in differences] == [("add_column", "communities", "guard_probe")]


async def test_round_trip_after_migrating(empty_engine: AsyncEngine) -> None:
    await upgrade_database(empty_engine)
    session_factory = create_session_factory(empty_engine)
    joined = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

    async with session_factory() as session:
        community = Community(code="jsx", name="建设巷社区", name_en="Jianshexiang Community")
        session.add_all([community, User(id=7_000_000_001, full_name="王阿姨", created_at=joined)])
        await session.commit()
        community_id = community.id

    async with session_factory() as session:
        stored = await session.get(Community, community_id)
        user = await session.get(User, 7_000_000_001)
    assert stored is not None and (stored.code, stored.name, stored.timezone) == (
        "jsx",
        "建设巷社区",
        "Asia/Shanghai",
    )
    assert user is not None and user.created_at == joined

    # Foreign keys are enforced again once the migration is over (SQLite turns them off while it runs).
    with pytest.raises(IntegrityError):
        async with session_factory() as session:
            session.add(Grid(community_id=community_id + 999, code="g1", name="第一网格"))
            await session.commit()


async def test_downgrade_to_base_and_back(empty_engine: AsyncEngine) -> None:
    await upgrade_database(empty_engine)

    await run_alembic(empty_engine, lambda config: command.downgrade(config, "base"))
    assert await table_names(empty_engine) <= {"alembic_version"}

    await upgrade_database(empty_engine)
    assert await current_revision(empty_engine) == HEAD


def insert_as_then(conn: Connection, table: Any, values: dict[str, Any]) -> None:
    """A row of ``table`` as the database has it now: the model's defaults for the columns it has, none for
    columns that later migrations add."""
    existing = {found["name"] for found in inspect(conn).get_columns(table.name)}
    row = {
        c.name: c.default.arg if c.default.is_scalar else c.default.arg(None)
        for c in table.c
        if c.name in existing and c.default is not None and (c.default.is_scalar or c.default.is_callable)
    }
    row.update(values)
    then = table_clause(table.name, *(column(name, table.c[name].type) for name in row))
    conn.execute(insert(then).values(**row))


async def test_the_statistics_upgrade_works_out_the_durations_of_earlier_tickets(empty_engine: AsyncEngine) -> None:
    """0010_stats adds each ticket's durations in whole seconds; tickets filed before it get them from their
    timestamps, so last months' figures stay right after the upgrade (one not resolved, or reopened, has none)."""
    await run_alembic(empty_engine, lambda config: command.upgrade(config, "0009_polish"))
    filed = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)
    tables = Base.metadata.tables  # their columns as 0009 left them, but for the tickets' two new ones
    earlier_tickets = table_clause(
        "tickets",
        *(column(name) for name in ("id", "community_id", "category_id", "building_id", "grid_id", "reporter_id")),
        *(column(name) for name in ("description", "status", "level", "created_at", "updated_at")),
        *(column(name) for name in ("first_accepted_at", "resolved_at")),
    )
    at = tables["tickets"].c.created_at.type  # aware datetimes stored as the ORM stores them
    async with empty_engine.begin() as conn:
        for name, values in [
            ("communities", {"id": 1, "code": "jsx", "name": "建设巷社区"}),
            ("categories", {"id": 1, "community_id": 1, "code": "light", "name": "灯"}),
            ("compounds", {"id": 1, "community_id": 1, "code": "c1", "name": "小区"}),
            ("grids", {"id": 1, "community_id": 1, "code": "g1", "name": "第一网格"}),
            ("buildings", {"id": 1, "compound_id": 1, "grid_id": 1, "code": "b1", "name": "1号楼", "link_key": "k"}),
            ("users", {"id": 940001, "created_at": filed}),
        ]:
            await conn.run_sync(insert_as_then, tables[name], values)
        for number, accepted, resolved in [(1, 3620, 36000), (2, 7200, None), (3, None, None)]:
            await conn.execute(
                insert(earlier_tickets).values(
                    id=number,
                    community_id=1,
                    category_id=1,
                    building_id=1,
                    grid_id=1,
                    reporter_id=940001,
                    description="灯不亮",
                    status="closed" if resolved else "in_progress",
                    level="grid",
                    created_at=bindparam(None, filed, type_=at),
                    updated_at=bindparam(None, filed, type_=at),
                    first_accepted_at=bindparam(None, accepted and filed + timedelta(seconds=accepted), type_=at),
                    resolved_at=bindparam(None, resolved and filed + timedelta(seconds=resolved), type_=at),
                )
            )

    await upgrade_database(empty_engine)

    async with empty_engine.connect() as conn:
        durations = (
            await conn.execute(select(Ticket.id, Ticket.accept_seconds, Ticket.resolve_seconds).order_by(Ticket.id))
        ).all()
    assert [tuple(row) for row in durations] == [(1, 3620, 36000), (2, 7200, None), (3, None, None)]


async def test_the_counts_upgrade_counts_every_month_of_the_earlier_tickets(empty_engine: AsyncEngine) -> None:
    """0016_ticket_counts counts the tickets filed before it, by month of the community's time zone (Shanghai,
    UTC+8: 16:00 UTC on 31 October is November there), category and compound, and names each count's candidate
    topic, so the candidates job neither misses this month's tickets nor proposes a candidate twice."""
    await run_alembic(empty_engine, lambda config: command.upgrade(config, "0015_handover"))
    tables = Base.metadata.tables
    filed = datetime(2026, 10, 31, 15, 59, tzinfo=UTC)
    async with empty_engine.begin() as conn:
        for name, values in [
            ("communities", {"id": 1, "code": "jsx", "name": "建设巷社区", "timezone": "Asia/Shanghai"}),
            ("communities", {"id": 2, "code": "empty", "name": "无工单社区", "timezone": "UTC"}),
            ("categories", {"id": 1, "community_id": 1, "code": "light", "name": "灯"}),
            ("categories", {"id": 2, "community_id": 1, "code": "lead", "name": "飞线"}),
            ("compounds", {"id": 1, "community_id": 1, "code": "c1", "name": "小区"}),
            ("compounds", {"id": 2, "community_id": 1, "code": "c2", "name": "二区"}),
            ("grids", {"id": 1, "community_id": 1, "code": "g1", "name": "第一网格"}),
            ("buildings", {"id": 1, "compound_id": 1, "grid_id": 1, "code": "b1", "name": "1号楼", "link_key": "k1"}),
            ("buildings", {"id": 2, "compound_id": 1, "grid_id": 1, "code": "b2", "name": "2号楼", "link_key": "k2"}),
            ("buildings", {"id": 3, "compound_id": 2, "grid_id": 1, "code": "b3", "name": "3号楼", "link_key": "k3"}),
            ("users", {"id": 940001, "created_at": filed}),
            (
                "topics",
                {
                    "id": 7, "community_id": 1, "status": "candidate", "source": "candidate",
                    "candidate_key": "2:1:2026-11", "category_id": 2, "created_at": filed, "updated_at": filed,
                },
            ),
        ]:  # fmt: skip
            await conn.run_sync(insert_as_then, tables[name], values)
        for number, minutes, category, building in [
            (1, -60 * 24 * 40, 1, 1),  # September
            (2, 0, 2, 1),  # 23:59 on 31 October in Shanghai
            (3, 1, 2, 1),  # 1 November
            (4, 2, 2, 2),  # another building of the same compound
            (5, 3, 2, 3),  # another compound
            (6, 4, 1, 1),
            (7, 60 * 24 * 31, 2, 1),  # December
        ]:
            created = filed + timedelta(minutes=minutes)
            values = {
                "id": number, "community_id": 1, "category_id": category, "building_id": building, "grid_id": 1,
                "reporter_id": 940001, "description": "灯不亮", "status": "closed", "level": "grid",
                "created_at": created, "updated_at": created,
            }  # fmt: skip
            await conn.run_sync(insert_as_then, tables["tickets"], values)

    await upgrade_database(empty_engine)

    async with empty_engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    TicketCount.community_id,
                    TicketCount.month,
                    TicketCount.category_id,
                    TicketCount.compound_id,
                    TicketCount.tickets,
                    TicketCount.topic_id,
                )
            )
        ).all()
    assert sorted(tuple(row) for row in rows) == [
        (1, "2026-09", 1, 1, 1, None),
        (1, "2026-10", 2, 1, 1, None),
        (1, "2026-11", 1, 1, 1, None),
        (1, "2026-11", 2, 1, 2, 7),
        (1, "2026-11", 2, 2, 1, None),
        (1, "2026-12", 2, 1, 1, None),
    ]
