"""Benchmark: a district on one machine (issue 12). The product's own functions on 1M tickets and 100k residents.

It builds, once, a district on SQLite (files under data/scale/) and on PostgreSQL: one community holding
``--tickets`` tickets over 24 months (bench/stats.py's generator; what is open or waits for an answer is
recent, older tickets ended closed or unconfirmed) and ``--residents`` residents (bench/residents.py). Its first
grid has 10 workers and 10,000 open tickets within their deadlines, for routing. On SQLite it also builds the
same tickets spread over 50 communities. After the build, the minute jobs run until they find nothing to do
(their first runs are timed and printed), so what is timed afterwards is the steady state. Later runs reuse the
build (``--rebuild`` builds again); the schema is migrated to the newest revision either way.

Then it times, at the level the handlers and the scheduler call them (domain functions; /stats, /ledger and
/tickets also through the real dispatcher with the fake Bot session), each figure as a median over rounds with
the range, beside a baseline measured in the same run where one means something:

- monthly statistics of the big community (``monthly_stats`` with nothing cached, as the first /stats of ten
  minutes); baseline: counting the month's tickets through the (community, created) index;
- /ledger, the "me too" list, /tickets; baseline: one round trip (``SELECT 1`` in a transaction);
- the deadline sweep, the topic-candidates job and auto-close, in steady state; same baseline;
- filing and routing one ticket in the grid of 10 workers and 10,000 open tickets: p50 and p99 over all filings;
  baseline: one ORM row inserted and committed; on SQLite also the floor under it: a row inserted and committed
  by sqlite3 in the calling thread;
- queueing a 100k broadcast (``start_broadcast``): seconds and this process's peak RSS growth;
- the outbox sender with no rate limit against the fake Bot session: messages per second; baseline: the fake
  session alone;
- on PostgreSQL with Redis: 50 report wizards in flight through the dispatcher (bench/wizards.py) against
  the same-run ceiling, inside the district.

    .venv/bin/python -m bench.scale              # 31 minutes with the builds, 6 reusing them (at load 5-7)
    .venv/bin/python -m bench.scale --quick      # 50k tickets, 5k residents
    .venv/bin/python -m bench.scale --no-postgres

The PostgreSQL database (``--postgres-url``) and Redis database (``--redis-url``) are the benchmark's own: the
build drops everything in the database's public schema, and the wizards flush the Redis database. There is one
PostgreSQL district at a time, so switching between --quick and the full size rebuilds it.
Each run starts by putting back what an earlier run changed (its broadcasts, queued messages and filed tickets).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import sqlite3
import statistics
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiogram.types import Update
from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench import wizards
from bench.intake import text_update
from bench.residents import add_residents
from bench.stats import RESIDENT, analyse, build_tickets, stats_update
from bot.app import assemble
from bot.config import SAMPLE_COMMUNITY, Settings
from bot.i18n import create_i18n
from bot.memory import settle_after_start
from bot.outbound.notices import Renderer
from bot.outbound.sender import OutboxSender, SenderSettings
from domain.broadcasts import start_broadcast
from domain.community_file import import_community, parse_community
from domain.confirmation import close_unconfirmed
from domain.deadlines import SWEPT
from domain.deliberation import propose_candidates
from domain.directory import Directory
from domain.followers import similar_open_tickets
from domain.ledger import ledger
from domain.people import touch_user
from domain.stats import SETTLE, Month, MonthCache, View, monthly_stats, summarise_months
from domain.sweep import sweep
from domain.tickets import ReportDraft, file_report, open_tickets_for_worker
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.migrate import upgrade_database
from storage.models import (
    Broadcast,
    BroadcastKind,
    Building,
    Category,
    Community,
    FsmRecord,
    Grid,
    OutboxMessage,
    OutboxStatus,
    Ticket,
    TicketCardCopy,
    TicketStatus,
)
from storage.models import User as UserRow
from tests.fake_telegram import fake_bot

ROOT = Path(__file__).resolve().parent.parent
TZ = "Asia/Shanghai"
MONTHS = 24
FIRST_MONTH = Month(2025, 1)
# The last minutes of the 24 months: this month's tickets are all filed, so the jobs that look at this month
# see a whole month's work, and nothing is filed in the future.
NOW = datetime(2026, 12, 31, 15, 55, tzinfo=UTC)
SETTLED_BEFORE = NOW - timedelta(days=30)
STAFF = 100001  # 王书记, staff of the (first) community
WORKER = 200001  # 李娟, a worker of grid g1
FIRST_RESIDENT = 10_000_000
ROUTE_WORKERS = 10
BENCH_PERIODS = "2040"  # broadcasts this benchmark queues have periods from 2040-01 on
ID_STRIDE = 10_000_000  # community n's people have the sample's Telegram ids plus n times this
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/feedback_bot_scalebench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
UNLIMITED = 1_000_000.0  # a rate the sender's token bucket never waits for


@dataclass(frozen=True)
class Sizes:
    tickets: int
    residents: int
    communities: int  # the spread layout
    route_open: int  # open tickets of the routing grid
    filings: int  # tickets filed per routing round
    route_rounds: int
    sent: int  # messages per sender round
    wizards: int
    wizard_rounds: int
    rounds: int
    queue_rounds: int


FULL = Sizes(1_000_000, 100_000, 50, 10_000, 200, 3, 5_000, 50, 5, 5, 3)
QUICK = Sizes(50_000, 5_000, 50, 2_000, 200, 1, 1_000, 50, 1, 3, 2)


def now() -> datetime:
    return NOW


# --- the district ----------------------------------------------------------------------------------------


def district_specs(communities: int) -> list[Any]:
    """The sample community, ``communities`` times under other codes and Telegram ids; the first grid of each
    has 10 workers."""
    sample = tomllib.loads(SAMPLE_COMMUNITY.read_text(encoding="utf-8"))
    first_grid = sample["grids"][0]
    known = len(first_grid["workers"])
    first_grid["workers"] += [{"telegram_id": 200100 + n, "name": f"网格员{n}"} for n in range(ROUTE_WORKERS - known)]
    specs = []
    for n in range(communities):
        data = copy.deepcopy(sample)
        if n:
            _shift_ids(data, n * ID_STRIDE)
            data["community"]["code"] = f"d{n}"
            data["community"]["name"] += f"{n}"
            data["community"].pop("name_en", None)
        specs.append(parse_community(data, f"district community {n}"))
    return specs


def _shift_ids(node: Any, by: int) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "telegram_id":
                node[key] = value + by
            else:
                _shift_ids(value, by)
    elif isinstance(node, list):
        for item in node:
            _shift_ids(item, by)


@dataclass
class District:
    name: str  # "sqlite", "sqlite, 50 communities", "postgresql"
    url: str
    sizes: Sizes
    communities: int
    marker: Path  # what was built and how long it took

    @property
    def built_from(self) -> dict[str, Any]:
        """What the build depends on: the marker's record of it."""
        sizes = self.sizes
        return {"tickets": sizes.tickets, "residents": sizes.residents, "route_open": sizes.route_open, "url": self.url}

    @property
    def dialect(self) -> str:
        return make_url(self.url).get_backend_name()


