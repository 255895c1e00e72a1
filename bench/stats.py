"""Benchmark: /stats on a community with a million tickets, chart included, against touching the month's rows.

The sample community gets ``--tickets`` tickets spread over ``--months`` months (about 42,000 a month for a
million over two years), in every state the lifecycle leaves them in. Then /stats goes through the real
dispatcher with the fake Bot session, as staff send it: the month's figures by grid, the month before for
the ranking, twelve months' trend, the text and the chart, in three kinds of rounds (cold, warm, unchanged:
see ``measure``). The baseline, measured in the same run, is the least any monthly figure costs: counting the
month's tickets through the same (community, created) index.

    .venv/bin/python -m bench.stats                      # SQLite in a temporary file
    .venv/bin/python -m bench.stats --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/feedback_bot_bench
    .venv/bin/python -m bench.stats --database-url sqlite+aiosqlite:///big.sqlite3 --reuse   # measure again

``build_tickets`` is the generator alone, for another benchmark that brings its own community.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiogram.methods import SendMessage, SendPhoto
from aiogram.types import Chat, Message, Update, User
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import assemble
from bot.config import SAMPLE_COMMUNITY, Settings
from bot.i18n import create_i18n
from bot.reports import chart
from domain.community_file import import_community, load_community_file
from domain.stats import SETTLE, Month, MonthCache, View, monthly_stats, summarise_months
from domain.ticket_counts import recount
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.models import (
    Base,
    Building,
    Category,
    Community,
    Membership,
    Role,
    Ticket,
    TicketStatus,
    seconds_between,
)
from storage.models import User as UserRow
from tests.fake_telegram import fake_bot

STAFF = 100001  # 王书记 in the sample community
RESIDENT = 990001
BATCH = 20_000
# How tickets of a past month end up: (status, share).
OUTCOMES = [
    (TicketStatus.CLOSED, 0.70),
    (TicketStatus.UNCONFIRMED, 0.12),
    (TicketStatus.RESOLVED, 0.04),
    (TicketStatus.IN_PROGRESS, 0.08),
    (TicketStatus.ASSIGNED, 0.06),
]
SETTLED = (TicketStatus.CLOSED, TicketStatus.UNCONFIRMED)


async def build_tickets(
    sessions: SessionFactory,
    community_id: int,
    count: int,
    first_month: Month,
    months: int,
    seed: int = 14,
    settled_before: datetime | None = None,
) -> None:
    """Insert ``count`` tickets of the community, spread evenly over ``months`` months from ``first_month``.

    With ``settled_before``, tickets created before it all ended closed or unconfirmed, as in a district that
    works its tickets: what is open, or waits for the resident's answer, is recent. The community's counts by
    month are made again from its tickets afterwards, as the ORM would have kept them.
    """
    rng = random.Random(seed)
    async with sessions() as session, session.begin():
        community = await session.get(Community, community_id)
        assert community is not None
        buildings = list(
            (
                await session.execute(
                    select(Building.id, Building.grid_id)
                    .join(Building.compound)
                    .where(Building.compound.has(community_id=community_id))
                )
            ).all()
        )
        categories = list(
            (
                await session.execute(
                    select(Category.id, Category.response_hours, Category.resolve_hours).where(
                        Category.community_id == community_id
                    )
                )
            ).all()
        )
        workers: dict[int | None, list[int]] = {}
        for grid_id, user_id in await session.execute(
            select(Membership.grid_id, Membership.user_id).where(
                Membership.community_id == community_id, Membership.role == Role.GRID_WORKER
            )
        ):
            workers.setdefault(grid_id, []).append(user_id)
        if await session.get(UserRow, RESIDENT) is None:
            session.add(UserRow(id=RESIDENT, full_name="居民", created_at=datetime.now(UTC)))
    start = first_month.bounds(community.timezone)[0]
    end = first_month.shift(months).bounds(community.timezone)[0]
    span = (end - start).total_seconds()
    statuses, weights = zip(*OUTCOMES, strict=True)
    rows: list[dict[str, Any]] = []
    for n in range(count):
        created = start + timedelta(seconds=span * n / count)
        building_id, grid_id = rng.choice(buildings)
        category_id, response_hours, resolve_hours = rng.choice(categories)
        status = rng.choices(statuses, weights)[0]
        if settled_before is not None and created < settled_before and status not in SETTLED:
            status = rng.choices(SETTLED, [0.85, 0.15])[0]
        accepted = None if status == TicketStatus.ASSIGNED else created + timedelta(hours=rng.uniform(0.1, 30))
        resolved = None
        if status in (TicketStatus.RESOLVED, TicketStatus.CLOSED, TicketStatus.UNCONFIRMED):
            resolved = created + timedelta(hours=rng.uniform(1, 1.5 * resolve_hours))
        closed = resolved + timedelta(days=rng.uniform(0, 7)) if resolved and status != TicketStatus.RESOLVED else None
        rated = status == TicketStatus.CLOSED and rng.random() < 0.6
        rows.append(
            {
                "community_id": community_id,
                "category_id": category_id,
                "building_id": building_id,
                "grid_id": grid_id,
                "reporter_id": RESIDENT,
                "description": "楼道灯不亮",
                "status": status,
                "level": "grid",
                "assignee_id": rng.choice(workers[grid_id]),
                "created_at": created,
                "updated_at": created,
                "accepted_at": accepted,
                "first_accepted_at": accepted,
                "resolved_at": resolved,
                # Inserted in bulk, past the ORM that keeps these from the two timestamps.
                "accept_seconds": seconds_between(created, accepted),
                "resolve_seconds": seconds_between(created, resolved),
                "closed_at": closed,
                "respond_by": created + timedelta(hours=response_hours),
                "resolve_by": created + timedelta(hours=resolve_hours),
                "rating": rng.choices([1, 2, 3, 4, 5], [1, 1, 2, 4, 6])[0] if rated else None,
                "rating_comment": "",
                "reopen_count": 1 if rng.random() < 0.05 else 0,
            }
        )
        if len(rows) == BATCH:
            await _insert(sessions, rows)
            rows = []
    if rows:
        await _insert(sessions, rows)
    # Written past the ORM, which counts each ticket in its month as it writes it (domain/ticket_counts.py).
    async with sessions() as session, session.begin():
        await recount(session, community_id)


async def analyse(engine: AsyncEngine) -> None:
    """The planner's statistics after a bulk load, as autovacuum (PostgreSQL) or ``PRAGMA optimize`` would have
    them soon after: without them a plan depends on luck."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")


