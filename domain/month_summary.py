"""Which summaries of ended months a ticket's write makes stale.

The office's figures for a month that has ended (the month before the one on show, the twelve months' trend) are
read from ``month_figures``, summed once by the statistics job (``domain.stats.summarise_months``), instead of
from the month's tens of thousands of tickets. A month's tickets still change after it ends: late acceptances,
resolutions, ratings, reopens. So every write to a ticket that may belong to an ended month adds one to that
month's ``month_summaries.changes``, in the write's own transaction, and the job sums the month again when the
count moved. Any path that writes a ticket through the session comes here, so none can forget it; filing, which
inserts with a plain statement, calls ``mark_filed``.

Most writes are to this month's tickets and cost nothing here: no month row exists for a month still running.
This module is light on purpose (no numpy, no statistics): every process that writes tickets imports it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, event, inspect, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.db import execute_pipelined
from storage.models import MonthFigures, MonthSummary, Ticket

# What a ticket contributes to its month's counts, and where it is counted: the columns of the statistics'
# covering index, which holds everything the figures read (storage/models.py).
COUNTED = tuple(
    column.name
    for index in cast(Table, Ticket.__table__).indexes
    if index.name == "ix_tickets_community_created"
    for column in index.columns
)

# No time zone is further than this ahead of UTC (UTC+14) or behind it (UTC-12).
AHEAD, BEHIND = timedelta(hours=14), timedelta(hours=12)

_SUMMARIES = cast(Table, MonthSummary.__table__)
_MARK = (
    update(_SUMMARIES)
    .where(
        _SUMMARIES.c.community_id == bindparam("community"),
        _SUMMARIES.c.starts_at <= bindparam("created"),
        _SUMMARIES.c.ends_at > bindparam("created"),
    )
    .values(changes=_SUMMARIES.c.changes + 1)
)


def may_have_ended(created_at: datetime, moment: datetime) -> bool:
    """Whether, at ``moment``, the month a ticket filed at ``created_at`` belongs to may have ended in some time
    zone. False only when both lie in the same UTC month, the filing at least 12 hours into it (no zone had its
    month start later) and ``moment`` at least 14 hours before its end (no zone has its next month started). A
    later ``moment`` never turns True into False, so a moment later than the true one is always safe."""
    month_start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_start = (month_start + timedelta(days=32)).replace(day=1)
    return created_at < month_start + BEHIND or moment >= next_start - AHEAD


@event.listens_for(Session, "after_flush")
def _mark_changed_months(session: Session, flush_context: Any) -> None:
    """One more change on the summary of the ended month of each ticket whose counted columns this flush
    wrote (new, changed or deleted), in (community, filing time) order so two transactions never wait on each
    other's rows in a cycle."""
    moment = datetime.now(UTC)
    marks: set[tuple[int, datetime]] = set()
    for ticket in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(ticket, Ticket):
            continue
        state = inspect(ticket)
        if ticket in session.dirty and not any(state.attrs[name].history.has_changes() for name in COUNTED):
            continue
        # The ticket's own clock may run ahead of the machine's (tests, imports): the later moment is safe.
        changed_at = max(moment, ticket.updated_at or moment)
        for community_id, created_at in _places(ticket, state):
            if may_have_ended(created_at, changed_at):
                marks.add((community_id, created_at))
    _mark(session, marks)


def mark_filed(session: Session, community_id: int, created_at: datetime) -> None:
    """What the hook above does for a new ticket that filing inserts with a plain statement (domain/tickets.py)."""
    if may_have_ended(created_at, max(datetime.now(UTC), created_at)):
        _mark(session, {(community_id, created_at)})


def _mark(session: Session, marks: set[tuple[int, datetime]]) -> None:
    if marks:
        # Nothing in this transaction reads the count back: on SQLite it goes with the next trip (storage/db.py).
        execute_pipelined(session, _MARK, [{"community": c, "created": t} for c, t in sorted(marks)])


def _places(ticket: Ticket, state: Any) -> set[tuple[int, datetime]]:
    """The (community, filing time) the ticket is counted under now, and before this flush if that differed."""
    places = {(ticket.community_id, ticket.created_at)}
    before = [state.attrs[name].history for name in ("community_id", "created_at")]
    if any(history.deleted for history in before):
        community, created = ((h.deleted or h.unchanged)[0] for h in before)
        places.add((community, created))
    return places


async def forget_summaries(session: AsyncSession, community_id: int) -> None:
    """Drop the community's summaries, for a change its tickets' writes do not show (its time zone, a category's
    windows): the statistics job makes and sums them again, and until then the figures come from the tickets."""
    await session.execute(delete(MonthFigures).where(MonthFigures.community_id == community_id))
    await session.execute(delete(MonthSummary).where(MonthSummary.community_id == community_id))