def remove_sqlite(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


async def wipe(district: District) -> None:
    if district.dialect == "sqlite":
        remove_sqlite(Path(str(make_url(district.url).database)))
        return
    engine = create_engine(district.url)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await engine.dispose()


async def build(district: District, report: Report) -> None:
    """The district from nothing: communities, residents, tickets, the routing grid, then the jobs' first runs."""
    sizes = district.sizes
    district.marker.unlink(missing_ok=True)
    await wipe(district)
    started = time.perf_counter()
    engine = create_engine(district.url)
    await upgrade_database(engine)
    sessions = create_session_factory(engine)
    for spec in district_specs(district.communities):
        async with sessions() as session:
            await import_community(session, spec, NOW)
    for first in range(0, sizes.residents, 20_000):
        async with sessions() as session, session.begin():
            await add_residents(session, FIRST_RESIDENT + first, min(20_000, sizes.residents - first), NOW, 5)
    async with sessions() as session:
        community_ids = list(await session.scalars(select(Community.id).order_by(Community.id)))
    for n, community_id in enumerate(community_ids):
        share = sizes.tickets // len(community_ids) + (n < sizes.tickets % len(community_ids))
        await build_tickets(
            sessions, community_id, share, FIRST_MONTH, MONTHS, seed=14 + n, settled_before=SETTLED_BEFORE
        )
    inserted = time.perf_counter() - started
    route_open = await open_routing_grid(sessions, sizes.route_open)
    async with sessions() as session, session.begin():
        await keep_as_the_orm_would(session)
    await analyse(engine)
    loaded = time.perf_counter() - started
    for name, job in JOBS.items():
        runs, seconds = 0, 0.0
        while runs < 100:
            began = time.perf_counter()
            async with sessions() as session:
                result = await job(session, NOW)
            seconds += time.perf_counter() - began
            runs += 1
            if not result.changed:
                break
        report.note(district, f"first runs of the {name}, until it found nothing to do: {runs} runs, {seconds:.1f} s")
    await engine.dispose()
    built = time.perf_counter() - started
    report.note(
        district,
        f"built {sizes.tickets:,} tickets in {len(community_ids)} communities and {sizes.residents:,} residents in "
        f"{built:.0f} s ({inserted:.0f} s inserting, {loaded - inserted:.0f} s routing grid and statistics); "
        f"routing grid: {route_open:,} open tickets",
    )
    district.marker.parent.mkdir(parents=True, exist_ok=True)
    district.marker.write_text(json.dumps({"of": district.built_from, "built_s": built}))


async def open_routing_grid(sessions: SessionFactory, target: int) -> int:
    """Grid g1 of the first community gets ``target`` open tickets (its newest), all within their deadlines:
    the load routing weighs. Returns how many it has."""
    open_statuses = TicketStatus.open_statuses()
    async with sessions() as session, session.begin():
        grid_id = await session.scalar(select(Grid.id).order_by(Grid.id).limit(1))
        in_grid = Ticket.grid_id == grid_id
        have = await session.scalar(select(func.count()).where(in_grid, Ticket.status.in_(open_statuses)))
        missing = max(0, target - (have or 0))
        newest = (
            select(Ticket.id)
            .where(in_grid, Ticket.status.not_in(open_statuses))
            .order_by(Ticket.id.desc())
            .limit(missing)
            .scalar_subquery()
        )
        await session.execute(
            update(Ticket)
            .where(Ticket.id.in_(newest))
            .values(status=TicketStatus.IN_PROGRESS, resolved_at=None, closed_at=None, rating=None)
        )
        await session.execute(
            update(Ticket)
            .where(in_grid, Ticket.status.in_(open_statuses))
            .values(respond_by=NOW + timedelta(days=1), resolve_by=NOW + timedelta(days=3))
        )
        return (await session.scalar(select(func.count()).where(in_grid, Ticket.status.in_(open_statuses)))) or 0


async def keep_as_the_orm_would(session: AsyncSession) -> None:
    """What the ORM keeps up on every ticket it writes, for the tickets written here in bulk: the sweeps' wake
    time (as migration 0012_scale sets it for an upgraded database: each open ticket looked at once) and each
    person's open load, which routing reads."""
    await session.execute(
        update(Ticket).where(Ticket.status.in_(SWEPT), Ticket.wake_at.is_(None)).values(wake_at=Ticket.updated_at)
    )
    working = TicketStatus.open_statuses()
    load = (
        select(func.count())
        .where(Ticket.assignee_id == UserRow.id, Ticket.status.in_(working))
        .correlate(UserRow)
        .scalar_subquery()
    )
    assignees = select(Ticket.assignee_id).where(Ticket.status.in_(working))
    await session.execute(
        update(UserRow).where(or_(UserRow.id.in_(assignees), UserRow.open_tickets != 0)).values(open_tickets=load)
    )


async def ready(district: District, rebuild: bool, report: Report) -> AsyncEngine:
    """The district's engine, built now if it has to be; migrated to the newest schema."""
    built = json.loads(district.marker.read_text()) if district.marker.exists() else None
    if rebuild or built is None or built.get("of") != district.built_from:
        await build(district, report)
    else:
        report.note(district, f"reusing the district built in {built['built_s']:.0f} s (--rebuild builds it again)")
    engine = create_engine(district.url)
    await upgrade_database(engine)
    await put_back(create_session_factory(engine))
    await summarise_ended_months(district, create_session_factory(engine), report)
    return engine


async def summarise_ended_months(district: District, sessions: SessionFactory, report: Report) -> None:
    """The statistics job's runs, as after an upgrade: the first gives each ended month its row, the next (a
    minute later) sums them. Nothing to do when an earlier run did it."""
    began, months = time.perf_counter(), 0
    for at in (NOW, NOW + SETTLE):
        async with sessions() as session:
            months += (await summarise_months(session, at)).summed
    if months:
        seconds = time.perf_counter() - began
        report.note(district, f"the statistics job summed {months} ended months in {seconds:.1f} s (once)")


async def put_back(sessions: SessionFactory) -> None:
    """Undo what an earlier run changed: its broadcasts and queued messages, its filed tickets left open."""
    async with sessions() as session, session.begin():
        ours = select(Broadcast.id).where(Broadcast.period >= BENCH_PERIODS).scalar_subquery()
        await session.execute(delete(OutboxMessage).where(OutboxMessage.broadcast_id.in_(ours)))
        await session.execute(delete(Broadcast).where(Broadcast.period >= BENCH_PERIODS))
        await session.execute(delete(OutboxMessage).where(OutboxMessage.status.in_(OutboxStatus.unfinished())))
        # Cards "shown" by an earlier run's fake Telegram, whose message ids start again in every run.
        await session.execute(delete(TicketCardCopy))
        await session.execute(delete(FsmRecord).where(FsmRecord.key.like("ceiling:%")))
        # Every ticket the generator made has the one reporter; the others were filed by a run.
        await session.execute(
            update(Ticket)
            .where(Ticket.reporter_id != RESIDENT, Ticket.status.in_(TicketStatus.open_statuses()))
            .values(status=TicketStatus.CLOSED, resolved_at=NOW, closed_at=NOW)
        )
        await keep_as_the_orm_would(session)


# --- measuring -------------------------------------------------------------------------------------------


@dataclass
class Figure:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, unit: str, digits: int = 1) -> str:
        low, high = min(self.values), max(self.values)
        return f"median {self.median:,.{digits}f} {unit}, range {low:,.{digits}f}–{high:,.{digits}f}"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    final: dict[str, dict[str, float]] = field(default_factory=dict)  # district name → key → value

    def note(self, district: District, line: str) -> None:
        print(f"{district.name:<24} {line}", flush=True)

    def figure(self, district: District, key: str | None, value: float, line: str) -> None:
        self.note(district, line)
        if key:
            self.keep(district, key, value)

    def keep(self, district: District, key: str, value: float) -> None:
        self.final.setdefault(district.name, {})[key] = value


