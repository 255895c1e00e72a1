"""The confirmation sweep's trigger: every minute, remind once and then close what residents never answered.

The rules are in ``domain.confirmation.close_unconfirmed``; the tickets' history and status say whether a
reminder or an auto-close already happened, so a run that fires twice or overlaps another process repeats
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from domain.clock import Clock
from domain.confirmation import ConfirmationSweep, close_unconfirmed
from storage.db import SessionFactory

log = logging.getLogger(__name__)

JOB_ID = "confirmation-sweep"
INTERVAL_SECONDS = 60


async def run_confirmation_sweep(
    session_factory: SessionFactory, clock: Clock, within: timedelta, wake_sender: Callable[[], None]
) -> ConfirmationSweep | None:
    """One run; a failure is logged and the next minute tries again."""
    try:
        async with session_factory() as session:
            result = await close_unconfirmed(session, clock(), within=within)
    except Exception:
        log.exception("confirmation sweep failed")
        return None
    if result.reminded or result.closed:
        log.info("confirmation sweep: %d reminded, %d closed unconfirmed", len(result.reminded), len(result.closed))
        wake_sender()
    return result


def add_confirmation_sweep(
    scheduler: AsyncIOScheduler,
    session_factory: SessionFactory,
    clock: Clock,
    within_days: float,
    wake_sender: Callable[[], None],
) -> None:
    scheduler.add_job(
        run_confirmation_sweep,
        "interval",
        seconds=INTERVAL_SECONDS,
        args=(session_factory, clock, timedelta(days=within_days), wake_sender),
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,
        coalesce=True,
    )