async def _insert(sessions: SessionFactory, rows: list[dict[str, Any]]) -> None:
    # Core, not the ORM's bulk insert: the ORM leaves out a row's None values and so splits the batch into a
    # statement per run of rows with the same columns set (about two rows each here), 15 times slower.
    async with sessions() as session, session.begin():
        await session.execute(insert(Ticket.__table__), rows)


def stats_update(user_id: int, n: int) -> Update:
    chat = Chat(id=user_id, type="private")
    user = User(id=user_id, is_bot=False, first_name="王书记", language_code="zh-hans")
    message = Message(message_id=n, date=datetime.now(UTC), chat=chat, from_user=user, text="/stats")
    return Update(update_id=n, message=message)


async def prepare(url: str, tickets: int, months: int, now: datetime, reuse: bool) -> AsyncEngine:
    engine = create_engine(url)
    if reuse:
        async with create_session_factory(engine)() as session:
            found = await session.scalar(select(func.count()).select_from(Ticket))
        print(f"reusing {found:,} tickets")
        await summarise(engine, now)
        return engine
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    sessions = create_session_factory(engine)
    async with sessions() as session:
        await import_community(session, load_community_file(SAMPLE_COMMUNITY), now)
    async with sessions() as session:
        community_id = await session.scalar(select(Community.id))
    assert community_id is not None
    last = Month.of(now, "Asia/Shanghai")
    started = time.perf_counter()
    await build_tickets(sessions, community_id, tickets, last.shift(1 - months), months)
    await analyse(engine)
    print(f"built {tickets:,} tickets over {months} months in {time.perf_counter() - started:.0f} s")
    await summarise(engine, now)
    return engine


async def summarise(engine: AsyncEngine, now: datetime) -> None:
    """The statistics job's first two runs, as in the running bot a minute after an upgrade: the ended months
    get their rows, then are summed (nothing to do if an earlier run did it)."""
    began, months = time.perf_counter(), 0
    for at in (now, now + SETTLE):
        async with create_session_factory(engine)() as session:
            months += (await summarise_months(session, at)).summed
    if months:
        print(f"the statistics job summed {months} ended months in {time.perf_counter() - began:.1f} s (once)")


def _ms(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):.0f} ms, range {ms[0]:.0f}–{ms[-1]:.0f} ms"


def _forget_pictures() -> None:
    """The chart's caches emptied: the next chart is drawn from nothing (the picture without data too)."""
    chart._png.cache_clear()
    chart._kept.clear()


