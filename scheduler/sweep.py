"""The deadline sweep's trigger: every minute, call the domain sweep (domain/sweep.py).

The scheduler only decides *when*. Whether a reminder or an escalation already happened is in the tickets'
history, so a run that fires twice, overlaps another process, or follows a restart repeats nothing. Jobs live in
memory (APScheduler 3.11, ``AsyncIOScheduler``), registered at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from domain.clock import Clock
from domain.sweep import SweepReport, sweep
from storage.db import SessionFactory

log = logging.getLogger(__name__)

JOB_ID = "deadline-sweep"
INTERVAL_SECONDS = 60


async def run_sweep(
    session_factory: SessionFactory, clock: Clock, yellow_share: float, wake_sender: Callable[[], None]
) -> SweepReport | None:
    """One sweep; a failure is logged and the next minute tries again."""
    try:
        async with session_factory() as session:
            report = await sweep(session, clock(), yellow_share=yellow_share)
    except Exception:
        log.exception("deadline sweep failed")
        return None
    if report.changed:
        log.info(
            "deadline sweep: %d reminded, %d passed on, %d escalated, %d overdue",
            len(report.reminded),
            len(report.passed_on),
            len(report.escalated),
            len(report.overdue),
        )
        wake_sender()
    return report


def add_deadline_sweep(
    scheduler: AsyncIOScheduler,
    session_factory: SessionFactory,
    clock: Clock,
    yellow_share: float,
    wake_sender: Callable[[], None],
) -> None:
    scheduler.add_job(
        run_sweep,
        "interval",
        seconds=INTERVAL_SECONDS,
        args=(session_factory, clock, yellow_share, wake_sender),
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,  # a slow sweep is not run twice at once in this process
        coalesce=True,  # after a pause, one catch-up run, not one per missed minute
    )


def create_scheduler() -> AsyncIOScheduler:
    """An in-memory scheduler; start it inside the running event loop."""
    return AsyncIOScheduler(timezone=UTC)
