"""The street office's ranking of its communities, beside a same-run baseline: the street office opening each
community's own /stats (by grid, without the trend) one after the other.

Two communities (the sample and 和平里, tests/communities/heping.toml) with N tickets each over 24 months, in
SQLite in a temporary directory; alternating rounds, nothing cached (as the first press after ten quiet minutes).

    .venv/bin/python -m bench.street 250000 7     # tickets per community, rounds
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from bench.stats import analyse, build_tickets
from bot.config import SAMPLE_COMMUNITY
from domain.community_file import import_community, load_community_file
from domain.stats import Month, MonthCache, View, monthly_stats, street_stats
from storage.db import create_engine, create_session_factory
from storage.models import Base, Community

HEPING = Path("tests/communities/heping.toml")
STREET = 500001


async def main(per_community: int, rounds: int) -> None:
    now = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 's.sqlite3'}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        sessions = create_session_factory(engine)
        for path in (SAMPLE_COMMUNITY, HEPING):
            async with sessions() as session:
                await import_community(session, load_community_file(path), now)
        async with sessions() as session:
            ids = list(await session.scalars(select(Community.id).order_by(Community.id)))
        last = Month.of(now, "Asia/Shanghai")
        started = time.perf_counter()
        for i, cid in enumerate(ids):
            await build_tickets(sessions, cid, per_community, last.shift(-23), 24, seed=14 + i)
        await analyse(engine)
        print(f"built {per_community:,} tickets x {len(ids)} communities in {time.perf_counter() - started:.0f} s")
        month = last.shift(-1)
        ranking, each = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            async with sessions() as session:
                stats = await street_stats(session, viewer_id=STREET, month=month, now=now, cache=MonthCache())
            ranking.append(time.perf_counter() - began)
            began = time.perf_counter()
            for cid in ids:
                async with sessions() as session:
                    await monthly_stats(
                        session,
                        viewer_id=STREET,
                        community_id=cid,
                        month=month,
                        view=View.GRID,
                        now=now,
                        trend=False,
                        cache=MonthCache(),
                    )
            each.append(time.perf_counter() - began)
        print(f"received in {month}: {[r.figures.received for r in stats.rows]}")
        for name, values in (("street_stats (ranking)", ranking), ("monthly_stats x each community, no trend", each)):
            ms = sorted(v * 1000 for v in values)
            print(f"{name}: median {statistics.median(ms):.0f} ms, range {ms[0]:.0f}-{ms[-1]:.0f} ms")
        print("load", " ".join(f"{x:.1f}" for x in os.getloadavg()))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 250_000, int(sys.argv[2]) if len(sys.argv) > 2 else 7))
