"""The monthly broadcasts to residents: the deliberation agenda before the meeting, the execution feedback after it.

A broadcast exists once per community, kind and period (the unique key of ``broadcasts``): whoever starts
it second — a double trigger, a restart, another process, staff pressing "send now" — finds it and sends
nothing. Starting one writes its content snapshot in one transaction; its outbox rows (one per recipient) are
then written by the database itself (``INSERT … SELECT``), a few thousand residents per short transaction, so
intake never waits long behind it. A crash between two batches is resumed after the last building queued, and
the unique key and the sender's per-row states keep anyone from getting the same broadcast twice.
"""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Executable, Select, func, literal, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from domain.errors import AccessDenied, NotFound
from domain.outbox import Notice, mark_queued
from domain.people import load_duties
from domain.public_notices import WANTS_A_COPY, WANTS_BROADCASTS, post_publicly
from storage.models import (
    Broadcast,
    BroadcastKind,
    Building,
    Community,
    Compound,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    Ticket,
    TicketStatus,
    Topic,
    TopicStatus,
    TopicTask,
    User,
)

MAX_UNREACHABLE_LISTED = 50
AGENDA_STEPS = (TopicStatus.DRAFTED, TopicStatus.SURVEYED)  # drafted for the meeting, not yet decided
EXECUTING_STEPS = (TopicStatus.APPLIED, TopicStatus.FEEDBACK)
BACKGROUND_SNIPPET = 160
# Residents queued per transaction: about 30 ms of the writer on SQLite, so intake waits no longer than that.
QUEUE_BATCH = 5000


# --- when: meetings and periods -----------------------------------------------------------------


def meeting_at(community: Community, year: int, month: int) -> datetime:
    """The meeting of that month, in the community's time zone (a day past the month's end is its last day)."""
    day = min(community.meeting_day, calendar.monthrange(year, month)[1])
    hour, minute = (int(part) for part in community.meeting_time.split(":"))
    return datetime.combine(date(year, month, day), time(hour, minute), ZoneInfo(community.timezone))


def _year_month(period: str) -> tuple[int, int]:
    year, month = period.split("-")
    return int(year), int(month)


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + by
    return index // 12, index % 12 + 1


def period_of(community: Community, kind: BroadcastKind, at: datetime) -> str:
    """The month a broadcast sent at ``at`` is about.

    The agenda is about the next meeting on or after the day it goes out; the feedback about the latest
    meeting before the day it goes out; the office's report about the last complete month. Days count in the
    community's time zone.
    """
    local = at.astimezone(ZoneInfo(community.timezone)).date()
    if kind is BroadcastKind.REPORT:  # the office's report is about the last complete month
        year, month = _shift(local.year, local.month, -1)
        return f"{year:04d}-{month:02d}"
    this_month = meeting_at(community, local.year, local.month).date()
    if kind is BroadcastKind.AGENDA:
        year, month = (local.year, local.month) if this_month >= local else _shift(local.year, local.month, 1)
    else:
        year, month = (local.year, local.month) if this_month < local else _shift(local.year, local.month, -1)
    return f"{year:04d}-{month:02d}"


