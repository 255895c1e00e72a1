"""When things happen: every minute the domain's sweeps run (deadlines, and unanswered "Is it fixed?").

The scheduler only decides *when*. Whether a reminder, an escalation or an auto-close already happened is in
the tickets' history and status, so a run that fires twice, overlaps another process, or follows a restart
repeats nothing. On top of that, each minute's run happens once in total however many processes share the
database: the first to insert the minute's :class:`ScheduledRun` row runs it, the others skip it. Jobs live in
memory (APScheduler 3.11 ``AsyncIOScheduler``) and are registered at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from domain.clock import Clock
from storage.db import SessionFactory
from storage.models import ScheduledRun

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60
# Rows of past runs are kept this long (they only show who ran what, for an operator).
KEEP_RUNS = timedelta(days=2)


class SweepResult(Protocol):
    @property
    def changed(self) -> bool: ...


Sweep = Callable[[AsyncSession, datetime], Awaitable[SweepResult]]


async def run_sweep(
    name: str, sweep: Sweep, session_factory: SessionFactory, clock: Clock, wake_sender: Callable[[], None]
) -> SweepResult | None:
    """One run, unless another process has run this minute's already; a failure is logged and the next minute
    tries again."""
    try:
        slot = slot_of(clock())
        if not await claim_slot(session_factory, name, slot):
            log.debug("%s: the run of %s is another process's", name, slot.isoformat())
            return None
        log.debug("%s: the run of %s is this process's", name, slot.isoformat())
        async with session_factory() as session:
            result = await sweep(session, clock())
    except Exception:
        log.exception("%s failed", name)
        return None
    if result.changed:
        log.info("%s: %s", name, result)
        wake_sender()  # the sweep queued messages
    return result


def this_process() -> str:
    """Who ran a job, for an operator reading ``scheduled_runs``: host and process id."""
    return f"{socket.gethostname()[:20]}:{os.getpid()}"


def slot_of(now: datetime) -> datetime:
    """The start of the interval (minute) ``now`` falls in: what every process's run at that time is called."""
    return datetime.fromtimestamp(int(now.timestamp()) // INTERVAL_SECONDS * INTERVAL_SECONDS, UTC)


async def claim_slot(session_factory: SessionFactory, job: str, slot: datetime) -> bool:
    """Whether this process runs ``job`` for ``slot``: only the first to ask does."""
    async with session_factory() as session, session.begin():
        dialect = session.get_bind().dialect.name
        insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(ScheduledRun)
        claimed = await session.scalar(
            insert.values(job=job, slot=slot, ran_by=this_process())
            .on_conflict_do_nothing()
            .returning(ScheduledRun.slot)
        )
        if claimed is not None:
            await session.execute(
                delete(ScheduledRun).where(ScheduledRun.job == job, ScheduledRun.slot < slot - KEEP_RUNS)
            )
    return claimed is not None


def every_minute(
    scheduler: AsyncIOScheduler,
    name: str,
    sweep: Sweep,
    session_factory: SessionFactory,
    clock: Clock,
    wake_sender: Callable[[], None],
) -> None:
    scheduler.add_job(
        run_sweep,
        "interval",
        seconds=INTERVAL_SECONDS,
        args=(name, sweep, session_factory, clock, wake_sender),
        id=name,
        name=name,
        replace_existing=True,
        max_instances=1,  # a slow run is not started twice at once in this process
        coalesce=True,  # after a pause, one catch-up run, not one per missed minute
        next_run_time=clock(),  # the first run at start-up: what came due while the bot was down
    )


class FinishingExecutor(AsyncIOExecutor):
    """APScheduler's asyncio executor, which can also wait for the jobs that are running (it only cancels them)."""

    async def finish(self, seconds: float) -> None:
        running = [future for future in getattr(self, "_pending_futures", ()) if not future.done()]
        if running:
            await asyncio.wait(running, timeout=seconds)


def create_scheduler() -> AsyncIOScheduler:
    """An in-memory scheduler; start it inside the running event loop."""
    return AsyncIOScheduler(timezone=UTC, executors={"default": FinishingExecutor()})


async def stop_scheduler(scheduler: AsyncIOScheduler, seconds: float = 10) -> None:
    """Start nothing new and let running jobs end (they would be cancelled half-way), then shut down."""
    if not scheduler.running:
        return
    scheduler.pause()
    executor = scheduler._lookup_executor("default")
    if isinstance(executor, FinishingExecutor):
        await executor.finish(seconds)
    scheduler.shutdown(wait=False)
