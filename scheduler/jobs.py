"""When things happen: every minute the domain's sweeps run (deadlines, and unanswered "Is it fixed?").

The scheduler only decides *when*. Whether a reminder, an escalation or an auto-close already happened is in
the tickets' history and status, so a run that fires twice, overlaps another process, or follows a restart
repeats nothing. Jobs live in memory (APScheduler 3.11 ``AsyncIOScheduler``) and are registered at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession

from domain.clock import Clock
from storage.db import SessionFactory

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60


class SweepResult(Protocol):
    @property
    def changed(self) -> bool: ...


Sweep = Callable[[AsyncSession, datetime], Awaitable[SweepResult]]


async def run_sweep(
    name: str, sweep: Sweep, session_factory: SessionFactory, clock: Clock, wake_sender: Callable[[], None]
) -> SweepResult | None:
    """One run; a failure is logged and the next minute tries again."""
    try:
        async with session_factory() as session:
            result = await sweep(session, clock())
    except Exception:
        log.exception("%s failed", name)
        return None
    if result.changed:
        log.info("%s: %s", name, result)
        wake_sender()  # the sweep queued messages
    return result


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