async def measure(engine: AsyncEngine, rounds: int, now: datetime) -> None:
    """Four kinds of rounds, each timed end to end through the dispatcher and, apart, in its two parts
    (``monthly_stats`` as the handler calls it, ``chart_png``):

    - cold: nothing cached in the process (no ended month, no picture): a community, month or language whose
      chart was not drawn ahead; the first of them is also the process's first chart;
    - after a start: as cold, but with the chart's words drawn ahead, as the bot does a while after it starts
      (``draw_ahead``), and figures that moved since;
    - warm: the ended months cached, and the chart drawn anew over its kept picture, as when the month's figures
      moved since the last /stats (the usual case for last month, whose late tickets are still being finished);
    - unchanged: as warm, but the figures did not move, so the chart is the one already drawn.
    """
    sessions = create_session_factory(engine)
    bot, telegram = fake_bot()
    # Telegram's one message a second into a chat would space the chart a second after the text (and each round
    # a second after the last): that is Telegram's pace, not the work /stats does, so it is left out here.
    settings = Settings(bot_token=None, community_file=None, send_rate_per_chat_seconds=0)
    app = assemble(settings, bot, sessions, lambda: now)
    i18n = create_i18n()
    month = Month.of(now, "Asia/Shanghai").shift(-1)
    start, end = month.bounds("Asia/Shanghai")
    month_count = (
        select(func.count())
        .select_from(Ticket)
        .where(Ticket.community_id == 1, Ticket.created_at >= start, Ticket.created_at < end)
    )
    async with sessions() as session:
        in_month = await session.scalar(month_count)
    print(f"/stats for {month}: {in_month:,} tickets that month; {rounds} rounds of each kind, load {_load()}")
    updates = iter(range(1, 10 * rounds))

    async def round_trip(kind: str) -> tuple[float, float, float, float]:
        if kind in ("cold", "after a start"):
            app.dispatcher.workflow_data["stats_cache"] = MonthCache()
            _forget_pictures()
        if kind == "after a start":
            await chart.draw_ahead(sessions, now, i18n, "zh_CN")
            chart._png.cache_clear()  # the figures moved since they were drawn ahead
        elif kind == "warm":
            chart._png.cache_clear()
        began = time.perf_counter()
        async with sessions() as session:
            await session.scalar(month_count)
        baseline = time.perf_counter() - began
        before = len(telegram.requests)
        began = time.perf_counter()
        await app.dispatcher.feed_update(bot, stats_update(STAFF, next(updates)))
        total = time.perf_counter() - began
        answer = telegram.requests[before:]
        assert [type(r) for r in answer] == [SendMessage, SendPhoto], answer
        # The two parts again, alone, in the same state of the caches.
        cache = MonthCache() if kind in ("cold", "after a start") else app.dispatcher.workflow_data["stats_cache"]
        began = time.perf_counter()
        async with sessions() as session:
            figures = await monthly_stats(
                session, viewer_id=STAFF, community_id=None, month=None, view=View.GRID, now=now, cache=cache
            )
        function = time.perf_counter() - began
        if kind == "cold":
            _forget_pictures()
        elif kind in ("warm", "after a start"):
            chart._png.cache_clear()
        with i18n.context(), i18n.use_locale("zh_CN"):
            began = time.perf_counter()
            chart.chart_png(figures)
            drawing = time.perf_counter() - began
        return total, function, drawing, baseline

    for kind in ("cold", "after a start", "warm", "unchanged"):
        measured = [await round_trip(kind) for _ in range(rounds)]
        totals, functions, drawings, baselines = (list(column) for column in zip(*measured, strict=True))
        print(f"{kind}: /stats, chart included: {_ms(totals)}")
        print(f"{kind}:   monthly_stats alone: {_ms(functions)}; chart_png alone: {_ms(drawings)}")
        print(f"{kind}:   baseline (count the month's tickets): {_ms(baselines)}")
        ratio = statistics.median(totals) / statistics.median(baselines)
        print(f"{kind}:   ratio /stats ÷ baseline: {ratio:.1f}; load {_load()}")


def _load() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=7, help="of each kind")
    parser.add_argument("--reuse", action="store_true", help="measure the tickets --database-url already has")
    args = parser.parse_args()
    now = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'stats.sqlite3'}"
        engine = await prepare(url, args.tickets, args.months, now, args.reuse)
        try:
            await measure(engine, args.rounds, now)
        finally:
            await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