def _month_bounds(community: Community, period: str) -> tuple[datetime, datetime]:
    """The calendar month ``period`` in the community's time zone, as UTC instants [start, end)."""
    year, month = _year_month(period)
    tz = ZoneInfo(community.timezone)
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(*_shift(year, month, 1), 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


# --- what: the content snapshot ---------------------------------------------------------------------


async def _agenda_content(session: AsyncSession, community: Community, period: str) -> dict[str, Any]:
    year, month = _year_month(period)
    topics = await session.scalars(
        select(Topic).where(Topic.community_id == community.id, Topic.status.in_(AGENDA_STEPS)).order_by(Topic.id)
    )
    return {
        "meeting": meeting_at(community, year, month).isoformat(),
        "place": community.meeting_place,
        "topics": [
            {
                "id": topic.id,
                "title": topic.title,
                "background": topic.background[:BACKGROUND_SNIPPET],
                "survey_open": topic.status == TopicStatus.SURVEYED,
                "buildings": await _scope_buildings(session, topic),
            }
            for topic in topics
        ],
    }


async def _scope_buildings(session: AsyncSession, topic: Topic) -> list[int] | None:
    """The buildings whose residents may take part in a topic's survey; None: the whole community."""
    if topic.building_ids:
        return list(topic.building_ids)
    if topic.compound_ids:
        return list(await session.scalars(select(Building.id).where(Building.compound_id.in_(topic.compound_ids))))
    return None


async def _feedback_content(session: AsyncSession, community: Community, period: str, now: datetime) -> dict[str, Any]:
    year, month = _year_month(period)
    # Decisions since the meeting before this one: staff may record a decision the day after the meeting.
    since = meeting_at(community, *_shift(year, month, -1)).astimezone(UTC)
    decided = await session.scalars(
        select(Topic)
        .where(Topic.community_id == community.id, Topic.decided_at > since, Topic.decided_at <= now)
        .order_by(Topic.decided_at, Topic.id)
    )
    tasks = await session.execute(
        select(TopicTask, Topic.title)
        .join(Topic, Topic.id == TopicTask.topic_id)
        .where(Topic.community_id == community.id, Topic.status.in_(EXECUTING_STEPS))
        .order_by(TopicTask.due_on, TopicTask.id)
    )
    start, end = _month_bounds(community, period)
    in_community = Ticket.community_id == community.id
    received = await session.scalar(
        select(func.count())
        .select_from(Ticket)
        .where(in_community, Ticket.created_at >= start, Ticket.created_at < end)
    )
    resolved = await session.scalar(
        select(func.count())
        .select_from(Ticket)
        .where(
            in_community,
            Ticket.resolved_at >= start,
            Ticket.resolved_at < end,
            Ticket.status.in_((TicketStatus.RESOLVED, TicketStatus.CLOSED, TicketStatus.UNCONFIRMED)),
        )
    )
    rated, average = (
        await session.execute(
            select(func.count(Ticket.rating), func.avg(Ticket.rating)).where(
                in_community, Ticket.closed_at >= start, Ticket.closed_at < end, Ticket.rating.is_not(None)
            )
        )
    ).one()
    return {
        "meeting": meeting_at(community, year, month).isoformat(),
        "decisions": [
            {
                "id": topic.id,
                "title": topic.title,
                "decision": topic.decision,
                "for": topic.votes_for,
                "against": topic.votes_against,
                "abstain": topic.votes_abstain,
            }
            for topic in decided
        ],
        "tasks": [
            {
                "topic": title,
                "title": task.title,
                "responsible": task.responsible,
                "due": task.due_on.isoformat(),
                "progress": task.progress,
            }
            for task, title in tasks
        ],
        "tickets": {
            "received": int(received or 0),
            "resolved": int(resolved or 0),
            "rated": int(rated or 0),
            "satisfaction": round(float(average), 1) if average is not None else None,
        },
    }


async def broadcast_content(
    session: AsyncSession, community: Community, kind: BroadcastKind, period: str, now: datetime
) -> dict[str, Any]:
    """What residents will read; also what staff see in a preview."""
    if kind is BroadcastKind.AGENDA:
        return await _agenda_content(session, community, period)
    return await _feedback_content(session, community, period, now)


# --- who: recipients ------------------------------------------------------------------------------


async def _wanted(session: AsyncSession, broadcast: Broadcast) -> tuple[ColumnElement[bool], ...]:
    """Which of the scope's residents get it: those who want broadcasts; of what the community posts publicly,
    only those who asked for a private copy too."""
    community = await session.get(Community, broadcast.community_id)
    assert community is not None
    if posted_publicly(community, BroadcastKind(broadcast.kind)):
        return WANTS_A_COPY
    return WANTS_BROADCASTS


async def _scope(session: AsyncSession, broadcast: Broadcast) -> Select[int]:
    """The buildings whose residents get the broadcast: the community's, a survey's narrowed to its topic's."""
    buildings = (
        select(Building.id)
        .join(Compound, Compound.id == Building.compound_id)
        .where(Compound.community_id == broadcast.community_id, Building.active.is_(True))
    )
    topic = await session.get(Topic, broadcast.content["topic_id"]) if broadcast.kind == BroadcastKind.SURVEY else None
    if topic is not None and topic.building_ids:
        buildings = buildings.where(Building.id.in_(topic.building_ids))
    elif topic is not None and topic.compound_ids:
        buildings = buildings.where(Building.compound_id.in_(topic.compound_ids))
    return buildings


async def _batches(
    session: AsyncSession, broadcast: Broadcast, wanted: tuple[ColumnElement[bool], ...], size: int
) -> list[list[int]]:
    """The scope's buildings not queued yet, in runs of about ``size`` residents (a bigger building alone)."""
    counts = await session.execute(
        select(User.building_id, func.count())
        .where(
            User.building_id.in_(await _scope(session, broadcast)),
            User.building_id > broadcast.queued_through,
            *wanted,
        )
        .group_by(User.building_id)
        .order_by(User.building_id)
    )
    batches: list[list[int]] = []
    residents = size
    for building_id, count in counts:
        assert building_id is not None  # the scope's buildings
        if residents + count > size:
            batches.append([])
            residents = 0
        batches[-1].append(building_id)
        residents += count
    return batches


_OUTBOX = OutboxMessage.__table__.c
_ROW_COLUMNS = ("chat_id", "kind", "payload", "status", "priority", "broadcast_id", "attempts", "error")
_ROW_TIMES = ("not_before", "created_at")


def _recipient_rows(
    dialect: str, broadcast_id: int, buildings: list[int], wanted: tuple[ColumnElement[bool], ...], now: datetime
) -> Executable:
    """``INSERT … SELECT``: one outbox row per recipient in ``buildings``, written by the database alone.

    A recipient queued already (another process filling the same broadcast) is skipped by the unique key.
    """
    constant = {
        "kind": Notice.BROADCAST,
        "payload": {"broadcast_id": broadcast_id},
        "status": OutboxStatus.PENDING,
        "priority": OutboxPriority.BROADCAST,
        "broadcast_id": broadcast_id,
        "attempts": 0,
        "error": "",
        "not_before": now,
        "created_at": now,
    }
    rows = select(
        User.id, *(literal(constant[name], _OUTBOX[name].type) for name in (*_ROW_COLUMNS[1:], *_ROW_TIMES))
    ).where(User.building_id.in_(buildings), *wanted)
    insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(OutboxMessage)
    return insert.from_select([*_ROW_COLUMNS, *_ROW_TIMES], rows).on_conflict_do_nothing()


async def queue_recipients(
    session: AsyncSession, broadcast_id: int, now: datetime, *, batch: int = QUEUE_BATCH
) -> Broadcast:
    """Queue the broadcast's outbox rows, ``batch`` residents or so per short transaction, inside the database.

    Between two batches the writer is free, so intake is never stalled behind a district's broadcast; the
    sender starts on the first batch at once. Each batch moves ``queued_through`` in its own commit, so a
    crash resumes after the last building queued (``resume_queueing``), and the unique key keeps every
    resident to one row: never twice, whoever resumes.
    """
    async with session.begin():
        broadcast = await session.get(Broadcast, broadcast_id, populate_existing=True)
        if broadcast is None:
            raise NotFound(broadcast_id)
        if broadcast.queued_at is not None:
            return broadcast
        wanted = await _wanted(session, broadcast)
        plan = await _batches(session, broadcast, wanted, batch)
        dialect = session.get_bind().dialect.name
    for buildings in plan:
        async with session.begin():
            broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True, populate_existing=True)
            assert broadcast is not None
            todo = [building_id for building_id in buildings if building_id > broadcast.queued_through]
            if broadcast.queued_at is not None or not todo:
                continue  # another process got here first
            queued = await session.execute(_recipient_rows(dialect, broadcast_id, todo, wanted, now))
            broadcast.recipients += max(getattr(queued, "rowcount", 0), 0)
            broadcast.queued_through = todo[-1]
            mark_queued(session)
        # Let a transaction that waited for the connection (an update being recorded) have it before the next
        # batch: without this, the next batch would take it back before the waiter wakes.
        await asyncio.sleep(0)
    async with session.begin():
        broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True, populate_existing=True)
        assert broadcast is not None
        if broadcast.queued_at is None:
            broadcast.queued_at = now
    return broadcast