async def rounds_ms(n: int, call: Callable[[], Awaitable[object]]) -> Figure:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await call()
        times.append(1000 * (time.perf_counter() - began))
    return Figure(times)


def ratio(figure: Figure, baseline: Figure) -> str:
    return f"; baseline {baseline.text('ms', 2)}; ratio {figure.median / baseline.median:,.1f}"


async def measure(district: District, engine: AsyncEngine, report: Report, spread: bool = False) -> None:
    sizes = district.sizes
    sessions = create_session_factory(engine)
    n = sizes.rounds

    def fresh(call: Callable[..., Awaitable[object]], *args: Any, **kwargs: Any) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            async with sessions() as session:
                return await call(session, *args, **kwargs)

        return run

    async def round_trip(session: Any) -> None:
        async with session.begin():
            await session.execute(text("SELECT 1"))

    if not spread:
        # First, while this process holds the least garbage that freed memory could hide the growth in.
        await queue_broadcasts(district, sessions, report)
    trip = await rounds_ms(n, fresh(round_trip))
    start, end = Month.of(NOW, TZ).shift(-1).bounds(TZ)

    async def count_month(session: Any) -> None:
        async with session.begin():
            await session.scalar(
                select(func.count()).where(
                    Ticket.community_id == 1, Ticket.created_at >= start, Ticket.created_at < end
                )
            )

    async def uncached_stats(session: Any) -> None:
        await monthly_stats(
            session, viewer_id=STAFF, community_id=None, month=None, view=View.GRID, now=NOW, cache=MonthCache()
        )

    month_count = await rounds_ms(n, fresh(count_month))
    stats = await rounds_ms(n, fresh(uncached_stats))
    report.figure(
        district,
        "stats_ms",
        stats.median,
        f"monthly statistics (nothing cached): {stats.text('ms', 0)}" + ratio(stats, month_count),
    )
    jobs = {
        "sweep_ms": ("deadline sweep", JOBS["deadline sweep"]),
        "candidates_ms": ("candidates job", JOBS["candidates job"]),
        "autoclose_ms": ("auto-close", JOBS["auto-close"]),
    }
    for key, (name, job) in jobs.items():
        figure = await rounds_ms(n, fresh(job, NOW))
        report.figure(district, key, figure.median, f"{name} (steady state): {figure.text('ms')}" + ratio(figure, trip))
    if spread:
        return
    async with sessions() as session:
        resident = FIRST_RESIDENT  # bench/residents.py puts the first resident in the first building
        building_id = await session.scalar(select(Building.id).order_by(Building.id).limit(1))
        light = await session.scalar(select(Category.id).where(Category.code == "light", Category.community_id == 1))
    assert building_id is not None and light is not None
    reads = {
        "/ledger": fresh(ledger, viewer_id=STAFF, now=NOW),
        '"me too" list': fresh(similar_open_tickets, user_id=resident, building_id=building_id, category_id=light),
        "/tickets (a worker of the routing grid)": fresh(open_tickets_for_worker, WORKER),
    }
    for name, call in reads.items():
        figure = await rounds_ms(n, call)
        report.figure(district, None, figure.median, f"{name}: {figure.text('ms')}" + ratio(figure, trip))
    await through_dispatcher(district, sessions, report)
    await routing(district, sessions, report)
    async with sessions() as session, session.begin():
        # The cards of the tickets just filed: the sender's figure is about the broadcasts alone.
        await session.execute(
            delete(OutboxMessage).where(
                OutboxMessage.broadcast_id.is_(None), OutboxMessage.status.in_(OutboxStatus.unfinished())
            )
        )
    await send_broadcasts(district, sessions, report)


