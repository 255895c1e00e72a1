"""How many tickets each compound reported in each category, month by month in its community's time zone.

The topic-candidates job (domain/deliberation.py) reads these counts (``ticket_counts``) instead of counting the
month's tickets, so a run costs what has reached a threshold since the last one, never the month's or the
history's tickets. A ticket is counted in the transaction that writes it: every flush that adds, deletes or moves
a ticket (its community, category, building or filing time) changes the counts by one, whichever path wrote it
through the session, so none can forget it; filing, which inserts with a plain statement, calls
:func:`count_filed`. Written in bulk around the ORM (a build, an import of tickets), the
counts are made again by :func:`recount`; so is a community's whole history when its time zone changes, since the
months' bounds move with it.

The counts are written last, just before the COMMIT, in (community, month, category, compound) order: a filing
holds its count's row for one statement at the end, not for the rest of its transaction, and two transactions
never wait on each other's rows in a cycle. On SQLite the write goes in the COMMIT's own trip to its thread
(storage.db.execute_pipelined), on PostgreSQL it is one round trip before it. Inside a savepoint they are written
at once, so that rolling the savepoint back takes them back too.

This module is light on purpose: every process that writes tickets imports it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, delete, event, func, inspect, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from storage.db import execute_pipelined
from storage.models import Building, Community, Ticket, TicketCount, Topic

# Where a ticket is counted: its community, category and building (for the building's compound), and its filing
# time (for the month).
PLACE = ("community_id", "category_id", "building_id", "created_at")

# No time zone is further than this ahead of UTC (UTC+14) or behind it (UTC-12).
AHEAD, BEHIND = timedelta(hours=14), timedelta(hours=12)

_TABLE = cast(Table, TicketCount.__table__)
_KEY = (_TABLE.c.community_id, _TABLE.c.month, _TABLE.c.category_id, _TABLE.c.compound_id)

# session.info: what the session already knows (time zones by community, compounds by building), the counts
# waiting for the COMMIT, and whether the COMMIT has begun.
_KNOWN, _PENDING, _COMMITTING = "ticket_counts_known", "ticket_counts_pending", "ticket_counts_committing"

Counted = tuple[int, int, int, datetime]  # community, category, building, filing time
Key = tuple[int, str, int, int]  # community, month, category, compound


def month_key(now: datetime, tz: str) -> tuple[str, datetime]:
    """The month ``now`` falls in, in time zone ``tz``, as "YYYY-MM", and the moment it began."""
    local = now.astimezone(ZoneInfo(tz))
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m"), start


def months_now(now: datetime) -> list[str]:
    """Every month that is the current one somewhere at ``now`` (one, or two around a month's end)."""
    return sorted({(now - BEHIND).astimezone(UTC).strftime("%Y-%m"), (now + AHEAD).astimezone(UTC).strftime("%Y-%m")})


def know(session: AsyncSession, *, community_id: int, timezone: str, building_id: int, compound_id: int) -> None:
    """Tell the counts, for the session's current transaction, the time zone of a community and the compound of a
    building that its tickets are written in, so that counting them needs no query (filing reads them anyway)."""
    known = session.info.setdefault(_KNOWN, ({}, {}))
    known[0][community_id] = timezone
    known[1][building_id] = compound_id


@event.listens_for(Session, "after_flush")
def _count(session: Session, flush_context: Any) -> None:
    """One more ticket where each new or moved ticket is counted now, one less where each deleted or moved one
    was counted before this flush."""
    changes: Counter[Counted] = Counter()
    for ticket in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(ticket, Ticket):
            continue
        now_at = cast(Counted, tuple(getattr(ticket, name) for name in PLACE))
        if ticket in session.new:
            changes[now_at] += 1
            continue
        state = inspect(ticket)
        histories = [state.attrs[name].history for name in PLACE]
        if ticket in session.dirty and not any(history.has_changes() for history in histories):
            continue
        before = cast(Counted, tuple((h.deleted or h.unchanged or (None,))[0] for h in histories))
        changes[before] -= 1
        if ticket not in session.deleted:
            changes[now_at] += 1
    _counted(session, Counter({place: by for place, by in changes.items() if by}))


def count_filed(session: Session, ticket: Ticket) -> None:
    """What the hook above does for a new ticket that filing inserts with a plain statement (domain/tickets.py),
    written with filing's other writes, which go last already (storage.db.hold_writes)."""
    _write(session, _keyed(session, Counter({cast(Counted, tuple(getattr(ticket, name) for name in PLACE)): 1})))


def _counted(session: Session, changes: Counter[Counted]) -> None:
    if not changes:
        return
    counts = _keyed(session, changes)
    if session.in_nested_transaction() or session.info.get(_COMMITTING):
        _write(session, counts)
    else:
        session.info.setdefault(_PENDING, Counter()).update(counts)


def _keyed(session: Session, changes: Counter[Counted]) -> Counter[Key]:
    """The changes by (community, month, category, compound), asking the database only for what the session
    was not told (:func:`know`)."""
    timezones, compounds = session.info.get(_KNOWN, ({}, {}))
    communities = {c for c, _, _, _ in changes} - timezones.keys()
    buildings = {b for _, _, b, _ in changes} - compounds.keys()
    connection = session.connection()
    if communities:
        zones = select(Community.id, Community.timezone).where(Community.id.in_(communities))
        timezones = {**timezones, **{c: tz for c, tz in connection.execute(zones)}}
    if buildings:
        places = select(Building.id, Building.compound_id).where(Building.id.in_(buildings))
        compounds = {**compounds, **{b: compound for b, compound in connection.execute(places)}}
    counts: Counter[Key] = Counter()
    for (community, category, building, created), by in changes.items():
        counts[(community, month_key(created, timezones[community])[0], category, compounds[building])] += by
    return counts


def _write(session: Session, counts: Counter[Key]) -> None:
    rows = [
        {"community_id": c, "month": m, "category_id": cat, "compound_id": comp, "tickets": by}
        for (c, m, cat, comp), by in sorted(counts.items())
        if by
    ]
    if rows:
        execute_pipelined(session, _add(session.get_bind().dialect.name), rows)


@cache
def _add(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE: a count made or moved by ``tickets``."""
    statement = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(_TABLE)
    return statement.on_conflict_do_update(
        index_elements=list(_KEY), set_={"tickets": _TABLE.c.tickets + statement.excluded.tickets}
    )


@event.listens_for(Session, "before_commit")
def _write_before_commit(session: Session) -> None:
    """The counts of the whole transaction, last: what is left to flush is flushed first, so it is counted here."""
    if session.in_nested_transaction():
        return
    if any(isinstance(o, Ticket) for o in (*session.new, *session.dirty, *session.deleted)):
        session.flush()
    session.info[_COMMITTING] = True  # a flush after this point (another hook's) writes its counts at once
    _write(session, session.info.pop(_PENDING, Counter()))


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    """A transaction's end (committed or rolled back) ends what it was told and what it had left to write."""
    if transaction.parent is None:
        for name in (_KNOWN, _PENDING, _COMMITTING):
            session.info.pop(name, None)


# --- counting again from the tickets --------------------------------------------------------------------------


def months_between(first: datetime, last: datetime, tz: str) -> list[tuple[str, datetime, datetime]]:
    """The months from the one holding ``first`` to the one holding ``last`` in ``tz``: key, start and end (UTC)."""
    zone = ZoneInfo(tz)
    key, start = month_key(first, tz)
    found = []
    while start <= last:
        following = (start.replace(tzinfo=None) + timedelta(days=32)).replace(day=1).replace(tzinfo=zone)
        found.append((key, start.astimezone(UTC), following.astimezone(UTC)))
        key, start = following.strftime("%Y-%m"), following
    return found


async def recount(session: AsyncSession, community_id: int) -> int:
    """Count a community's tickets again, month by month, inside the caller's transaction, with each count's
    candidate topic; for tickets written around the ORM, or a new time zone. Returns how many counts it wrote."""
    timezone = await session.scalar(select(Community.timezone).where(Community.id == community_id))
    assert timezone is not None
    first, last = (
        await session.execute(
            select(func.min(Ticket.created_at), func.max(Ticket.created_at)).where(Ticket.community_id == community_id)
        )
    ).one()
    await session.execute(delete(TicketCount).where(TicketCount.community_id == community_id))
    if first is None:
        return 0
    rows = []
    for key, start, end in months_between(first, last, timezone):
        # The month's range of ix_tickets_community_created, each building looked up ("+ 0": not through a
        # tickets index; see domain/deliberation.py's ticket query).
        counted = await session.execute(
            select(Ticket.category_id, Building.compound_id, func.count())
            .join(Building, Building.id == Ticket.building_id + 0)
            .where(Ticket.community_id == community_id, Ticket.created_at >= start, Ticket.created_at < end)
            .group_by(Ticket.category_id, Building.compound_id)
        )
        rows += [
            {"community_id": community_id, "month": key, "category_id": cat, "compound_id": comp, "tickets": n}
            for cat, comp, n in counted
        ]
    if rows:
        await session.execute(_add(session.get_bind().dialect.name), rows)
    await link_topics(session, community_id)
    return len(rows)


async def link_topics(session: AsyncSession, community_id: int) -> None:
    """Each count of the community that has its candidate topic names it (the topic's key is its count's)."""
    links = []
    candidates = select(Topic.id, Topic.candidate_key).where(
        Topic.community_id == community_id, Topic.candidate_key.is_not(None)
    )
    for topic_id, key in await session.execute(candidates):
        category, compound, month = str(key).split(":")
        links.append({"topic": topic_id, "c": community_id, "m": month, "cat": int(category), "comp": int(compound)})
    if links:
        await session.execute(_LINK, links)


_LINK = (
    update(_TABLE)
    .where(*(column == bindparam(name) for column, name in zip(_KEY, ("c", "m", "cat", "comp"), strict=True)))
    .values(topic_id=bindparam("topic"))
)