async def resume_queueing(session: AsyncSession, now: datetime) -> list[Broadcast]:
    """Finish the broadcasts a crash left half queued (at start-up and with the hourly catch-up)."""
    async with session.begin():
        unfinished = list(await session.scalars(select(Broadcast.id).where(Broadcast.queued_at.is_(None))))
    return [await queue_recipients(session, broadcast_id, now) for broadcast_id in unfinished]


# --- starting one, once ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    broadcast: Broadcast
    new: bool  # False: it existed already (started by a schedule, another process or staff), nothing queued
    public_post: bool = False  # new, and also one post in the community's public notice chat


# Fills a new broadcast (its content) and queues its messages, inside the transaction that creates it.
Queue = Callable[[AsyncSession, Community, Broadcast, datetime], Awaitable[None]]


async def start_once(
    session: AsyncSession,
    community_id: int,
    kind: BroadcastKind,
    period: str,
    now: datetime,
    queue: Queue,
    *,
    scheduled_for: datetime | None = None,
    started_by: int | None = None,
) -> Started:
    """Create the broadcast of this community, kind and period and ``queue`` its messages, unless it exists.

    The unique key decides: whoever comes second (a double trigger, a restart, another process, staff pressing
    "send now") finds it and queues nothing.
    """
    try:
        async with session.begin():
            existing = await _find(session, community_id, kind, period)
            if existing is None:
                community = await session.get(Community, community_id)
                if community is None:
                    raise NotFound(community_id)
                broadcast = Broadcast(
                    community_id=community_id,
                    kind=kind,
                    period=period,
                    scheduled_for=scheduled_for,
                    started_by=started_by,
                    content={},
                    created_at=now,
                )
                session.add(broadcast)
                await session.flush()  # a second starter stops here, on the unique key
                await queue(session, community, broadcast, now)
    except IntegrityError:
        # Another process created it between our look and our insert; theirs stands.
        async with session.begin():
            existing = await _find(session, community_id, kind, period)
        if existing is None:
            raise
    # Its recipients are queued after the commit, in batches; one a crash left half queued is finished here.
    if existing is not None:
        return Started(await queue_recipients(session, existing.id, now), new=False)
    return Started(await queue_recipients(session, broadcast.id, now), new=True)


