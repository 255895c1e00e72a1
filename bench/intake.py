"""Benchmark: complete report wizards pushed through the real dispatcher, against the unavoidable ceiling.

The product side takes updates as the running bot does: each batch of 100 (a full getUpdates answer, as under
load) is recorded in the inbox in one transaction, then each update is handled and marked handled. The ceiling
is aiogram with the same fake Bot session and the same kind of database, where each update's handler replies and
commits one row. The product's own logic may cost no more than that write (ratio ≥ 0.5).
Both sides run in one process in alternating chunks, so the machine's slow minutes fall on both alike; each
round's ratio compares the two totals, and the median round is reported.

    .venv/bin/python -m bench.intake
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
from aiogram import Bot, Dispatcher, Router
from aiogram.types import CallbackQuery, Chat, Message, Update, User
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import assemble
from bot.callbacks import CategoryCb
from bot.config import SAMPLE_COMMUNITY, Settings
from bot.intake import UpdateInbox
from bot.memory import settle_after_start
from domain.clock import system_clock
from domain.community_file import import_community, load_community_file
from storage.db import create_engine, create_session_factory
from storage.models import Base, Building, Category, FsmRecord, InboundUpdate, Ticket
from storage.models import User as UserRow
from tests.fake_telegram import BOT_ID, fake_bot

ROOT = Path(__file__).resolve().parent.parent
ids = itertools.count(1)
BOT_USER = User(id=BOT_ID, is_bot=True, first_name="bot")


def text_update(user_id: int, text: str) -> Update:
    chat = Chat(id=user_id, type="private")
    user = User(id=user_id, is_bot=False, first_name="居民", language_code="zh-hans")
    message = Message(message_id=next(ids), date=datetime.now(UTC), chat=chat, from_user=user, text=text)
    return Update(update_id=next(ids), message=message)


def button_update(user_id: int, data: str) -> Update:
    chat = Chat(id=user_id, type="private")
    user = User(id=user_id, is_bot=False, first_name="居民", language_code="zh-hans")
    message = Message(message_id=next(ids), date=datetime.now(UTC), chat=chat, from_user=BOT_USER, text="…")
    query = CallbackQuery(id=str(next(ids)), from_user=user, chat_instance="b", data=data, message=message)
    return Update(update_id=next(ids), callback_query=query)


Feed = Callable[[list[Update]], Awaitable[None]]
STEPS = ("/report", "category", "description", "Done", "Submit")
INBOX = "inbox (record, mark)"


class Trips:
    """Counts, per wizard step, the SQL statements and the hand-overs to another thread (aiosqlite's worker
    thread, or a filter aiogram runs through ``asyncio.to_thread``): where an update's time goes."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.hops: Counter[str] = Counter()
        self.updates: Counter[str] = Counter()
        self.step: str | None = None

    def watch(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)

    def _statement(self, *_args: object) -> None:
        if self.step is not None:
            self.statements[self.step] += 1

    @contextlib.contextmanager
    def counting_hops(self) -> Iterator[None]:
        hand_over = aiosqlite.Connection._execute
        to_thread = asyncio.to_thread

        async def counted_hand_over(
            connection: aiosqlite.Connection, fn: object, *args: object, **kw: object
        ) -> object:
            if self.step is not None:
                self.hops[self.step] += 1
            return await hand_over(connection, fn, *args, **kw)  # type: ignore[arg-type]

        async def counted_to_thread(fn: object, *args: object, **kw: object) -> object:
            if self.step is not None:
                self.hops[self.step] += 1
            return await to_thread(fn, *args, **kw)  # type: ignore[arg-type]

        aiosqlite.Connection._execute = counted_hand_over  # type: ignore[method-assign]
        asyncio.to_thread = counted_to_thread  # type: ignore[assignment]
        try:
            yield
        finally:
            aiosqlite.Connection._execute = hand_over  # type: ignore[method-assign]
            asyncio.to_thread = to_thread

    @contextlib.contextmanager
    def at(self, step: str, updates: int = 1) -> Iterator[None]:
        self.step = step
        self.updates[step] += updates
        try:
            yield
        finally:
            self.step = None

    def report(self) -> str:
        lines = ["per update, by step: SQL statements, thread hops"]
        for step in (*STEPS, INBOX):
            n = self.updates[step] or 1
            lines.append(f"  {step:<22} {self.statements[step] / n:5.2f} statements  {self.hops[step] / n:5.2f} hops")
        total = sum(self.updates[step] for step in STEPS) or 1
        lines.append(
            f"  {'all (one update)':<22} {sum(self.statements.values()) / total:5.2f} statements  "
            f"{sum(self.hops.values()) / total:5.2f} hops"
        )
        return "\n".join(lines)


