"""The office's monthly report: last month's figures, the chart and the spreadsheet, sent by itself.

A crontab in the community file (``[reports] monthly``) starts it. It goes to the community's staff and its
street office, as three messages each, once per community and month: the same unique key as the residents'
broadcasts (a ``report`` broadcast), so a double trigger, a restart or a second process sends it once. Its
messages are personal outbox rows, delivered at least once like a worker's card; the sender draws the figures
when it sends them, as of the moment the report was started.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.broadcasts import Started, period_of, start_once
from domain.outbox import Notice, enqueue
from storage.models import Broadcast, BroadcastKind, Community, Membership, Role, User


class ReportPart(StrEnum):
    TEXT = "text"  # the figures by grid, as /stats shows them
    CHART = "chart"  # the rates per grid and the twelve months' trend
    SPREADSHEET = "spreadsheet"  # the month's tickets, the ledger and the rate tables


async def office(session: AsyncSession, community_id: int) -> list[int]:
    """Who gets the report: the community's staff and its street office, who have not blocked the bot."""
    return list(
        await session.scalars(
            select(Membership.user_id)
            .join(User, User.id == Membership.user_id)
            .where(
                Membership.community_id == community_id,
                Membership.role.in_([Role.STAFF, Role.STREET]),
                Membership.active.is_(True),
                User.unreachable_at.is_(None),
            )
            .distinct()
            .order_by(Membership.user_id)
        )
    )


async def _to_office(session: AsyncSession, community: Community, report: Broadcast, now: datetime) -> None:
    recipients = await office(session, community.id)
    report.content = {"month": report.period}
    report.recipients = len(recipients)
    report.queued_at = now  # a few rows, queued here whole
    for chat_id in recipients:
        for part in ReportPart:
            enqueue(session, chat_id, Notice.MONTHLY_REPORT, now, broadcast_id=report.id, part=part)


async def start_monthly_report(
    session: AsyncSession, community: Community, fired_at: datetime, now: datetime
) -> Started:
    """The report the schedule fired at ``fired_at`` (on time, or caught up): about the month before it."""
    period = period_of(community, BroadcastKind.REPORT, fired_at)
    return await start_once(
        session, community.id, BroadcastKind.REPORT, period, now, _to_office, scheduled_for=fired_at
    )