async def start_broadcast(
    session: AsyncSession,
    community_id: int,
    kind: BroadcastKind,
    period: str,
    now: datetime,
    *,
    scheduled_for: datetime | None = None,
    started_by: int | None = None,
) -> Started:
    """Queue the monthly broadcast for every recipient, unless it exists for this community, kind and period.

    A community with a public notice chat gets the execution feedback there as one post, instead of a private
    message to every resident: only the residents who asked for a private copy too (/settings) get one.
    """

    async def to_residents(session: AsyncSession, community: Community, broadcast: Broadcast, now: datetime) -> None:
        broadcast.content = await broadcast_content(session, community, kind, period, now)
        if posted_publicly(community, kind):
            await post_publicly(session, community_id, now, broadcast_id=broadcast.id)

    return await start_once(
        session, community_id, kind, period, now, to_residents, scheduled_for=scheduled_for, started_by=started_by
    )


def posted_publicly(community: Community, kind: BroadcastKind) -> bool:
    """The execution feedback of a community with a public notice chat is posted there, and goes privately only
    to the residents who asked for a copy."""
    return kind is BroadcastKind.FEEDBACK and community.public_chat_id is not None


async def create_survey_invitation(session: AsyncSession, topic: Topic, actor_id: int, now: datetime) -> Broadcast:
    """The broadcast asking the residents in a topic's scope for their view, in the transaction that opens its
    survey; ``queue_recipients`` queues its messages once that is committed.

    A survey opens once (the topic's step says so), and its period ``t<topic id>`` keeps it to one broadcast.
    """
    content = {"topic_id": topic.id, "title": topic.title, "background": topic.background, "options": topic.options}
    invitation = Broadcast(
        community_id=topic.community_id,
        kind=BroadcastKind.SURVEY,
        period=f"t{topic.id}",
        started_by=actor_id,
        content=content,
        created_at=now,
    )
    session.add(invitation)
    await session.flush()
    return invitation


async def _find(session: AsyncSession, community_id: int, kind: BroadcastKind, period: str) -> Broadcast | None:
    return await session.scalar(
        select(Broadcast).where(
            Broadcast.community_id == community_id, Broadcast.kind == kind, Broadcast.period == period
        )
    )


async def start_scheduled(
    session: AsyncSession, community: Community, kind: BroadcastKind, fired_at: datetime, now: datetime
) -> Started:
    """The run the schedule fired at ``fired_at`` (on time, or caught up after the bot was down)."""
    return await start_broadcast(
        session, community.id, kind, period_of(community, kind, fired_at), now, scheduled_for=fired_at
    )


# --- staff: preview, send now, progress ---------------------------------------------------------------


async def staff_community(session: AsyncSession, viewer_id: int) -> Community:
    """The community someone staffs (the first, for someone who staffs several); refused for anyone else."""
    async with session.begin():
        duties = await load_duties(session, viewer_id)
        if not duties.staff_community_ids:
            raise AccessDenied("broadcasts")
        community = await session.get(Community, min(duties.staff_community_ids))
    assert community is not None
    return community


@dataclass(frozen=True)
class Preview:
    community: Community
    kind: BroadcastKind
    period: str
    content: dict[str, Any]
    existing: Broadcast | None  # already started for this period: what was sent, not what would be


async def preview(session: AsyncSession, viewer_id: int, kind: BroadcastKind, now: datetime) -> Preview:
    """The broadcast of the current period as residents get (or got) it; staff only."""
    community = await staff_community(session, viewer_id)
    period = period_of(community, kind, now)
    async with session.begin():
        existing = await _find(session, community.id, kind, period)
        content = existing.content if existing else await broadcast_content(session, community, kind, period, now)
    return Preview(community, kind, period, content, existing)