class Side:
    """One side of the comparison: how it takes a batch of updates, the updates, and the time spent on them."""

    def __init__(self, feed: Feed, updates: list[Update]) -> None:
        self.feed, self.updates = feed, updates
        self.done = 0
        self.elapsed = 0.0
        self.cpu = 0.0  # this process's CPU time (aiosqlite's thread included): what a loaded machine cannot blur

    async def run(self, count: int) -> None:
        batch = self.updates[self.done : self.done + count]
        started, cpu = time.perf_counter(), time.process_time()
        await self.feed(batch)
        self.elapsed += time.perf_counter() - started
        self.cpu += time.process_time() - cpu
        self.done += len(batch)

    async def concurrently(self, users: int, steps: int) -> None:
        """The next ``users`` × ``steps`` updates as ``users`` people at once, each sending ``steps`` in turn."""
        batch = self.updates[self.done : self.done + users * steps]
        started = time.perf_counter()

        async def one_user(updates: list[Update]) -> None:
            await self.feed(updates)

        cpu = time.process_time()
        await asyncio.gather(*(one_user(batch[n::users]) for n in range(users)))
        self.cpu += time.process_time() - cpu
        self.elapsed += time.perf_counter() - started
        self.done += len(batch)

    @property
    def per_second(self) -> float:
        return self.done / self.elapsed

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.done


Close = Callable[[], Awaitable[None]]


async def no_sleep(_seconds: float) -> None:
    return None


