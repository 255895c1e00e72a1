"""Benchmark: fifty report wizards in flight at once, against a ceiling measured in the same run.

Each of ``wizards`` residents (already bound to a building) goes through /report, a category, a description,
Done and Submit, one update after another, all residents at once, through the real dispatcher with a fake Bot
session, as one bot process does it on PostgreSQL (with Redis for wizard state when given). The ceiling is
aiogram with the same fake session and database where every update's handler commits one row and replies, the
same number of users at once, five updates each. The two alternate, round by round, so a slow minute of this
shared machine falls on both alike; the ratio compares their totals.

    .venv/bin/python -m bench.wizards --database-url postgresql+asyncpg://…/db --redis-url redis://…/n

It DROPS AND RECREATES every table of the database it is given, and flushes the Redis database: give it
dedicated ones. ``measure`` is the reusable part (bench/scale.py may call it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from aiogram.fsm.storage.base import StorageKey
from aiogram.types import Update
from redis.asyncio import Redis
from sqlalchemy import delete, func, select

from bench.intake import button_update, ceiling_side, load_average, no_sleep, text_update
from bot.app import assemble
from bot.callbacks import CategoryCb
from bot.config import SAMPLE_COMMUNITY, Settings
from domain.clock import system_clock
from domain.community_file import import_community, load_community_file
from storage.db import create_engine, create_session_factory
from storage.models import Base, Building, Category, FsmRecord, Ticket
from storage.models import User as UserRow
from tests.fake_telegram import fake_bot

FIRST_RESIDENT = 5_100_000
LAST_RESIDENT = 6_000_000  # the ceiling's users start here (bench/intake.py)


@dataclass
class Figures:
    wizards: int
    rounds: int
    product_per_s: float  # updates per second, all rounds together
    ceiling_per_s: float
    errors: int  # handler errors, tickets missing, wizards left open
    product_cpu_ms: float  # this process's CPU time per update (both threads of aiosqlite, if any)
    ceiling_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.product_per_s / self.ceiling_per_s


async def measure(
    database_url: str, redis_url: str | None, wizards: int = 50, rounds: int = 5, fresh: bool = True
) -> Figures:
    """``rounds`` times: ``wizards`` whole report wizards at once, then the ceiling with as many users at once.

    ``fresh``: on a new sample community (every table dropped first); otherwise in the database as it is (its
    first building's residents, new ones each run), as bench/scale.py runs it inside a district.
    """
    engine = create_engine(database_url)
    sessions = create_session_factory(engine)
    if fresh:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        async with sessions() as session:
            await import_community(session, load_community_file(SAMPLE_COMMUNITY), system_clock())
    async with sessions() as session, session.begin():
        building = await session.scalar(select(Building).order_by(Building.id).limit(1))
        category = await session.scalar(select(Category).where(Category.code == "light").order_by(Category.id).limit(1))
        assert building is not None and category is not None
        last = await session.scalar(
            select(func.max(UserRow.id)).where(UserRow.id >= FIRST_RESIDENT, UserRow.id < LAST_RESIDENT)
        )
        first = (last or FIRST_RESIDENT - 1) + 1
        residents = list(range(first, first + wizards * rounds))
        now = system_clock()
        session.add_all(
            UserRow(
                id=r, full_name="居民", telegram_language="zh-hans", building_id=building.id, unit=1, created_at=now
            )
            for r in residents
        )
        # The ceiling's rows of an earlier run in this database (its keys start again in every process).
        await session.execute(delete(FsmRecord).where(FsmRecord.key.like("ceiling:%")))
    if redis_url:
        redis = Redis.from_url(redis_url)
        await redis.flushdb()
        await redis.aclose()
    bot, _ = fake_bot()
    app = assemble(Settings(bot_token=None, community_file=None, redis_url=redis_url), bot, sessions, sleep=no_sleep)
    category_data = CategoryCb(category_id=category.id).pack()

    def wizard(resident: int) -> list[Update]:
        return [
            text_update(resident, "/report"),
            button_update(resident, category_data),
            text_update(resident, "2单元门口的路灯坏了一个星期了"),
            text_update(resident, "✅ 完成"),
            text_update(resident, "📨 提交"),
        ]

    errors: Counter[str] = Counter()

    async def one_resident(updates: list[Update]) -> None:
        for update in updates:
            try:
                await app.dispatcher.feed_update(bot, update)
            except Exception as error:
                errors[type(error).__name__] += 1

    ceiling, close_ceiling = await ceiling_side(database_url, wizards * rounds * 5, create_tables=False)
    product_time = ceiling_time = product_cpu = ceiling_cpu = 0.0
    for n in range(rounds):
        batch = residents[n * wizards : (n + 1) * wizards]
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one_resident(wizard(r)) for r in batch))
        product_time += time.perf_counter() - started
        product_cpu += time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        await ceiling.concurrently(wizards, 5)
        ceiling_time += time.perf_counter() - started
        ceiling_cpu += time.process_time() - cpu

    async with sessions() as session:
        tickets = await session.scalar(
            select(func.count()).select_from(Ticket).where(Ticket.reporter_id.in_(residents))
        )
    storage = app.dispatcher.storage
    left_open = 0
    for r in residents:
        left_open += bool(await storage.get_state(StorageKey(bot_id=bot.id, chat_id=r, user_id=r)))
    await storage.close()
    await close_ceiling()
    await engine.dispose()
    updates = wizards * rounds * 5
    failures = sum(errors.values()) + (len(residents) - (tickets or 0)) + left_open
    return Figures(
        wizards,
        rounds,
        updates / product_time,
        updates / ceiling_time,
        failures,
        1000 * product_cpu / updates,
        1000 * ceiling_cpu / updates,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--wizards", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {load_average()}")
    figures = await measure(args.database_url, args.redis_url, args.wizards, args.rounds)
    print(f"load average at end: {load_average()}")
    state = "Redis" if args.redis_url else "the database"
    print(
        f"{figures.wizards} wizards at once, wizard state in {state}, {figures.rounds} rounds: product "
        f"{figures.product_per_s:.0f} updates/s, ceiling {figures.ceiling_per_s:.0f} updates/s; CPU per update "
        f"{figures.product_cpu_ms:.2f} ms and {figures.ceiling_cpu_ms:.2f} ms"
    )
    print(f"wizards: concurrent={figures.wizards} ratio={figures.ratio:.3f} errors={figures.errors}")


if __name__ == "__main__":
    asyncio.run(main())