async def send_now(session: AsyncSession, viewer_id: int, kind: BroadcastKind, now: datetime) -> Started:
    """Staff start the current period's broadcast by hand; it is the same broadcast the schedule would send."""
    community = await staff_community(session, viewer_id)
    started = await start_broadcast(
        session, community.id, kind, period_of(community, kind, now), now, started_by=viewer_id
    )
    return replace(started, public_post=started.new and posted_publicly(community, kind))


@dataclass
class Progress:
    broadcast: Broadcast
    sent: int = 0
    failed: int = 0
    remaining: int = 0
    # The sender stopped while these were on their way: perhaps delivered, never repeated (at most once).
    in_doubt: int = 0
    unreachable: list[str] = field(default_factory=list)  # names, at most MAX_UNREACHABLE_LISTED
    unreachable_total: int = 0


async def progress(session: AsyncSession, viewer_id: int, broadcast_id: int) -> Progress:
    """Sent / failed / remaining, and who Telegram could not reach; staff of its community only."""
    async with session.begin():
        broadcast = await session.get(Broadcast, broadcast_id)
        duties = await load_duties(session, viewer_id)
        if broadcast is None or broadcast.community_id not in duties.staff_community_ids:
            raise AccessDenied("broadcast")
        result = Progress(broadcast)
        counts = await session.execute(
            select(OutboxMessage.status, func.count())
            .where(OutboxMessage.broadcast_id == broadcast_id)
            .group_by(OutboxMessage.status)
        )
        for status, count in counts:
            if status == OutboxStatus.SENT:
                result.sent = count
            elif status == OutboxStatus.FAILED:
                result.failed = count
            elif status == OutboxStatus.IN_DOUBT:
                result.in_doubt = count
            else:
                result.remaining += count
        blocked = (
            select(User.full_name)
            .join(OutboxMessage, OutboxMessage.chat_id == User.id)
            .where(
                OutboxMessage.broadcast_id == broadcast_id,
                OutboxMessage.status == OutboxStatus.FAILED,
                User.unreachable_at.is_not(None),
            )
        )
        result.unreachable_total = int(await session.scalar(select(func.count()).select_from(blocked.subquery())) or 0)
        result.unreachable = list(await session.scalars(blocked.order_by(User.id).limit(MAX_UNREACHABLE_LISTED)))
    return result


async def latest_broadcasts(session: AsyncSession, viewer_id: int, limit: int = 6) -> list[Broadcast]:
    """The community's newest broadcasts, for staff to follow their progress."""
    community = await staff_community(session, viewer_id)
    async with session.begin():
        return list(
            await session.scalars(
                select(Broadcast)
                .where(Broadcast.community_id == community.id, Broadcast.kind != BroadcastKind.REPORT)
                .order_by(Broadcast.id.desc())
                .limit(limit)
            )
        )


# --- residents: opting out, and in to a private copy of the public notices ----------------------------------


@dataclass(frozen=True)
class ResidentSettings:
    broadcasts: bool  # the monthly agenda and execution feedback (on unless turned off)
    public_chat: bool  # their community posts the execution feedback in its public notice chat
    public_copy: bool  # ... and they asked for a private copy of it too


async def _settings_of(session: AsyncSession, user_id: int) -> ResidentSettings:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(user_id)
    public_chat = None
    if user.building_id is not None:
        public_chat = await session.scalar(
            select(Community.public_chat_id)
            .join(Compound, Compound.community_id == Community.id)
            .join(Building, Building.compound_id == Compound.id)
            .where(Building.id == user.building_id)
        )
    return ResidentSettings(not user.broadcasts_off, public_chat is not None, user.public_copy)


async def resident_settings(session: AsyncSession, user_id: int) -> ResidentSettings:
    async with session.begin():
        return await _settings_of(session, user_id)


async def set_broadcasts(session: AsyncSession, user_id: int, wanted: bool) -> ResidentSettings:
    """Turn the monthly broadcasts on or off; notices about one's own reports still come."""
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        user.broadcasts_off = not wanted
        return await _settings_of(session, user_id)


async def set_public_copy(session: AsyncSession, user_id: int, wanted: bool) -> ResidentSettings:
    """Ask for (or stop) a private copy of the execution feedback that the community posts publicly.

    Kept whatever the community does: it counts only while the community has a public notice chat (without one,
    everyone who wants broadcasts gets the feedback privately anyway).
    """
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        user.public_copy = wanted
        return await _settings_of(session, user_id)
