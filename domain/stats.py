"""The office's monthly figures: the three rates and the rest, per grid, worker, category or compound, ranked.

Which tickets and whom they count for (docs/reports.md says the same for the office):

- **Month.** A ticket belongs to the calendar month it was *received* (filed), in the community's time zone,
  and counts there with everything that has happened to it up to now. A ticket filed on 30 November and
  closed on 2 December counts in November, closed. A month's figures can therefore still improve after it
  ends, while its late tickets are finished; each report says when it was drawn up.
- **Grid and compound.** The grid and compound of the ticket's building when it was filed (``tickets.grid_id``
  never changes): a ticket escalated to the street office, or sent back down, still counts for its grid.
- **Worker.** The ticket's assignee now, that is, for a resolved ticket, whoever held it when it was
  resolved. A hand-back counts for the one who took it over; a ticket escalated and sent back down counts for
  the grid worker who got it back; one resolved at the street office or a department counts for that person;
  a reopened ticket goes back to the same worker and counts for them. A worker who moved to another grid
  keeps their tickets in the worker view, while each ticket stays with the grid it was filed in.

The figures (each rate is None when its denominator is 0):

- received: tickets filed in the month;
- accepted in time (响应率 / 及时签收率): first accepted within the category's ``response_hours`` of filing,
  over received. Hand-backs and escalations do not restart this clock: it is what the resident waited;
- resolved in time (按时办结率): resolved (now resolved, closed or resolved-unconfirmed) within the category's
  ``resolve_hours`` of filing, by the latest resolution (a reopened ticket counts only when resolved again),
  over received;
- resolution rate (解决率): closed with the resident's confirmation, over received. Auto-closed unconfirmed
  tickets are resolved (and may be resolved in time) but are not in this rate;
- satisfaction rate (满意率): ratings of 4 or 5 over tickets rated; average rating over the same. A rating
  without a comment counts like any other;
- reopen rate: tickets a resident reopened at least once, over tickets resolved at least once;
- median time to accept (filing to first acceptance) and to resolve (filing to the latest resolution);
- overdue now: of the month's tickets, those still open and past the deadline they are measured against now
  (the three-colour ledger's red).

Ranking: by the score, the mean of the three rates (response, resolution, satisfaction; satisfaction left out
while nothing is rated), highest first; rows without tickets are not ranked. The change is against the same
row's rank and score in the month before.

The street office also ranks its communities against each other (:func:`street_stats`): one row per community,
counted by the same query as the community's own figures, over the month in that community's time zone.

Queries read only the month's tickets, from ``ix_tickets_community_created`` alone (a covering index: every
column counted is in it), and aggregate in SQL; the medians come from every ticket's durations, fetched as one
text per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased, raiseload
from sqlalchemy.sql.util import find_tables

from domain.deadlines import DEFAULT_YELLOW_SHARE, Colour, colour_at
from domain.errors import AccessDenied, NotFound
from domain.people import display_names, load_duties
from storage.models import (
    Building,
    Category,
    Community,
    Compound,
    EventKind,
    Grid,
    Membership,
    MonthFigures,
    MonthSummary,
    Role,
    Ticket,
    TicketEvent,
    TicketStatus,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Seconds = npt.NDArray[np.int64]

# What rows are grouped by: a column (the grid, the assignee …) or an expression (the trend's month).
KeyColumn = ColumnElement[Any] | InstrumentedAttribute[Any]

RESOLVED_STATES = (TicketStatus.RESOLVED, TicketStatus.CLOSED, TicketStatus.UNCONFIRMED)
SATISFIED_FROM = 4  # ratings of 4 and 5 count as satisfied
TREND_MONTHS = 12


class View(StrEnum):
    GRID = "grid"
    WORKER = "worker"
    CATEGORY = "category"
    COMPOUND = "compound"


class Rate(StrEnum):
    """The rates a row shows, in order; each has its definition one tap away in /stats."""

    RESPONSE = "response"
    RESOLVED_IN_TIME = "resolved_in_time"
    RESOLUTION = "resolution"
    SATISFACTION = "satisfaction"
    REOPEN = "reopen"


# --- months -------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``YYYY-MM``; ValueError otherwise."""
        year, _, month = text.partition("-")
        if len(year) != 4 or len(month) != 2 or not (year + month).isdigit() or not 1 <= int(month) <= 12:
            raise ValueError(f"not a month: {text!r} (YYYY-MM)")
        return cls(int(year), int(month))

    @classmethod
    def of(cls, at: datetime, timezone: str) -> Month:
        local = at.astimezone(ZoneInfo(timezone))
        return cls(local.year, local.month)

    @classmethod
    def from_index(cls, index: int) -> Month:
        return cls(index // 12, index % 12 + 1)

    @property
    def index(self) -> int:
        """Months since year 0: consecutive months have consecutive indexes (and fit a button's number)."""
        return self.year * 12 + self.month - 1

    def shift(self, by: int) -> Month:
        return Month.from_index(self.index + by)

    def bounds(self, timezone: str) -> tuple[datetime, datetime]:
        """The month in ``timezone`` as UTC instants [start, end)."""
        tz = ZoneInfo(timezone)
        following = self.shift(1)
        start = datetime(self.year, self.month, 1, tzinfo=tz)
        end = datetime(following.year, following.month, 1, tzinfo=tz)
        return start.astimezone(UTC), end.astimezone(UTC)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def last_complete_month(now: datetime, timezone: str) -> Month:
    return Month.of(now, timezone).shift(-1)


# --- figures ------------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class Figures:
    """One row's counts; the rates are computed from them (None when nothing to divide by)."""

    received: int = 0
    accepted_in_time: int = 0
    resolved_in_time: int = 0
    closed_confirmed: int = 0
    resolved_once: int = 0  # resolved at least once (now resolved, closed or unconfirmed, or reopened since)
    reopened: int = 0
    rated: int = 0
    satisfied: int = 0
    rating_sum: int = 0
    overdue_now: int = 0
    median_accept: timedelta | None = None
    median_resolve: timedelta | None = None

    def rate(self, rate: Rate) -> float | None:
        match rate:
            case Rate.RESPONSE:
                return _share(self.accepted_in_time, self.received)
            case Rate.RESOLVED_IN_TIME:
                return _share(self.resolved_in_time, self.received)
            case Rate.RESOLUTION:
                return _share(self.closed_confirmed, self.received)
            case Rate.SATISFACTION:
                return _share(self.satisfied, self.rated)
            case Rate.REOPEN:
                return _share(self.reopened, self.resolved_once)

    @property
    def average_rating(self) -> float | None:
        return self.rating_sum / self.rated if self.rated else None

    @property
    def score(self) -> float | None:
        """The ranking score: the mean of the three rates that are defined."""
        rates = [self.rate(r) for r in (Rate.RESPONSE, Rate.RESOLUTION, Rate.SATISFACTION)]
        known = [r for r in rates if r is not None]
        return sum(known) / len(known) if known else None

    def __add__(self, other: Figures) -> Figures:
        """Counts add up; medians cannot, and are dropped."""
        counts = {
            name: getattr(self, name) + getattr(other, name)
            for name in Figures.__dataclass_fields__
            if not name.startswith("median")
        }
        return Figures(**counts)


@dataclass(frozen=True)
class Row:
    key: int | None  # grid, worker (user id), category or compound id; None: tickets nobody holds
    name: str
    name_en: str
    figures: Figures
    rank: int | None = None  # 1 is best; None without tickets
    previous_rank: int | None = None
    previous_score: float | None = None

    @property
    def rank_change(self) -> int | None:
        """Places moved up (positive) or down since the month before; None if unranked in either."""
        if self.rank is None or self.previous_rank is None:
            return None
        return self.previous_rank - self.rank

    @property
    def score_change(self) -> float | None:
        score = self.figures.score
        return None if score is None or self.previous_score is None else score - self.previous_score


@dataclass(frozen=True)
class CommunityRef:
    id: int
    code: str
    name: str
    name_en: str
    timezone: str


@dataclass(frozen=True)
class TrendPoint:
    month: Month
    figures: Figures


@dataclass(frozen=True)
class MonthlyStats:
    community: CommunityRef
    month: Month
    view: View
    rows: list[Row]
    total: Figures
    as_of: datetime
    own_row_only: bool = False  # a grid worker: their own row and nothing else
    grids: list[Row] = field(default_factory=list)  # always by grid, for the chart
    trend: list[TrendPoint] = field(default_factory=list)  # the last TREND_MONTHS months, oldest first


# --- SQL ------------------------------------------------------------------------------------------------

IS_RESOLVED = Ticket.resolve_seconds.is_not(None)  # resolved_at is set exactly while resolved, closed or unconfirmed


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _per_ticket(now: datetime) -> dict[str, ColumnElement[Any]]:
    """What each ticket adds to the counted fields of Figures (after ``received``), by field.

    Every column read here is in ``ix_tickets_community_created`` (besides the category's two windows), and the
    durations are whole seconds the ORM kept: no date arithmetic per ticket."""
    return {
        "accepted_in_time": _flag(Ticket.accept_seconds <= Category.response_hours * 3600),
        "resolved_in_time": _flag(Ticket.resolve_seconds <= Category.resolve_hours * 3600),
        "closed_confirmed": _flag(Ticket.status == TicketStatus.CLOSED),
        "resolved_once": _flag(or_(IS_RESOLVED, Ticket.reopen_count > 0)),
        "reopened": _flag(Ticket.reopen_count > 0),
        "rated": _flag(Ticket.rating.is_not(None)),
        "satisfied": _flag(Ticket.rating >= SATISFIED_FROM),
        "rating_sum": func.coalesce(Ticket.rating, 0),
        "overdue_now": _flag(
            or_(
                and_(Ticket.status == TicketStatus.ASSIGNED, Ticket.respond_by < now),
                and_(Ticket.status == TicketStatus.IN_PROGRESS, Ticket.resolve_by < now),
            )
        ),
    }


# What the score and the chart need: the three rates. The month before (for the ranking) and the trend count no more.
SCORE_FIELDS = ("accepted_in_time", "closed_confirmed", "rated", "satisfied")
# What the summary of an ended month keeps: every count but ``overdue_now``, which moves with the clock.
SUMMED_FIELDS = (
    "accepted_in_time",
    "resolved_in_time",
    "closed_confirmed",
    "resolved_once",
    "reopened",
    "rated",
    "satisfied",
    "rating_sum",
)


def _key(view: View) -> KeyColumn:
    match view:
        case View.GRID:
            return Ticket.grid_id
        case View.WORKER:
            return Ticket.assignee_id
        case View.CATEGORY:
            return Ticket.category_id
        case View.COMPOUND:
            return Building.compound_id


def _month_filter(community_id: int, start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [Ticket.community_id == community_id, Ticket.created_at >= start, Ticket.created_at < end]


SelectT = TypeVar("SelectT", bound=Select)  # type: ignore[type-arg]


def _with_buildings(query: SelectT, key: KeyColumn) -> SelectT:
    """The buildings joined in only when the key needs them (by compound): a lookup per ticket saved otherwise."""
    if Building.__table__ in find_tables(
        key.expression if isinstance(key, InstrumentedAttribute) else key, check_columns=True
    ):
        return query.join(Building, Building.id == Ticket.building_id)
    return query


def _all_seconds(column: InstrumentedAttribute[int | None]) -> ColumnElement[str]:
    """Every ticket's value of ``column`` in one text, comma-separated (NULLs left out): a median needs the values
    themselves, and one string per row costs far less to fetch than a row per ticket."""
    return func.aggregate_strings(cast(column, String), ",")


def _seconds(text: str | None) -> Seconds:
    """The values of :func:`_all_seconds`, parsed in C: a month's tens of thousands cost well under a millisecond,
    where int() on each cost tens of milliseconds."""
    np = _numpy()
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, dtype=np.int64)


def _sums(
    key: KeyColumn,
    where: Sequence[ColumnElement[bool]],
    now: datetime,
    fields: Sequence[str] | None = None,
    *,
    medians: bool = False,
    group: bool = True,
) -> Select[Any]:
    """One row per value of ``key`` (or, not grouped, one row in all with ``key`` as it is): the key, received, the
    ``fields`` (all counted ones by default) summed, and with ``medians`` every ticket's two durations."""
    per_ticket = _per_ticket(now)
    columns: list[ColumnElement[Any]] = [func.count()]
    columns += [func.coalesce(func.sum(per_ticket[name]), 0) for name in fields or per_ticket]
    if medians:
        columns += [_all_seconds(Ticket.accept_seconds), _all_seconds(Ticket.resolve_seconds)]
    query = _with_buildings(select(key, *columns).join(Category, Category.id == Ticket.category_id), key)
    query = query.where(*where)
    return query.group_by(key) if group else query


def _figures(row: Sequence[Any], fields: Sequence[str] | None, now: datetime) -> Figures:
    names = fields or list(_per_ticket(now))
    counted = {name: int(value) for name, value in zip(names, row[2 : 2 + len(names)], strict=True)}
    return Figures(received=int(row[1]), **counted)  # type: ignore[arg-type]


async def _figures_by(
    session: AsyncSession,
    key: KeyColumn,
    where: Sequence[ColumnElement[bool]],
    now: datetime,
    fields: Sequence[str] | None = None,
) -> dict[Any, Figures]:
    """The counted figures (``fields`` of them, all by default) per value of ``key`` over the tickets ``where``
    selects, summed in SQL (no medians)."""
    return {row[0]: _figures(row, fields, now) for row in await session.execute(_sums(key, where, now, fields))}


def _numpy() -> Any:
    """numpy, imported with the first figures rather than at the bot's start (0.1 s; docs/delivery.md, "Start-up")."""
    import numpy

    return numpy


@dataclass(frozen=True)
class Durations:
    """Seconds from filing to the first acceptance, and to the latest resolution, of a row's tickets."""

    accept: Seconds
    resolve: Seconds

    @classmethod
    def of(cls, rows: Iterable[Durations]) -> Durations:
        """All the rows' durations together."""
        np = _numpy()
        rows = [cls.none(), *rows]
        return cls(np.concatenate([r.accept for r in rows]), np.concatenate([r.resolve for r in rows]))

    @classmethod
    def none(cls) -> Durations:
        empty = _numpy().zeros(0, dtype=_numpy().int64)
        return cls(empty, empty)

    def medians(self, figures: Figures) -> Figures:
        return replace(figures, median_accept=_median(self.accept), median_resolve=_median(self.resolve))


def _median(seconds: Seconds) -> timedelta | None:
    """The middle value (the mean of the two middle ones for an even count), found without a full sort."""
    return timedelta(seconds=round(float(_numpy().median(seconds)))) if len(seconds) else None


async def _figures_and_durations(
    session: AsyncSession,
    key: KeyColumn,
    where: Sequence[ColumnElement[bool]],
    now: datetime,
    fields: Sequence[str] | None = None,
) -> tuple[dict[Any, Figures], dict[Any, Durations]]:
    """The counted figures (``fields`` of them, all by default) and every ticket's two durations, per value of
    ``key``, in one pass over the month."""
    figures, durations = {}, {}
    for row in await session.execute(_sums(key, where, now, fields, medians=True)):
        figures[row[0]] = _figures(row[:-2], fields, now)
        durations[row[0]] = Durations(_seconds(row[-2]), _seconds(row[-1]))
    return figures, durations


class MonthCache:
    """Figures of months that have ended, kept for a few minutes in the process.

    A month that has ended changes only as its last open tickets are finished, so the twelve months' trend and
    last month's ranking need not be summed again at every press of a button. The month on show is always
    counted afresh; so is the month still running.
    """

    def __init__(self, keep: timedelta = timedelta(minutes=10), size: int = 4096) -> None:
        self.keep, self.size = keep, size
        self._entries: dict[tuple[Any, ...], tuple[datetime, Any]] = {}

    def get(self, key: tuple[Any, ...], now: datetime) -> Any | None:
        found = self._entries.get(key)
        if found is None or found[0] <= now:
            return None
        return found[1]

    def put(self, key: tuple[Any, ...], value: Any, now: datetime) -> None:
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (now + self.keep, value)


def _ended(month: Month, community: CommunityRef, now: datetime) -> bool:
    return month < Month.of(now, community.timezone)


async def _trend(
    session: AsyncSession,
    community: CommunityRef,
    month: Month,
    total: Figures,
    now: datetime,
    cache: MonthCache | None,
) -> list[TrendPoint]:
    """The community's figures for the TREND_MONTHS months up to ``month`` (whose ``total`` was just counted), in
    one statement over the tickets of those not in ``cache``."""
    months = [month.shift(by) for by in range(1 - TREND_MONTHS, 1)]
    known: dict[Month, Figures] = {month: total}
    for m in months:
        if cache is not None and (hit := cache.get(("trend", community.id, m.index), now)) is not None:
            known[m] = hit
    missing = [m for m in months if m not in known]
    if missing:
        known |= await _summed_totals(session, community, missing)
        missing = [m for m in missing if m not in known]
    if missing:
        # A month at a time (one statement): each reads its own range of the index and nothing is worked out per
        # ticket to tell which month it is in.
        query = union_all(
            *(
                _sums(
                    literal(i),
                    _month_filter(community.id, *m.bounds(community.timezone)),
                    now,
                    SCORE_FIELDS,
                    group=False,
                )
                for i, m in enumerate(missing)
            )
        )
        found = {row[0]: _figures(row, SCORE_FIELDS, now) for row in await session.execute(query)}
        for i, m in enumerate(missing):
            known[m] = found.get(i, Figures())
            if cache is not None and _ended(m, community, now):
                cache.put(("trend", community.id, m.index), known[m], now)
    return [TrendPoint(m, known[m]) for m in months]


# --- the summary of ended months ------------------------------------------------------------------------
#
# A month that has ended is summed once into ``month_figures`` (a row per grid, assignee, category and compound),
# so the month before the one on show and the trend read a few hundred rows instead of a month's tickets each.
# Its tickets' writes count changes on its ``month_summaries`` row (domain/month_summary.py), and the job sums
# it again within the minute. The month on show is always counted from its tickets: its medians need every
# duration, and overdue tickets change with the clock.

# A month's row is summed only from the job's run after the one that made it: a ticket's write already under
# way when the row was made could not count a change on it, and is committed by then.
SETTLE = timedelta(seconds=30)

_SUMMARY_KEYS = (Ticket.grid_id, Ticket.assignee_id, Ticket.category_id, Building.compound_id)
_SUMMARY_KEY_OF_VIEW = {
    View.GRID: MonthFigures.grid_id,
    View.WORKER: MonthFigures.assignee_id,
    View.CATEGORY: MonthFigures.category_id,
    View.COMPOUND: MonthFigures.compound_id,
}
_SUMMED_COLUMNS = [func.sum(getattr(MonthFigures, name)) for name in ("received", *SUMMED_FIELDS)]


@dataclass
class SummaryReport:
    """What one run of the statistics job did."""

    marked: int = 0  # months that ended, given their row
    summed: int = 0  # months summed (again)

    @property
    def changed(self) -> bool:
        return False  # it queues no message


def _summed_figures(row: Sequence[Any]) -> Figures:
    received, *counts = (int(value or 0) for value in row)
    return Figures(received, **dict(zip(SUMMED_FIELDS, counts, strict=True)))  # type: ignore[arg-type]


def _summarised(community_id: int) -> Select[Any]:
    """The community's months that have been summed at least once."""
    return select(MonthSummary.month).where(
        MonthSummary.community_id == community_id, MonthSummary.summarised_changes.is_not(None)
    )


async def _summed_totals(
    session: AsyncSession, community: CommunityRef, months: Sequence[Month]
) -> dict[Month, Figures]:
    """The community's whole figures of those ``months`` that have a summary, in one statement."""
    indexes = {m.index: m for m in months}
    found = await session.execute(
        select(MonthFigures.month, *_SUMMED_COLUMNS)
        .where(
            MonthFigures.community_id == community.id,
            MonthFigures.month.in_(indexes),
            MonthFigures.month.in_(_summarised(community.id)),
        )
        .group_by(MonthFigures.month)
    )
    totals = {indexes[row[0]]: _summed_figures(row[1:]) for row in found}
    # A summed month without tickets has no rows at all.
    empty = await session.scalars(_summarised(community.id).where(MonthSummary.month.in_(indexes)))
    return {indexes[index]: Figures() for index in empty} | totals


async def _summed_by(
    session: AsyncSession, community: CommunityRef, month: Month, view: View, assignee_id: int | None
) -> dict[Any, Figures] | None:
    """The month's figures per row of ``view`` (of one assignee only, if given) from its summary; None if it has
    none yet."""
    if await session.scalar(_summarised(community.id).where(MonthSummary.month == month.index)) is None:
        return None
    key = _SUMMARY_KEY_OF_VIEW[view]
    query = select(key, *_SUMMED_COLUMNS).where(
        MonthFigures.community_id == community.id, MonthFigures.month == month.index
    )
    if assignee_id is not None:
        query = query.where(MonthFigures.assignee_id == assignee_id)
    return {row[0]: _summed_figures(row[1:]) for row in await session.execute(query.group_by(key))}


async def summarise_months(session: AsyncSession, now: datetime) -> SummaryReport:
    """The statistics job (every minute): give each month that has ended its row, and sum each month whose
    tickets changed since it was last summed, one month per transaction. Its cost follows what changed: a month
    is summed when it ends, and again only after its tickets were written."""
    report = SummaryReport()
    async with session.begin():
        for community_id, timezone in (await session.execute(select(Community.id, Community.timezone))).all():
            report.marked += await _mark_ended_months(session, community_id, timezone, now)
    async with session.begin():
        due = (
            await session.execute(
                select(MonthSummary.community_id, MonthSummary.month, MonthSummary.starts_at, MonthSummary.ends_at)
                .where(
                    MonthSummary.marked_at <= now - SETTLE,
                    or_(
                        MonthSummary.summarised_changes.is_(None),
                        MonthSummary.summarised_changes != MonthSummary.changes,
                    ),
                )
                .order_by(MonthSummary.community_id, MonthSummary.month)
            )
        ).all()
    for community_id, month, starts_at, ends_at in due:
        async with session.begin():
            await _sum_month(session, community_id, month, starts_at, ends_at, now)
        report.summed += 1
    return report


async def _mark_ended_months(session: AsyncSession, community_id: int, timezone: str, now: datetime) -> int:
    """Rows for the community's ended months that have none, from the month of its first ticket on."""
    first = await session.scalar(select(func.min(Ticket.created_at)).where(Ticket.community_id == community_id))
    if first is None:
        return 0
    have = set(await session.scalars(select(MonthSummary.month).where(MonthSummary.community_id == community_id)))
    month, current, marked = Month.of(first, timezone), Month.of(now, timezone), 0
    while month < current:
        if month.index not in have:
            starts_at, ends_at = month.bounds(timezone)
            session.add(
                MonthSummary(
                    community_id=community_id, month=month.index, starts_at=starts_at, ends_at=ends_at, marked_at=now
                )
            )
            marked += 1
        month = month.shift(1)
    return marked


async def _sum_month(
    session: AsyncSession, community_id: int, month: int, starts_at: datetime, ends_at: datetime, now: datetime
) -> None:
    """Sum one month's tickets into its rows afresh. The change count is read first: a write that comes after
    it, even one the sums below already see, leaves the month due again, never summed short."""
    summary = await session.get(MonthSummary, (community_id, month), populate_existing=True)
    assert summary is not None
    seen = summary.changes
    per_ticket = _per_ticket(now)
    sums = await session.execute(
        select(
            *_SUMMARY_KEYS,
            func.count(),
            *(func.coalesce(func.sum(per_ticket[name]), 0) for name in SUMMED_FIELDS),
        )
        .join(Category, Category.id == Ticket.category_id)
        .join(Building, Building.id == Ticket.building_id)
        .where(*_month_filter(community_id, starts_at, ends_at))
        .group_by(*_SUMMARY_KEYS)
    )
    await session.execute(
        delete(MonthFigures).where(MonthFigures.community_id == community_id, MonthFigures.month == month)
    )
    fields = ("grid_id", "assignee_id", "category_id", "compound_id", "received", *SUMMED_FIELDS)
    rows = [dict(zip(fields, row, strict=True), community_id=community_id, month=month) for row in sums]
    if rows:
        await session.execute(insert(MonthFigures), rows)
    summary.summarised_changes, summary.summarised_at = seen, now


# --- access ---------------------------------------------------------------------------------------------


async def stats_communities(session: AsyncSession, *, viewer_id: int) -> list[CommunityRef]:
    """The communities whose figures ``viewer_id`` may see (see :func:`monthly_stats`), by id."""
    async with session.begin():
        allowed = await _stats_communities(session, viewer_id)
        return [await _community(session, community_id) for community_id in sorted(allowed)]


async def _stats_communities(session: AsyncSession, viewer_id: int) -> dict[int, bool]:
    duties = await load_duties(session, viewer_id)
    full = duties.staff_community_ids | duties.street_community_ids
    own_row: set[int] = set()
    if duties.grid_ids:
        own_row = set(await session.scalars(select(Grid.community_id).where(Grid.id.in_(duties.grid_ids))))
    allowed = {community_id: False for community_id in full} | {c: True for c in own_row - full}
    if not allowed:
        raise AccessDenied("stats")
    return allowed


async def all_communities(session: AsyncSession) -> list[CommunityRef]:
    """Every community, by id: for the bot itself (drawing charts ahead), never for a person."""
    async with session.begin():
        found = await session.scalars(select(Community).order_by(Community.id))
        return [_ref(c) for c in found]


async def community_by_code(session: AsyncSession, code: str) -> CommunityRef:
    """For the command line: the community with this code (``jsx``); NotFound otherwise."""
    async with session.begin():
        community_id = await session.scalar(select(Community.id).where(Community.code == code))
        if community_id is None:
            raise NotFound(code)
        return await _community(session, community_id)


async def _community(session: AsyncSession, community_id: int) -> CommunityRef:
    community = await session.get(Community, community_id)
    if community is None:
        raise NotFound(community_id)
    return _ref(community)


def _ref(community: Community) -> CommunityRef:
    return CommunityRef(community.id, community.code, community.name, community.name_en, community.timezone)


# --- the rows -------------------------------------------------------------------------------------------


async def _names(session: AsyncSession, community_id: int, view: View, keys: Iterable[Any]) -> list[Row]:
    """Every row the view shows, named: the active ones, and any other with tickets; no figures yet."""
    keys = set(keys)
    match view:
        case View.GRID | View.CATEGORY | View.COMPOUND:
            model: Any = {View.GRID: Grid, View.CATEGORY: Category, View.COMPOUND: Compound}[view]
            found = await session.scalars(
                select(model)
                .where(model.community_id == community_id, or_(model.active.is_(True), model.id.in_(keys)))
                .order_by(model.id)
            )
            return [Row(item.id, item.name, item.name_en or item.name, Figures()) for item in found]
        case View.WORKER:
            workers = set(
                await session.scalars(
                    select(Membership.user_id).where(
                        Membership.community_id == community_id,
                        Membership.role == Role.GRID_WORKER,
                        Membership.active.is_(True),
                    )
                )
            )
            people = sorted(workers | {k for k in keys if k is not None})
            names = await display_names(session, community_id, people)
            rows = [
                Row(person, names.get(person, str(person)), names.get(person, str(person)), Figures())
                for person in people
            ]
            if None in keys:
                rows.append(Row(None, "无人承办", "Nobody", Figures()))
            return rows


def _ranked(rows: list[Row], previous: dict[Any, Figures]) -> list[Row]:
    """Rows with their rank (best score first) and last month's, the unranked ones last."""

    def places(scores: dict[Any, float | None]) -> dict[Any, int]:
        order = sorted((k for k, s in scores.items() if s is not None), key=lambda k: -(scores[k] or 0.0))
        ranks: dict[Any, int] = {}
        for place, k in enumerate(order, start=1):
            ranks[k] = place
        return ranks

    now_places = places({row.key: row.figures.score for row in rows if row.figures.received})
    before_places = places({k: f.score for k, f in previous.items() if f.received})
    ranked = [
        replace(
            row,
            rank=now_places.get(row.key),
            previous_rank=before_places.get(row.key),
            previous_score=previous[row.key].score if row.key in previous else None,
        )
        for row in rows
    ]
    return sorted(ranked, key=lambda r: (r.rank is None, r.rank or 0, -r.figures.received, r.name))


async def monthly_stats(
    session: AsyncSession,
    *,
    viewer_id: int,
    community_id: int | None,
    month: Month | None,
    view: View,
    now: datetime,
    trend: bool = True,
    cache: MonthCache | None = None,
) -> MonthlyStats:
    """The month's figures in ``view``, ranked against the month before; refused unless the viewer may see them.

    Community staff see their community, the street office every community it serves, and a grid worker the
    worker view with their own row only, whatever view was asked for. Without a community: the first one the
    viewer may see; without a month: the last complete one.
    """
    async with session.begin():
        allowed = await _stats_communities(session, viewer_id)
        if community_id is None:
            community_id = min(allowed)
        if community_id not in allowed:
            raise AccessDenied(community_id)
        own_row_only = allowed[community_id]
        return await _monthly_stats(session, community_id, month, view, now, own_row_only, viewer_id, trend, cache)


async def community_stats(
    session: AsyncSession, *, community_id: int, month: Month, view: View, now: datetime, trend: bool = True
) -> MonthlyStats:
    """The figures as the office gets them, for the scheduled report and the command line (no viewer)."""
    async with session.begin():
        return await _monthly_stats(session, community_id, month, view, now, False, None, trend)


async def _monthly_stats(
    session: AsyncSession,
    community_id: int,
    month: Month | None,
    view: View,
    now: datetime,
    own_row_only: bool,
    viewer_id: int | None,
    trend: bool,
    cache: MonthCache | None = None,
) -> MonthlyStats:
    community = await _community(session, community_id)
    month = month or last_complete_month(now, community.timezone)
    if own_row_only:
        view = View.WORKER
    key = _key(view)
    where = _month_filter(community.id, *month.bounds(community.timezone))
    previous_where = _month_filter(community.id, *month.shift(-1).bounds(community.timezone))
    if own_row_only:
        where.append(Ticket.assignee_id == viewer_id)
        previous_where.append(Ticket.assignee_id == viewer_id)
    summed = await _summed_by(session, community, month, view, viewer_id if own_row_only else None)
    current, durations = await _month_on_show(session, key, where, now, summed)
    current = {k: (durations.get(k) or Durations.none()).medians(f) for k, f in current.items()}
    before = month.shift(-1)
    cached = ("by", community.id, view, before.index, viewer_id if own_row_only else None)
    previous = cache.get(cached, now) if cache else None
    if previous is None:
        previous = await _summed_by(session, community, before, view, viewer_id if own_row_only else None)
    if previous is None:
        previous = await _figures_by(session, key, previous_where, now, SCORE_FIELDS)
        if cache is not None and _ended(before, community, now):
            cache.put(cached, previous, now)
    rows = [
        replace(row, figures=current.get(row.key, Figures()))
        for row in await _names(session, community.id, view, current)
        if not own_row_only or row.key == viewer_id
    ]
    rows = _ranked(rows, previous)
    if own_row_only:
        return MonthlyStats(community, month, view, rows, current.get(viewer_id, Figures()), now, own_row_only=True)
    # Each ticket is in one row: counts add up.
    total = Durations.of(durations.values()).medians(sum(current.values(), Figures()))
    grids = rows if view is View.GRID else await _grid_rows(session, community, month, where, now)
    points = await _trend(session, community, month, total, now, cache) if trend else []
    return MonthlyStats(community, month, view, rows, total, now, grids=grids, trend=points)


async def _month_on_show(
    session: AsyncSession,
    key: KeyColumn,
    where: Sequence[ColumnElement[bool]],
    now: datetime,
    summed: dict[Any, Figures] | None,
) -> tuple[dict[Any, Figures], dict[Any, Durations]]:
    """The month's figures per value of ``key``, and the durations for the medians. A month with a summary
    (``summed``: it has ended) takes its counts from there, and only its durations and overdue tickets from one
    lighter pass over its tickets; any other month is counted from its tickets alone."""
    if summed is None:
        return await _figures_and_durations(session, key, where, now)
    fresh, durations = await _figures_and_durations(session, key, where, now, ("overdue_now",))
    moving = {k: replace(summed.get(k, Figures()), overdue_now=f.overdue_now) for k, f in fresh.items()}
    return summed | moving, durations


async def _grid_rows(
    session: AsyncSession,
    community: CommunityRef,
    month: Month,
    where: Sequence[ColumnElement[bool]],
    now: datetime,
) -> list[Row]:
    """The month by grid, for the chart (its three rates only)."""
    by_grid = await _summed_by(session, community, month, View.GRID, None)
    if by_grid is None:
        by_grid = await _figures_by(session, Ticket.grid_id, where, now, SCORE_FIELDS)
    return [
        replace(r, figures=by_grid.get(r.key, Figures()))
        for r in await _names(session, community.id, View.GRID, by_grid)
    ]


# --- the street office: its communities ranked against each other ------------------------------------


@dataclass(frozen=True)
class StreetStats:
    """One row per community a street office serves (``Row.key`` the community's id), ranked like any other view.

    Each community's month is the calendar month in its own time zone; ``total`` adds them up.
    """

    month: Month
    communities: list[CommunityRef]  # by id
    rows: list[Row]
    total: Figures
    as_of: datetime


async def street_communities(session: AsyncSession, *, viewer_id: int) -> list[CommunityRef]:
    """The communities whose street office ``viewer_id`` is part of, by id; empty for everyone else."""
    async with session.begin():
        duties = await load_duties(session, viewer_id)
        return [await _community(session, community_id) for community_id in sorted(duties.street_community_ids)]


def street_month(communities: Sequence[CommunityRef], now: datetime) -> Month:
    """The last month complete in every one of the communities (time zones differ)."""
    return min(last_complete_month(now, c.timezone) for c in communities)


async def street_stats(
    session: AsyncSession,
    *,
    viewer_id: int,
    month: Month | None,
    now: datetime,
    cache: MonthCache | None = None,
) -> StreetStats:
    """The street office's communities ranked for ``month`` (default: the last one complete in all of them),
    against the month before. Refused to anyone who is not in a street office, community staff included: they
    see their own community's figures, never their neighbours'."""
    async with session.begin():
        duties = await load_duties(session, viewer_id)
        if not duties.street_community_ids:
            raise AccessDenied("street ranking")
        communities = [await _community(session, c) for c in sorted(duties.street_community_ids)]
        return await _street_stats(session, communities, month or street_month(communities, now), now, cache)


async def _street_stats(
    session: AsyncSession,
    communities: Sequence[CommunityRef],
    month: Month,
    now: datetime,
    cache: MonthCache | None = None,
) -> StreetStats:
    """Each community's month as its own /stats counts it (the same query, keyed by the community), then ranked."""
    current: dict[Any, Figures] = {}
    durations: dict[Any, Durations] = {}
    for community in communities:
        where = _month_filter(community.id, *month.bounds(community.timezone))
        totals = await _summed_totals(session, community, [month])
        summed = {community.id: totals[month]} if month in totals else None
        figures, spans = await _month_on_show(session, Ticket.community_id, where, now, summed)
        current |= {k: (spans.get(k) or Durations.none()).medians(f) for k, f in figures.items()}
        durations |= spans
    previous = await _community_months(session, communities, month.shift(-1), now, cache)
    rows = [Row(c.id, c.name, c.name_en or c.name, current.get(c.id, Figures())) for c in communities]
    total = Durations.of(durations.values()).medians(sum(current.values(), Figures()))
    return StreetStats(month, list(communities), _ranked(rows, previous), total, now)


async def _community_months(
    session: AsyncSession, communities: Sequence[CommunityRef], month: Month, now: datetime, cache: MonthCache | None
) -> dict[Any, Figures]:
    """Each community's score figures for ``month`` (the month before, for the change): what its trend holds for
    that month, from the same cache entries when the trend has counted them already."""
    found: dict[Any, Figures] = {}
    for community in communities:
        cached = ("trend", community.id, month.index)
        figures = cache.get(cached, now) if cache else None
        if figures is None:
            figures = (await _summed_totals(session, community, [month])).get(month)
        if figures is None:
            where = _month_filter(community.id, *month.bounds(community.timezone))
            figures = (await _figures_by(session, Ticket.community_id, where, now, SCORE_FIELDS)).get(
                community.id, Figures()
            )
            if cache is not None and _ended(month, community, now):
                cache.put(cached, figures, now)
        found[community.id] = figures
    return found


# --- the month's tickets, for the spreadsheet ---------------------------------------------------------


@dataclass(frozen=True)
class Named:
    name: str
    name_en: str


@dataclass(frozen=True)
class TicketLine:
    """One ticket as the spreadsheet lists it: never who reported it."""

    id: int
    category: Named
    compound: Named
    building: Named
    unit: int | None
    grid: Named
    assignee: str
    status: str
    level: str
    department: str | None
    created_at: datetime
    first_accepted_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    rating: int | None
    reopen_count: int
    handed_back: int = 0
    path: tuple[str, ...] = ()  # the levels it went through, e.g. ("grid", "community", "grid")
    due: datetime | None = None  # an open ticket's current deadline, and its colour in the ledger now
    colour: Colour | None = None


@dataclass(frozen=True)
class MonthReport:
    """Everything the spreadsheet holds: the month's tickets, the ledger now, and the figures in every view."""

    stats: dict[View, MonthlyStats]
    tickets: list[TicketLine]
    open_now: list[TicketLine]  # every open ticket of the community now, whatever its month: the ledger


async def month_report(
    session: AsyncSession,
    *,
    viewer_id: int | None,
    community_id: int,
    month: Month,
    now: datetime,
    yellow_share: float = DEFAULT_YELLOW_SHARE,
) -> MonthReport:
    """The month's report for the community's office or its street office (``viewer_id`` None: the bot itself,
    for the scheduled report and the command line). A grid worker is refused: they see only their own row."""
    async with session.begin():
        if viewer_id is not None and (await _stats_communities(session, viewer_id)).get(community_id) is not False:
            raise AccessDenied(community_id)
        return await office_report(session, community_id, month, now, yellow_share)


async def office_report(
    session: AsyncSession, community_id: int, month: Month, now: datetime, yellow_share: float = DEFAULT_YELLOW_SHARE
) -> MonthReport:
    """The month's report for the bot itself (the scheduled report), inside the caller's transaction."""
    by_view = {
        view: await _monthly_stats(session, community_id, month, view, now, False, None, view is View.GRID)
        for view in View
    }
    community = by_view[View.GRID].community
    start, end = month.bounds(community.timezone)
    in_month = [Ticket.created_at >= start, Ticket.created_at < end]
    is_open = [Ticket.status.in_(TicketStatus.open_statuses())]
    lines = await _ticket_lines(session, community_id, in_month, now, yellow_share)
    open_now = await _ticket_lines(session, community_id, is_open, now, yellow_share)
    return MonthReport(by_view, lines, open_now)


async def _ticket_lines(
    session: AsyncSession, community_id: int, where: Sequence[ColumnElement[bool]], now: datetime, yellow_share: float
) -> list[TicketLine]:
    grid = aliased(Grid)
    rows = (
        await session.execute(
            select(
                Ticket,
                Category.response_hours,
                Category.resolve_hours,
                Category.name,
                Category.name_en,
                Compound.name,
                Compound.name_en,
                Building.name,
                Building.name_en,
                grid.name,
                grid.name_en,
            )
            .join(Category, Category.id == Ticket.category_id)
            .join(Building, Building.id == Ticket.building_id)
            .join(Compound, Compound.id == Building.compound_id)
            .join(grid, grid.id == Ticket.grid_id)
            .where(Ticket.community_id == community_id, *where)
            .order_by(Ticket.id)
            .options(raiseload("*"))
        )
    ).all()
    moves: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for ticket_id, kind, data in await session.execute(
        select(TicketEvent.ticket_id, TicketEvent.kind, TicketEvent.data)
        .join(Ticket, Ticket.id == TicketEvent.ticket_id)
        .where(
            Ticket.community_id == community_id,
            *where,
            TicketEvent.kind.in_([EventKind.ESCALATED, EventKind.SENT_DOWN, EventKind.HANDED_BACK]),
        )
        .order_by(TicketEvent.ticket_id, TicketEvent.id)
    ):
        moves.setdefault(ticket_id, []).append((kind, data))
    names = await display_names(session, community_id, {row[0].assignee_id for row in rows})
    lines = []
    for ticket, response_hours, resolve_hours, *labels in rows:
        moved = moves.get(ticket.id, [])
        due = {TicketStatus.ASSIGNED: ticket.respond_by, TicketStatus.IN_PROGRESS: ticket.resolve_by}.get(
            TicketStatus(ticket.status)
        )
        window = timedelta(hours=response_hours if ticket.status == TicketStatus.ASSIGNED else resolve_hours)
        ladder = [data for kind, data in moved if kind != EventKind.HANDED_BACK]
        path = (ladder[0]["from"], *(data["to"] for data in ladder)) if ladder else (ticket.level,)
        lines.append(
            TicketLine(
                id=ticket.id,
                category=Named(labels[0], labels[1] or labels[0]),
                compound=Named(labels[2], labels[3] or labels[2]),
                building=Named(labels[4], labels[5] or labels[4]),
                unit=ticket.unit,
                grid=Named(labels[6], labels[7] or labels[6]),
                assignee=names.get(ticket.assignee_id, "") if ticket.assignee_id is not None else "",
                status=ticket.status,
                level=ticket.level,
                department=ticket.department,
                created_at=ticket.created_at,
                first_accepted_at=ticket.first_accepted_at,
                resolved_at=ticket.resolved_at,
                closed_at=ticket.closed_at,
                rating=ticket.rating,
                reopen_count=ticket.reopen_count,
                handed_back=sum(1 for kind, _ in moved if kind == EventKind.HANDED_BACK),
                path=path,
                due=due,
                colour=None if due is None else colour_at(due, window, now, yellow_share),
            )
        )
    return lines
