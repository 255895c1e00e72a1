"""The hot queries' plans at district size: none reads the whole of ``tickets``, ``users`` or ``outbox``.

The product's own functions run (filing and routing, the "me too" list, /tickets, /ledger, the four periodic
jobs, queueing a broadcast, the sender's claim) and every statement they send is recorded. The planner is then
given the statistics of a district (a million tickets in one community, 300,000 residents, two million outbox
rows) and each statement is EXPLAINed: a full scan of one of the three tables fails the test. On SQLite the
statistics are written into ``sqlite_stat1``, as ANALYZE would write them for such a district; on PostgreSQL
the tables get enough rows (tens of thousands) for ANALYZE to make a sequential scan the dearer plan.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from math import prod
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.broadcasts import start_broadcast
from domain.confirmation import close_unconfirmed
from domain.deliberation import propose_candidates
from domain.followers import similar_open_tickets
from domain.ledger import ledger
from domain.stats import summarise_months
from domain.sweep import sweep
from domain.tickets import open_tickets_for_worker
from storage.db import SessionFactory, refresh_statistics
from storage.models import BroadcastKind
from tests.conftest import FakeClock
from tests.harness import Harness
from tests.test_routing import LI_JUAN, STAFF_WANG, category, report, resident_in

# The three the issue names, the tickets' history, which grows fastest of all, and the tickets' counts by month.
WATCHED = ("tickets", "users", "outbox", "ticket_events", "ticket_counts")
# A district: rows per table, distinct values per column (what ANALYZE would find), rows in partial indexes.
ROWS = {
    "tickets": 1_000_000, "users": 300_000, "outbox": 2_000_000, "ticket_events": 8_000_000, "ticket_counts": 100_000
}  # fmt: skip
DISTINCT = {
    "tickets": {
        "id": 1_000_000, "community_id": 1, "status": 5, "category_id": 13, "building_id": 300, "grid_id": 10,
        "assignee_id": 50, "reporter_id": 100_000, "created_at": 1_000_000, "respond_by": 1_000_000,
        "resolve_by": 1_000_000, "resolved_at": 1_000_000, "wake_at": 1_000_000, "topic_id": 2_000,
        "accept_seconds": 100_000, "resolve_seconds": 300_000, "rating": 6, "reopen_count": 4,
    },
    "ticket_events": {"id": 8_000_000, "ticket_id": 1_000_000, "kind": 19, "at": 8_000_000},
    "users": {"id": 300_000, "building_id": 3_000, "broadcasts_off": 2, "unreachable_at": 5_000},
    "outbox": {
        "id": 2_000_000, "status": 6, "priority": 2, "not_before": 1_000_000, "broadcast_id": 100,
        "chat_id": 300_000,
    },
    # 50 communities, 24 months, 13 categories, 30 compounds each (ix_ticket_counts_unproposed: the months
    # before the upgrade, whose counts never got a topic, and the small ones).
    "ticket_counts": {"community_id": 50, "month": 24, "category_id": 650, "compound_id": 1_500, "tickets": 500},
}  # fmt: skip
PARTIAL_ROWS = {"ix_tickets_on_topic": 20_000, "ix_users_unreachable": 5_000, "ix_ticket_counts_unproposed": 60_000}
SCAN = {
    "sqlite": re.compile(r"\bSCAN (?P<table>\w+)"),
    "postgresql": re.compile(r"Seq Scan on (?P<table>\w+)"),
}
# A statement containing the fragment must be planned with the index.
USES = {
    "tickets.wake_at <=": "ix_tickets_wake",  # the deadline and confirmation sweeps
    "tickets.resolved_at <=": "ix_tickets_status_resolved",  # auto-close
    "FROM ticket_counts": "ix_ticket_counts_unproposed",  # the candidates job
    "SELECT count(users.id)": "ix_users_unreachable",  # /ledger's unreachable residents
    "outbox.kind = ": "ix_outbox_due",  # a topic joining the notice that waits for a staff member
}
RESIDENT, NEIGHBOUR = 900901, 900902
Recorded = list[tuple[str, Any]]


@asynccontextmanager
async def recording(engine: AsyncEngine) -> AsyncIterator[Recorded]:
    statements: Recorded = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        # Every statement that reads rows (an INSERT … VALUES reads none).
        if re.match(r"\s*(SELECT|WITH|UPDATE|DELETE|INSERT\b.*\bSELECT\b)", statement, re.IGNORECASE | re.DOTALL):
            # An executemany's first row; "insertmanyvalues" sends all its rows as one flat statement.
            many = executemany and parameters and isinstance(parameters[0], tuple | list | dict)
            statements.append((statement, parameters[0] if many else parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def hot_paths(harness: Harness, sessions: SessionFactory, clock: FakeClock, engine: AsyncEngine) -> Recorded:
    """Run what runs all day, and return every statement it sent."""
    for user_id in (RESIDENT, NEIGHBOUR):
        await resident_in(sessions, clock, user_id, "yinba/1")
    light = await category(sessions, "light")
    async with recording(engine) as statements:
        filed = await report(sessions, clock, RESIDENT)  # filing, and routing's load of each worker
        for _ in range(2):  # three of a kind in a compound: a topic candidate, with its tickets
            await report(sessions, clock, NEIGHBOUR)
        async with sessions() as session:
            await similar_open_tickets(
                session, user_id=NEIGHBOUR, building_id=filed.ticket.building_id, category_id=light.id
            )
            await open_tickets_for_worker(session, LI_JUAN)
            await ledger(session, viewer_id=STAFF_WANG, now=clock())
        clock.advance(hours=20)
        for _ in range(2):  # a run that proposes, then one that finds nothing
            async with sessions() as session:
                await sweep(session, clock())
                await close_unconfirmed(session, clock())
                await propose_candidates(session, clock())
                await summarise_months(session, clock())
            clock.advance(minutes=1)
        async with sessions() as session:
            await start_broadcast(session, light.community_id, BroadcastKind.AGENDA, "2026-12", clock())
        await harness.deliver()  # the sender's claim
    return statements


async def district_statistics(engine: AsyncEngine, sessions: SessionFactory) -> None:
    if engine.dialect.name == "sqlite":
        await _sqlite_statistics(engine)
    else:
        await _postgresql_rows(engine, sessions)


async def _sqlite_statistics(engine: AsyncEngine) -> None:
    """``sqlite_stat1`` as ANALYZE writes it: rows, then the average rows per value of each index prefix."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
        for table in WATCHED:
            await conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = ?", (table,))
            indexes = (await conn.exec_driver_sql(f"PRAGMA index_list({table})")).all()
            for index in indexes:
                name, unique = index[1], bool(index[2])
                columns = [row[2] for row in (await conn.exec_driver_sql(f"PRAGMA index_info({name})")).all()]
                rows = PARTIAL_ROWS.get(name, ROWS[table])
                per_prefix = [
                    max(1, rows // min(rows, prod(DISTINCT[table][c] for c in columns[: n + 1])))
                    for n in range(len(columns))
                ]
                if unique:
                    per_prefix[-1] = 1
                stat = " ".join(map(str, [rows, *per_prefix]))
                await conn.exec_driver_sql(
                    "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, name, stat)
                )
        await conn.exec_driver_sql("ANALYZE sqlite_schema")  # the planner reads sqlite_stat1 again


async def _postgresql_rows(engine: AsyncEngine, sessions: SessionFactory) -> None:
    """Tens of thousands of rows in the watched tables, spread like a district's, then ANALYZE."""
    async with engine.begin() as conn:
        buildings = "ARRAY(SELECT id FROM buildings ORDER BY id)"
        await conn.exec_driver_sql(
            "INSERT INTO users (id, full_name, building_id, unit, unreachable_at, broadcasts_off, created_at)"
            # A tenth live in this community; the rest stand for the district's other communities.
            f" SELECT 5000000 + g, 'r', CASE WHEN g % 10 = 0 THEN ({buildings})[1 + g % cardinality({buildings})]"
            " END, 1,"
            " CASE WHEN g % 60 = 0 THEN now() END, g % 50 = 0, now() FROM generate_series(1, 30000) g"
        )
        await conn.exec_driver_sql(
            "INSERT INTO tickets (community_id, category_id, building_id, grid_id, reporter_id, description,"
            " status, level, assignee_id, created_at, updated_at, reopen_count, rating_comment, reporter_verified)"
            " SELECT b.community_id, c.id, b.id, b.grid_id, 5000000 + 1 + g % 30000, 'x',"
            " (ARRAY['closed','closed','closed','unconfirmed','resolved'])[1 + g % 5], 'grid', NULL,"
            " now() - (g * 17 || ' minutes')::interval, now(), 0, '', true"  # two years of them
            " FROM generate_series(1, 60000) g"
            " JOIN LATERAL (SELECT buildings.id, buildings.grid_id, compounds.community_id FROM buildings"
            "   JOIN compounds ON compounds.id = buildings.compound_id ORDER BY buildings.id"
            "   OFFSET g % (SELECT count(*) FROM buildings) LIMIT 1) b ON true"
            " JOIN LATERAL (SELECT id FROM categories ORDER BY id OFFSET g % (SELECT count(*) FROM categories)"
            "   LIMIT 1) c ON true"
        )
        await conn.exec_driver_sql(
            "INSERT INTO ticket_events (ticket_id, at, kind, note, data)"
            " SELECT tickets.id, tickets.created_at, (ARRAY['created','routed','accepted','resolved'])[k], '', '{}'"
            " FROM tickets CROSS JOIN generate_series(1, 4) k"
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox (chat_id, kind, payload, status, priority, attempts, not_before, created_at, error)"
            " SELECT 5000000 + 1 + g % 30000, 'ticket_update', '{}', 'sent', 0, 1, now(), now(), ''"
            " FROM generate_series(1, 60000) g"
        )
        await conn.exec_driver_sql(
            # Two years of counts, 13 categories and 100 compounds more (compounds of no building: not one's a key).
            "INSERT INTO ticket_counts (community_id, month, category_id, compound_id, tickets)"
            " SELECT (SELECT min(id) FROM communities),"
            " to_char(date '2025-01-01' + (m || ' months')::interval, 'YYYY-MM'), 100000 + c, 100000 + k,"
            " (m * 7 + c * 3 + k) % 500 FROM generate_series(0, 23) m, generate_series(1, 13) c,"
            " generate_series(1, 100) k"
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("ANALYZE")


async def plans(engine: AsyncEngine, statements: Recorded) -> list[tuple[str, str]]:
    """Each statement (on one line) with its plan."""
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    found = []
    async with engine.connect() as conn:
        for statement, parameters in statements:
            rows = await conn.exec_driver_sql(explain + statement, parameters or ())
            found.append((" ".join(statement.split()), "\n".join(str(row[-1]) for row in rows)))
        await conn.rollback()
    return found


async def full_scans(engine: AsyncEngine, statements: Recorded) -> list[str]:
    """The statements whose plan reads a whole watched table, each with its plan."""
    return [
        f"{statement[:300]}\n{plan}"
        for statement, plan in await plans(engine, statements)
        if {m["table"] for m in SCAN[engine.dialect.name].finditer(plan)} & set(WATCHED)
    ]


Step = Callable[[], Awaitable[None]]


async def test_no_hot_query_reads_a_whole_table_at_district_size(
    harness: Harness, session_factory: SessionFactory, clock: FakeClock, engine: AsyncEngine
) -> None:
    statements = await hot_paths(harness, session_factory, clock, engine)
    assert len(statements) > 40  # every path above sent its queries
    await district_statistics(engine, session_factory)
    scans = await full_scans(engine, statements)
    assert not scans, "\n\n".join(scans)
    # Another index would also avoid a full scan and still read every ticket of a status (the history): on
    # SQLite, whose statistics are averages, the periodic jobs and counts must use the index made for them.
    # PostgreSQL knows the null fractions and histograms, and its choice among indexes is its own.
    for fragment, index in USES.items() if engine.dialect.name == "sqlite" else ():
        chosen = [plan for statement, plan in await plans(engine, statements) if fragment in statement]
        assert chosen and all(index in plan for plan in chosen), (fragment, chosen)


async def test_the_check_fails_without_the_index_a_job_needs(
    harness: Harness, session_factory: SessionFactory, clock: FakeClock, engine: AsyncEngine
) -> None:
    """The test above can fail: without ix_users_recipients, queueing a broadcast reads every resident."""
    statements = await hot_paths(harness, session_factory, clock, engine)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP INDEX ix_users_recipients")
    await district_statistics(engine, session_factory)
    scans = await full_scans(engine, statements)
    assert scans and all(scan.startswith("INSERT INTO outbox") or "FROM users" in scan for scan in scans), scans


async def test_the_bot_analyses_a_database_it_has_no_statistics_for(
    session_factory: SessionFactory, clock: FakeClock, community: None, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL's autovacuum analyses by itself
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    await report(session_factory, clock, RESIDENT)
    await refresh_statistics(engine, at_start=True)
    async with engine.connect() as conn:
        analysed = set((await conn.exec_driver_sql("SELECT idx FROM sqlite_stat1 WHERE tbl = 'tickets'")).scalars())
    assert {"ix_tickets_wake", "ix_tickets_community_created"} <= analysed
    # A later start, or the hourly refresh, only asks SQLite to optimise: nothing is analysed again.
    await refresh_statistics(engine, at_start=True)
    await refresh_statistics(engine)