async def product_side(db_url: str, reports: int, trips: Trips) -> tuple[Side, Side, Close]:
    """The bot as it runs: the sample community, residents bound to a building, whole report wizards.

    Two sides on the one bot (a process has one dispatcher): ``reports`` wizards through the inbox, as the
    bot runs, and as many fed to the dispatcher directly, as it ran before updates were recorded, so the
    inbox's cost is measured in the same run.
    """
    engine = create_engine(db_url)
    trips.watch(engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = create_session_factory(engine)
    async with sessions() as session:
        await import_community(session, load_community_file(SAMPLE_COMMUNITY), system_clock())
    async with sessions() as session, session.begin():
        building = await session.scalar(select(Building).order_by(Building.id).limit(1))
        category = await session.scalar(select(Category).where(Category.code == "light"))
        assert building is not None and category is not None
        residents = list(range(5_000_000, 5_000_000 + 2 * reports))
        now = system_clock()
        session.add_all(
            UserRow(
                id=r,
                full_name="居民",
                telegram_language="zh-hans",
                building_id=building.id,
                unit=1,
                created_at=now,
            )
            for r in residents
        )
    bot, _ = fake_bot()
    # Each resident's five updates come back to back here, so the one-second pacing of replies into a chat
    # would make this a benchmark of sleeping. A person typing never meets it; the pacing's bookkeeping
    # still runs and is measured.
    app = assemble(Settings(bot_token=None, community_file=None), bot, sessions, sleep=no_sleep)
    wizard = [
        lambda r: text_update(r, "/report"),
        lambda r: button_update(r, CategoryCb(category_id=category.id).pack()),
        lambda r: text_update(r, "2单元门口的路灯坏了一个星期了"),
        lambda r: text_update(r, "✅ 完成"),
        lambda r: text_update(r, "📨 提交"),
    ]

    async def check_and_close() -> None:
        async with sessions() as session:
            filed = len(list(await session.scalars(select(Ticket.id))))
            left = len(list(await session.scalars(select(FsmRecord.key))))
            unhandled = len(
                list(await session.scalars(select(InboundUpdate.update_id).where(InboundUpdate.handled_at.is_(None))))
            )
        await engine.dispose()
        if filed != 2 * reports or left or unhandled:
            raise SystemExit(
                f"benchmark is wrong: {filed} tickets for {2 * reports} wizards, {left} wizards left open, "
                f"{unhandled} updates not marked handled"
            )

    recorder = UpdateInbox(bot, app.dispatcher, sessions, system_clock)

    async def through_the_inbox(batch: list[Update]) -> None:
        """As the bot takes a getUpdates batch: recorded in one transaction, then each handled and marked."""
        with trips.at(INBOX, len(batch)):
            fresh = await recorder.record(batch)
        for update in fresh:
            with trips.at(steps[update.update_id]):
                await recorder.handle(update)
        with trips.at(INBOX, 0):
            await recorder.write_marks()

    inboxed, direct = residents[:reports], residents[reports:]
    updates = [step(r) for r in inboxed for step in wizard]
    steps = {u.update_id: STEPS[n % len(STEPS)] for n, u in enumerate(updates)}
    return (
        Side(through_the_inbox, updates),
        Side(one_by_one(app.dispatcher, bot), [step(r) for r in direct for step in wizard]),
        check_and_close,
    )


def one_by_one(dispatcher: Dispatcher, bot: Bot) -> Feed:
    async def feed(batch: list[Update]) -> None:
        for update in batch:
            await dispatcher.feed_update(bot, update)

    return feed


async def ceiling_side(db_url: str, updates: int, create_tables: bool = True) -> tuple[Side, Close]:
    """aiogram + the same fake session + one ORM row committed and one reply per update."""
    engine = create_engine(db_url)
    if create_tables:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    sessions = create_session_factory(engine)
    router = Router()

    @router.message()
    async def reply_and_commit(message: Message) -> None:
        async with sessions() as session, session.begin():
            session.add(FsmRecord(key=f"ceiling:{message.message_id}", state="x", data={}))
        await message.answer("ok")

    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    bot, _ = fake_bot()
    return Side(
        one_by_one(dispatcher, bot), [text_update(6_000_000 + n, "hello") for n in range(updates)]
    ), engine.dispose


async def measure_round(tmp: str, n: int, reports: int, chunk: int, trips: Trips) -> tuple[Side, Side, Side]:
    """All sides in alternating chunks of ``chunk`` wizards, so a slow minute slows them alike."""
    url = f"sqlite+aiosqlite:///{tmp}/product{n}.sqlite3"
    product, direct, close_product = await product_side(url, reports, trips)
    ceiling, close_ceiling = await ceiling_side(f"sqlite+aiosqlite:///{tmp}/ceiling{n}.sqlite3", reports * 5)
    # What the bot does once it is up (bot/app.py, bot/memory.py), as bench/scale.py does: without it, every full
    # pass of the collector walks the 300,000 objects start-up made, on both sides, which no running bot does.
    settle_after_start()
    while product.done < len(product.updates):
        await ceiling.run(chunk * 5)
        await product.run(chunk * 5)
        await direct.run(chunk * 5)
    await close_product()
    await close_ceiling()
    return product, direct, ceiling


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=300, help="complete wizards per round (5 updates each)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median round's ratio is reported")
    parser.add_argument("--chunk", type=int, default=20, help="wizards per alternating chunk")
    args = parser.parse_args()
    results = []
    costs = []
    cpu_ratios: list[float] = []
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            trips = Trips()
            with trips.counting_hops():
                sides = await measure_round(tmp, n, args.reports, args.chunk, trips)
            product, direct, ceiling = (side.per_second for side in sides)
            results.append((product / ceiling, product, ceiling))
            costs.append(product / direct)
            cpu_ratio = sides[2].cpu_ms / sides[0].cpu_ms
            cpu_ratios.append(cpu_ratio)
            print(
                f"round {n + 1}: product {product:,.0f} updates/s, ceiling {ceiling:,.0f} updates/s, "
                f"ratio {product / ceiling:.3f}; without the inbox {direct:,.0f} updates/s "
                f"(inbox keeps {product / direct:.2f} of it); CPU per update {sides[0].cpu_ms:.2f} ms and "
                f"{sides[2].cpu_ms:.2f} ms (ratio {cpu_ratio:.3f})"
            )
    print(f"load average at end: {load_average()}")
    print(trips.report())
    ratio, product, ceiling = sorted(results)[len(results) // 2]
    print(f"wizards: {args.reports} per round ({args.reports * 5} updates), {args.rounds} rounds; the median round:")
    print(f"ratios over the rounds: {min(r[0] for r in results):.3f}–{max(r[0] for r in results):.3f}")
    print(f"inbox: keeps {sorted(costs)[len(costs) // 2]:.2f} of the direct path's speed (median round)")
    print(
        f"CPU time per update, ceiling over product: {min(cpu_ratios):.3f}–{max(cpu_ratios):.3f}, "
        f"median {sorted(cpu_ratios)[len(cpu_ratios) // 2]:.3f} (what the ratio would be with a core to itself)"
    )
    print(f"intake: updates_per_s={product:.1f} ceiling_per_s={ceiling:.1f} ratio={ratio:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