async def through_dispatcher(district: District, sessions: SessionFactory, report: Report) -> None:
    """/stats (chart included, its cache warm after the first), /ledger and /tickets as staff and worker send them."""
    bot, telegram = fake_bot()
    settings = Settings(bot_token=None, community_file=None, send_rate_per_chat_seconds=0)
    app = assemble(settings, bot, sessions, now)
    commands: list[tuple[str, Callable[[int], Update]]] = [
        ("/stats", lambda k: stats_update(STAFF, k)),
        ("/ledger", lambda _k: text_update(STAFF, "/ledger")),
        ("/tickets", lambda _k: text_update(WORKER, "/tickets")),
    ]
    for name, update_of in commands:
        times = []
        for k in range(district.sizes.rounds):
            before = len(telegram.requests)
            began = time.perf_counter()
            await app.dispatcher.feed_update(bot, update_of(k + 1))
            times.append(1000 * (time.perf_counter() - began))
            if len(telegram.requests) == before:
                raise SystemExit(f"benchmark is wrong: {name} was not answered")
        figure = Figure(times)
        report.figure(district, None, figure.median, f"{name} through the dispatcher: {figure.text('ms')}")
    await app.dispatcher.storage.close()


async def routing(district: District, sessions: SessionFactory, report: Report) -> None:
    """Tickets filed one after another by residents of the routing grid's first building, as Submit files them."""
    sizes = district.sizes
    directory = Directory()
    async with sessions() as session:
        category = await session.scalar(select(Category).where(Category.code == "light", Category.community_id == 1))
        buildings = await session.scalar(select(func.count()).select_from(Building))
        grid_open = await session.scalar(
            select(func.count()).where(Ticket.grid_id == 1, Ticket.status.in_(TicketStatus.open_statuses()))
        )
    assert category is not None and buildings
    reporters = [FIRST_RESIDENT + k * buildings for k in range(min(50, sizes.residents // buildings or 1))]
    people = []
    for reporter in reporters:
        async with sessions() as session:
            people.append(await touch_user(session, reporter, f"居民{reporter}", "zh-hans", NOW))
    draft = ReportDraft(category_id=category.id, description="2单元门口的路灯坏了一个星期了")

    async def file_one(k: int) -> None:
        person = people[k % len(people)]
        async with sessions() as session:
            home = await directory.home(session, person)
            found = await directory.category(session, 1, category.id)
            assert home is not None and found is not None
            await file_report(session, reporter=person, building=home, category=found, draft=draft, now=NOW)

    async def ceiling(k: int) -> None:
        async with sessions() as session, session.begin():
            session.add(FsmRecord(key=f"ceiling:route:{k}", state="x", data={}))

    floor = CommitFloor(district.marker.parent / "floor.sqlite3") if district.dialect == "sqlite" else None
    filed, per_round_p99, base, floor_times = [], [], [], []
    for r in range(sizes.route_rounds):
        times = []
        for k in range(sizes.filings):
            if floor is not None:
                began = time.perf_counter()
                floor.commit_one()
                floor_times.append(1000 * (time.perf_counter() - began))
            began = time.perf_counter()
            await ceiling(r * sizes.filings + k)
            base.append(1000 * (time.perf_counter() - began))
            began = time.perf_counter()
            await file_one(k)
            times.append(1000 * (time.perf_counter() - began))
        per_round_p99.append(percentile(times, 99))
        filed += times
    if floor is not None:
        floor.close()
    async with sessions() as session, session.begin():
        await session.execute(delete(FsmRecord).where(FsmRecord.key.like("ceiling:%")))
    p50, p99 = percentile(filed, 50), percentile(filed, 99)
    floor_line = (
        f"; floor (the same, by sqlite3 in this thread) p50 {percentile(floor_times, 50):.2f} ms, "
        f"p99 {percentile(floor_times, 99):.2f} ms"
        if floor_times
        else ""
    )
    report.figure(
        district,
        "route_p99_ms",
        p99,
        f"filing + routing one ticket ({ROUTE_WORKERS} workers, {grid_open:,} open tickets in the grid, "
        f"{len(filed)} tickets): p50 {p50:.1f} ms, p99 {p99:.1f} ms (p99 per round "
        f"{min(per_round_p99):.1f}–{max(per_round_p99):.1f}); baseline (one row inserted and committed) "
        f"p50 {percentile(base, 50):.1f} ms, p99 {percentile(base, 99):.1f} ms" + floor_line,
    )


class CommitFloor:
    """The floor under any write of this process: one row inserted and committed by sqlite3 in the calling thread,
    as durably as the product commits (WAL, synchronous=FULL), in a scratch file beside the district. No thread
    hand-over, no SQLAlchemy, 0.2-0.3 ms of work; what its p99 adds to that is what the machine's scheduler and disk
    do to a process as busy as this one (docs/scale.md, "Filing's tail and the floor under it")."""

    def __init__(self, path: Path) -> None:
        remove_sqlite(path)
        self.path = path
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")

    def commit_one(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")
        self.connection.execute("INSERT INTO rows (note) VALUES ('x')")
        self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()
        remove_sqlite(self.path)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh (Linux); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def queue_broadcasts(district: District, sessions: SessionFactory, report: Report) -> None:
    """A broadcast to every resident queued, ``queue_rounds`` times, as the scheduler or "send now" starts one."""
    sizes = district.sizes
    seconds, growth = [], []
    recipients = 0
    for r in range(sizes.queue_rounds):
        gc.collect()
        peak = reset_peak_rss()
        before = rss_mb("VmRSS")
        began = time.perf_counter()
        async with sessions() as session:
            started = await start_broadcast(session, 1, BroadcastKind.AGENDA, f"{int(BENCH_PERIODS) + r}-01", NOW)
        seconds.append(time.perf_counter() - began)
        growth.append(rss_mb("VmHWM" if peak else "VmRSS") - before)
        recipients = started.broadcast.recipients
        if not started.new or recipients < sizes.residents * 0.9:
            raise SystemExit(f"benchmark is wrong: {recipients} recipients queued for {sizes.residents:,} residents")
    queued, grew = Figure(seconds), Figure(growth)
    report.figure(
        district,
        "queue_100k_s",
        queued.median,
        f"queueing a broadcast to {recipients:,} residents: {queued.text('s', 2)}",
    )
    report.figure(
        district,
        "queue_rss_growth_mb",
        grew.median,
        f"  its {'peak ' if reset_peak_rss() else ''}RSS growth: {grew.text('MB', 1)}",
    )


async def send_broadcasts(district: District, sessions: SessionFactory, report: Report) -> None:
    """The sender with no rate limit, running as the bot runs it, sends ``sent`` messages a round from the queued
    broadcasts; it is stopped once they have gone (a round of its own goes on while there is work)."""
    sizes = district.sizes
    bot, telegram = fake_bot()
    renderer = Renderer(create_i18n("zh_CN"), ZoneInfo(TZ))
    settings = SenderSettings(rate_per_second=UNLIMITED, chat_interval=0)
    rates, base = [], []
    for _ in range(sizes.queue_rounds):
        began = time.perf_counter()
        for k in range(min(sizes.sent, 2_000)):
            await bot.send_message(FIRST_RESIDENT + k, "议事会通知")
        base.append(min(sizes.sent, 2_000) / (time.perf_counter() - began))
        sender = OutboxSender(bot, sessions, renderer, now, settings, sole=True)
        before, stop = len(telegram.accepted), asyncio.Event()
        began = time.perf_counter()
        running = asyncio.create_task(sender.run(stop))
        while len(telegram.accepted) - before < sizes.sent:
            if running.done():
                raise SystemExit("benchmark is wrong: the sender stopped")
            await asyncio.sleep(0.005)
        rates.append((len(telegram.accepted) - before) / (time.perf_counter() - began))
        stop.set()
        sender.wake()
        await running
    sent, ceiling = Figure(rates), Figure(base)
    report.figure(
        district,
        "sender_unlimited_per_s",
        sent.median,
        f"sender, no rate limit, fake Bot session ({sizes.sent:,} messages a round): {sent.text('msg/s', 0)}; "
        f"baseline (the fake session alone) {ceiling.text('msg/s', 0)}; ratio {sent.median / ceiling.median:.3f}",
    )


async def concurrent_wizards(district: District, redis_url: str, report: Report) -> None:
    sizes = district.sizes
    figures = await wizards.measure(district.url, redis_url, sizes.wizards, sizes.wizard_rounds, fresh=False)
    report.keep(district, "pg_concurrent_ratio", figures.ratio)
    report.figure(
        district,
        "pg_errors",
        figures.errors,
        f"{figures.wizards} report wizards in flight with Redis, {figures.rounds} rounds: product "
        f"{figures.product_per_s:.0f} updates/s, ceiling {figures.ceiling_per_s:.0f} updates/s, ratio "
        f"{figures.ratio:.3f}, errors {figures.errors}",
    )


async def _sweep(session: Any, at: datetime) -> Any:
    return await sweep(session, at, yellow_share=Settings.model_fields["ledger_yellow_share"].default)


async def _auto_close(session: Any, at: datetime) -> Any:
    days = Settings.model_fields["confirm_within_days"].default
    return await close_unconfirmed(session, at, within=timedelta(days=days))


# The minute jobs as bot/app.py registers them, with the default settings.
JOBS: dict[str, Callable[[Any, datetime], Awaitable[Any]]] = {
    "deadline sweep": _sweep,
    "candidates job": propose_candidates,
    "auto-close": _auto_close,
}


# --- the run ---------------------------------------------------------------------------------------------


def districts(sizes: Sizes, data: Path, postgres_url: str | None) -> tuple[District, District, District | None]:
    one = District(
        "sqlite",
        f"sqlite+aiosqlite:///{data / f'one-{sizes.tickets}.sqlite3'}",
        sizes,
        1,
        data / f"one-{sizes.tickets}.json",
    )
    spread_file = f"spread{sizes.communities}-{sizes.tickets}"
    spread = District(
        f"sqlite, {sizes.communities} communities",
        f"sqlite+aiosqlite:///{data / f'{spread_file}.sqlite3'}",
        sizes,
        sizes.communities,
        data / f"{spread_file}.json",
    )
    if not postgres_url:
        return one, spread, None
    database = make_url(postgres_url).database
    pg = District("postgresql", postgres_url, sizes, 1, data / f"pg-{database}.json")
    return one, spread, pg


def final_line(report: Report, sizes: Sizes, one: District, pg: District | None) -> str:
    sqlite = report.final.get(one.name, {})
    postgres = report.final.get(pg.name, {}) if pg else {}

    def value(source: dict[str, float], key: str, digits: int) -> str:
        return f"{source[key]:.{digits}f}" if key in source else "n/a"

    return (
        f"scale: tickets={sizes.tickets} stats_ms={value(sqlite, 'stats_ms', 0)} "
        f"candidates_ms={value(sqlite, 'candidates_ms', 1)} sweep_ms={value(sqlite, 'sweep_ms', 1)} "
        f"queue_100k_s={value(sqlite, 'queue_100k_s', 2)} "
        f"queue_rss_growth_mb={value(sqlite, 'queue_rss_growth_mb', 0)} "
        f"sender_unlimited_per_s={value(sqlite, 'sender_unlimited_per_s', 0)} "
        f"route_p99_ms={value(sqlite, 'route_p99_ms', 1)} "
        f"pg_concurrent_ratio={value(postgres, 'pg_concurrent_ratio', 3)} pg_errors={value(postgres, 'pg_errors', 0)}"
    )


async def run(
    sizes: Sizes,
    data: Path,
    postgres_url: str | None,
    redis_url: str | None,
    rebuild: bool = False,
    sqlite: bool = True,
    routing_only: bool = False,
) -> tuple[Report, str]:
    report = Report()
    one, spread, pg = districts(sizes, data, postgres_url)
    if routing_only:
        engine = await ready(one, rebuild, report)
        settle_after_start()
        try:
            await routing(one, create_session_factory(engine), report)
        finally:
            await engine.dispose()
        return report, final_line(report, sizes, one, None)
    for district, is_spread in ((one, False), (spread, True), (pg, False)):
        if district is None or (district is not pg and not sqlite):
            continue
        engine = await ready(district, rebuild, report)
        settle_after_start()  # what the bot does once it is up (bot/memory.py)
        try:
            await measure(district, engine, report, spread=is_spread)
        finally:
            await engine.dispose()
        if district is pg and redis_url:
            await concurrent_wizards(district, redis_url, report)
    return report, final_line(report, sizes, one, pg)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (2 cores, shared)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50k tickets, 5k residents")
    parser.add_argument("--rebuild", action="store_true", help="build the districts again")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "scale", help="where the SQLite districts live")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--routing-only", action="store_true", help="only filing + routing on the one-community SQLite district"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    print(f"load average at start: {load()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    began = time.perf_counter()
    _report, line = await run(
        sizes,
        args.data,
        None if args.no_postgres else args.postgres_url,
        None if args.no_postgres else args.redis_url,
        args.rebuild,
        not args.no_sqlite,
        args.routing_only,
    )
    print(f"load average at end: {load()}; {time.perf_counter() - began:.0f} s in all")
    print(line)


if __name__ == "__main__":
    asyncio.run(main())
