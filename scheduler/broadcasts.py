"""When the monthly broadcasts go out: each community's agenda, feedback and office report crontab, in its time zone.

The scheduler decides only *when*. A CronTrigger job per community and kind fires on time; the same check
runs at start-up and every hour to catch a run the bot was down for (within the grace window) or a schedule
changed by a new import. Whether a broadcast already went out is the database's answer (one per community,
kind and period), so every run that comes twice, or from two processes, sends once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from domain.broadcasts import Started, resume_queueing, start_scheduled
from domain.clock import Clock
from domain.people import list_communities
from domain.reports import start_monthly_report
from storage.db import SessionFactory
from storage.models import BroadcastKind, Community

log = logging.getLogger(__name__)

CATCH_UP_SECONDS = 3600


def schedule_of(community: Community, kind: BroadcastKind) -> str:
    return {
        BroadcastKind.AGENDA: community.agenda_cron,
        BroadcastKind.FEEDBACK: community.feedback_cron,
        BroadcastKind.REPORT: community.report_cron,
    }[kind]


def crontab_trigger(crontab: str, timezone: str) -> CronTrigger:
    return CronTrigger.from_crontab(crontab, timezone=ZoneInfo(timezone))


def latest_fire_time(crontab: str, timezone: str, since: datetime, now: datetime) -> datetime | None:
    """The last time the crontab fired in (since, now], or None."""
    trigger = crontab_trigger(crontab, timezone)
    latest = None
    fire = trigger.get_next_fire_time(None, since + timedelta(microseconds=1))
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return latest


async def send_due_broadcasts(
    session_factory: SessionFactory, clock: Clock, grace: timedelta, wake_sender: Callable[[], None]
) -> list[Started]:
    """Start every broadcast whose time came within the grace window and that does not exist yet."""
    now = clock()
    started = []
    try:
        async with session_factory() as session:
            for resumed in await resume_queueing(session, now):
                log.info("broadcast %d: queued the rest after a restart (%d in all)", resumed.id, resumed.recipients)
            for community in await list_communities(session):
                for kind in BroadcastKind.scheduled():
                    fired = latest_fire_time(schedule_of(community, kind), community.timezone, now - grace, now)
                    if fired is None:
                        continue
                    if kind is BroadcastKind.REPORT:
                        result = await start_monthly_report(session, community, fired, now)
                    else:
                        result = await start_scheduled(session, community, kind, fired, now)
                    if result.new:
                        log.info(
                            "%s %s %s: queued for %d recipients",
                            community.code,
                            kind,
                            result.broadcast.period,
                            result.broadcast.recipients,
                        )
                        started.append(result)
    except Exception:
        log.exception("scheduled broadcasts failed; the next run tries again")
    if started:
        wake_sender()
    return started


async def schedule_broadcasts(
    scheduler: AsyncIOScheduler,
    session_factory: SessionFactory,
    clock: Clock,
    grace: timedelta,
    wake_sender: Callable[[], None],
) -> None:
    """Register the communities' crontabs and the catch-up check; call once at start-up."""
    args = (session_factory, clock, grace, wake_sender)
    async with session_factory() as session:
        communities = await list_communities(session)
    for community in communities:
        for kind in BroadcastKind.scheduled():
            scheduler.add_job(
                send_due_broadcasts,
                crontab_trigger(schedule_of(community, kind), community.timezone),
                args=args,
                id=f"broadcast-{community.code}-{kind}",
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
    scheduler.add_job(
        send_due_broadcasts,
        "interval",
        seconds=CATCH_UP_SECONDS,
        args=args,
        id="broadcast-catch-up",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        next_run_time=clock(),  # at start-up: what the bot was down for
    )
