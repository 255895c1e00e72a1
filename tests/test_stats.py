"""The monthly figures against a hand-computed set of tickets, on the domain directly.

October 2026 in the sample community (Asia/Shanghai). Each ticket goes through the real lifecycle functions:

- T1 (light, g1): 李娟 accepts after 1 h, resolves after 10 h, the resident confirms and rates 5 without a
  comment. Counts for g1 and 李娟.
- T2 (light, g1): 马丽 accepts after 2 h and escalates it to the office, which sends it down: back to 马丽, who
  accepts again and resolves after 80 h (late: 72 h). Nobody answers: auto-closed unconfirmed. g1, 马丽.
- T3 (drain, g1): 李娟 hands it back after 3 h; 马丽 accepts after 5 h (late: 4 h), resolves after 20 h;
  confirmed, rated 2. g1, 马丽.
- T4 (light, g2): 杨敏 accepts after 1 h, resolves after 5 h; the resident reopens it; resolved again after
  30 h, confirmed, rated 4 with a comment. g2, 杨敏.
- T5 (light, g3): filed 31 Oct 22:00, accepted 1 Nov 09:00 (11 h), resolved 2 Nov 10:00 (36 h), confirmed:
  it crosses the month boundary and counts in October. g3, 赵红.
- T6 (light, g2): filed 20 Oct after 马丽 moved from g1 to g2; never accepted, so overdue now. g2, 马丽.
- T8 (light, g3): filed 1 Nov 00:30: November's, not October's.

Hand-computed October figures (now = 5 Nov), as received / accepted in time / resolved in time / closed /
resolved once / reopened / rated / rated 4-5 / sum of ratings / overdue now; median accept, median resolve:

- g1: 3 / 2 (T1, T2) / 2 (T1, T3) / 2 / 3 / 0 / 2 / 1 / 7 / 0; 2 h, 20 h
- g2: 2 / 1 / 1 / 1 / 1 / 1 / 1 / 1 / 4 / 1; 1 h, 30 h
- g3: 1 / 1 / 1 / 1 / 1 / 0 / 0 / 0 / 0 / 0; 11 h, 36 h
- 李娟: 1 (T1) / 1 / 1 / 1 / 1 / 0 / 1 / 1 / 5 / 0; 1 h, 10 h
- 马丽: 3 (T2, T3, T6) / 1 / 1 / 1 / 2 / 0 / 1 / 0 / 2 / 1; 3.5 h, 50 h

Scores (mean of response, resolution, satisfaction): g1 (2/3 + 2/3 + 1/2)/3, g2 (1/2 + 1/2 + 1)/3, g3 (1 + 1)/2:
ranks g3, g2, g1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from domain import confirmation, escalation, tickets
from domain.community_file import import_community, loads_community
from domain.errors import AccessDenied
from domain.month_summary import may_have_ended
from domain.stats import (
    SETTLE,
    SUMMED_FIELDS,
    CommunityRef,
    Figures,
    Month,
    MonthCache,
    Rate,
    View,
    _figures_by,
    _key,
    _month_filter,
    _summed_by,
    community_stats,
    last_complete_month,
    monthly_stats,
    summarise_months,
)
from storage.db import SessionFactory
from storage.models import Grid, Level, MonthFigures, MonthSummary, Ticket
from tests.conftest import SAMPLE_COMMUNITY, FakeClock
from tests.households import verify_household
from tests.test_routing import report, resident_in

LI_JUAN, MA_LI, YANG_MIN, ZHAO_HONG = 200001, 200002, 200011, 200021
STAFF_WANG, STREET_CHEN, HOUSING_HAN = 100001, 500001, 600001
R1, R2, R3 = 940001, 940002, 940003
START = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)  # 10:00 on 1 October in Yinchuan
OCTOBER, NOVEMBER = Month(2026, 10), Month(2026, 11)
NOW = datetime(2026, 11, 5, 2, 0, tzinfo=UTC)


class Story:
    """Moves the clock to a moment of the story and runs one domain step there."""

    def __init__(self, sessions: SessionFactory, clock: FakeClock) -> None:
        self.sessions, self.clock = sessions, clock

    def at(self, filed: datetime, hours: float) -> datetime:
        self.clock.now = filed + timedelta(hours=hours)
        return self.clock.now

    async def file(self, resident: int, code: str, at: datetime) -> tuple[int, datetime, int | None]:
        self.clock.now = at
        filed = await report(self.sessions, self.clock, resident, code=code)
        assignee = filed.decision.assignee.user_id if filed.decision.assignee else None
        return filed.ticket.id, at, assignee

    async def do(self, step: object, **kwargs: object) -> None:
        async with self.sessions() as session:
            await step(session, now=self.clock.now, **kwargs)  # type: ignore[operator]


async def move_ma_li_to_grid_2(sessions: SessionFactory, clock: FakeClock) -> None:
    """Re-import the community file with 马丽 listed under 第二网格 instead of 第一网格."""
    text = SAMPLE_COMMUNITY.read_text(encoding="utf-8")
    ma_li = '  { telegram_id = 200002, name = "马丽" },\n'
    yang_min = '  { telegram_id = 200011, name = "杨敏" },\n'
    assert ma_li in text and yang_min in text
    moved = text.replace(ma_li, "").replace(yang_min, yang_min + ma_li)
    async with sessions() as session:
        await import_community(session, loads_community(moved), clock())


@pytest.fixture
async def october(session_factory: SessionFactory, clock: FakeClock, community: None) -> dict[str, int]:
    story = Story(session_factory, clock)
    for resident, building in ((R1, "yinba/1"), (R2, "yinba/9"), (R3, "chaoyang/1")):
        await resident_in(session_factory, clock, resident, building)
        await verify_household(session_factory, resident, clock())  # only a verified household confirms and rates

    t1, t1_at, who = await story.file(R1, "light", START)
    assert who == LI_JUAN
    t2, t2_at, who = await story.file(R1, "light", START + timedelta(minutes=1))
    assert who == MA_LI
    t3, t3_at, who = await story.file(R1, "drain", START + timedelta(minutes=2))
    assert who == LI_JUAN
    t4, t4_at, who = await story.file(R2, "light", START + timedelta(minutes=3))
    assert who == YANG_MIN

    # T1: accepted after 1 h, resolved after 10 h, confirmed, rated 5 without a comment.
    story.at(t1_at, 1)
    await story.do(tickets.accept, actor_id=LI_JUAN, ticket_id=t1)
    story.at(t1_at, 10)
    await story.do(tickets.resolve, actor_id=LI_JUAN, ticket_id=t1, note="换了灯泡", photo=None)
    story.at(t1_at, 11)
    await story.do(confirmation.confirm_fixed, actor_id=R1, ticket_id=t1)
    await story.do(confirmation.rate, actor_id=R1, ticket_id=t1, stars=5)

    # T2: escalated to the office and sent down again, resolved late, then auto-closed unconfirmed.
    story.at(t2_at, 2)
    await story.do(tickets.accept, actor_id=MA_LI, ticket_id=t2)
    story.at(t2_at, 3)
    await story.do(
        escalation.escalate, actor_id=MA_LI, ticket_id=t2, level=Level.COMMUNITY, department=None, reason="需要社区协调"
    )
    story.at(t2_at, 5)
    async with session_factory() as session:
        holder = (await session.get(Ticket, t2)).assignee_id  # type: ignore[union-attr]
    await story.do(escalation.send_down, actor_id=holder, ticket_id=t2, instruction="请网格继续处理")
    story.at(t2_at, 6)
    await story.do(tickets.accept, actor_id=MA_LI, ticket_id=t2)
    story.at(t2_at, 80)
    await story.do(tickets.resolve, actor_id=MA_LI, ticket_id=t2, note="已修好", photo=None)

    # T3: handed back by 李娟, accepted by 马丽 after 5 h (the drain's 4 h are over), confirmed, rated 2.
    story.at(t3_at, 3)
    await story.do(tickets.hand_back, actor_id=LI_JUAN, ticket_id=t3, reason="我在外地培训")
    story.at(t3_at, 5)
    await story.do(tickets.accept, actor_id=MA_LI, ticket_id=t3)
    story.at(t3_at, 20)
    await story.do(tickets.resolve, actor_id=MA_LI, ticket_id=t3, note="疏通了", photo=None)
    await story.do(confirmation.confirm_fixed, actor_id=R1, ticket_id=t3)
    await story.do(confirmation.rate, actor_id=R1, ticket_id=t3, stars=2)

    # T4: resolved, reopened by the resident, resolved again after 30 h, confirmed, rated 4 with a comment.
    story.at(t4_at, 1)
    await story.do(tickets.accept, actor_id=YANG_MIN, ticket_id=t4)
    story.at(t4_at, 5)
    await story.do(tickets.resolve, actor_id=YANG_MIN, ticket_id=t4, note="修好了", photo=None)
    story.at(t4_at, 6)
    await story.do(confirmation.reopen, actor_id=R2, ticket_id=t4, reason="晚上还是不亮")
    story.at(t4_at, 30)
    await story.do(tickets.resolve, actor_id=YANG_MIN, ticket_id=t4, note="换了线路", photo=None)
    await story.do(confirmation.confirm_fixed, actor_id=R2, ticket_id=t4)
    await story.do(confirmation.rate, actor_id=R2, ticket_id=t4, stars=4)
    await story.do(confirmation.comment_on_rating, actor_id=R2, ticket_id=t4, text="谢谢杨敏")

    # Nobody answers "Is it fixed?" for T2: a week later it closes as resolved, unconfirmed.
    story.at(t2_at, 80 + 7 * 24 + 1)
    await story.do(confirmation.close_unconfirmed)

    # 马丽 moves to 第二网格 and gets T6 there, which nobody accepts.
    clock.now = datetime(2026, 10, 19, 2, 0, tzinfo=UTC)
    await move_ma_li_to_grid_2(session_factory, clock)
    t6, _, who = await story.file(R2, "light", datetime(2026, 10, 20, 2, 0, tzinfo=UTC))
    assert who == MA_LI

    # T5 crosses the month boundary (times in Yinchuan, UTC+8); T8 is November's.
    t5, t5_at, who = await story.file(R3, "light", datetime(2026, 10, 31, 14, 0, tzinfo=UTC))
    assert who == ZHAO_HONG
    t8, _, _ = await story.file(R3, "light", datetime(2026, 10, 31, 16, 30, tzinfo=UTC))
    story.at(t5_at, 11)
    await story.do(tickets.accept, actor_id=ZHAO_HONG, ticket_id=t5)
    story.at(t5_at, 36)
    await story.do(tickets.resolve, actor_id=ZHAO_HONG, ticket_id=t5, note="已修复", photo=None)
    await story.do(confirmation.confirm_fixed, actor_id=R3, ticket_id=t5)
    clock.now = NOW
    return {"t6": t6, "t8": t8}


@pytest.fixture(params=["counted from the tickets", "summed"])
async def october_counted(
    request: pytest.FixtureRequest, session_factory: SessionFactory, october: dict[str, int]
) -> dict[str, int]:
    """The story, with October either not summed yet (its figures counted from its tickets) or summed by the
    statistics job (its counts read from the summary, its medians and overdue tickets from the tickets)."""
    if request.param == "summed":
        await summarise(session_factory, NOW)
        assert await summarise(session_factory, NOW + SETTLE) == (0, 1)
    return october


async def grid_ids(sessions: SessionFactory) -> dict[str, int]:
    async with sessions() as session:
        return {g.code: g.id for g in await session.scalars(select(Grid))}


def hours(value: float) -> timedelta:
    return timedelta(hours=value)


async def test_october_by_grid_matches_the_hand_computed_figures(
    session_factory: SessionFactory, october_counted: dict[str, int]
) -> None:
    grids = await grid_ids(session_factory)
    async with session_factory() as session:
        stats = await monthly_stats(
            session, viewer_id=STAFF_WANG, community_id=1, month=OCTOBER, view=View.GRID, now=NOW
        )
    rows = {row.key: row for row in stats.rows}
    g1, g2, g3 = rows[grids["g1"]].figures, rows[grids["g2"]].figures, rows[grids["g3"]].figures
    assert (g1.received, g1.accepted_in_time, g1.resolved_in_time, g1.closed_confirmed) == (3, 2, 2, 2)
    assert (g1.resolved_once, g1.reopened, g1.rated, g1.satisfied, g1.rating_sum, g1.overdue_now) == (3, 0, 2, 1, 7, 0)
    assert (g1.median_accept, g1.median_resolve) == (hours(2), hours(20))
    assert (g2.received, g2.accepted_in_time, g2.resolved_in_time, g2.closed_confirmed) == (2, 1, 1, 1)
    assert (g2.resolved_once, g2.reopened, g2.rated, g2.satisfied, g2.rating_sum, g2.overdue_now) == (1, 1, 1, 1, 4, 1)
    assert (g2.median_accept, g2.median_resolve) == (hours(1), hours(30))
    assert (g3.received, g3.accepted_in_time, g3.resolved_in_time, g3.closed_confirmed, g3.rated) == (1, 1, 1, 1, 0)
    assert (g3.median_accept, g3.median_resolve) == (hours(11), hours(36))

    assert g1.rate(Rate.RESPONSE) == pytest.approx(2 / 3)
    assert g1.rate(Rate.SATISFACTION) == 0.5 and g1.average_rating == 3.5
    assert g2.rate(Rate.REOPEN) == 1.0 and g3.rate(Rate.SATISFACTION) is None
    # Ranked by the mean of the three rates: g3 (1.0), g2 ((1/2 + 1/2 + 1) / 3), g1 ((2/3 + 2/3 + 1/2) / 3).
    assert [row.key for row in stats.rows[:3]] == [grids["g3"], grids["g2"], grids["g1"]]
    assert stats.rows[0].rank == 1 and stats.rows[0].previous_rank is None  # nothing in September
    assert stats.total.received == 6 and stats.total.median_accept == hours(2)
    assert [point.figures.received for point in stats.trend][-2:] == [0, 6]


async def test_october_by_worker_follows_the_assignee_across_grids(
    session_factory: SessionFactory, october_counted: dict[str, int]
) -> None:
    async with session_factory() as session:
        stats = await monthly_stats(
            session, viewer_id=STAFF_WANG, community_id=1, month=OCTOBER, view=View.WORKER, now=NOW
        )
    rows = {row.key: row for row in stats.rows}
    li_juan, ma_li = rows[LI_JUAN].figures, rows[MA_LI].figures
    assert rows[MA_LI].name == "马丽"
    assert (li_juan.received, li_juan.median_accept, li_juan.median_resolve) == (1, hours(1), hours(10))
    # T2 (sent down to her again), T3 (handed to her) and T6 (in her new grid).
    assert (ma_li.received, ma_li.accepted_in_time, ma_li.resolved_in_time, ma_li.closed_confirmed) == (3, 1, 1, 1)
    assert (ma_li.resolved_once, ma_li.rated, ma_li.satisfied, ma_li.overdue_now) == (2, 1, 0, 1)
    assert (ma_li.median_accept, ma_li.median_resolve) == (hours(3.5), hours(50))
    assert rows[ZHAO_HONG].figures.received == 1 and rows[YANG_MIN].figures.received == 1
    # Every active grid worker has a row, those without tickets unranked and last.
    assert rows[200003].figures.received == 0 and rows[200003].rank is None
    assert stats.rows[-1].rank is None


async def test_november_is_ranked_against_october(session_factory: SessionFactory, october: dict[str, int]) -> None:
    grids = await grid_ids(session_factory)
    async with session_factory() as session:
        stats = await monthly_stats(
            session, viewer_id=STAFF_WANG, community_id=1, month=NOVEMBER, view=View.GRID, now=NOW
        )
    g3 = next(row for row in stats.rows if row.key == grids["g3"])
    assert g3.figures.received == 1 and g3.figures.overdue_now == 1  # T8, never accepted
    assert (g3.rank, g3.previous_rank, g3.rank_change) == (1, 1, 0)
    assert g3.score_change == pytest.approx(-1.0)
    g1 = next(row for row in stats.rows if row.key == grids["g1"])
    assert (g1.rank, g1.previous_rank, g1.rank_change) == (None, 3, None)


async def test_who_may_see_the_figures(session_factory: SessionFactory, october: dict[str, int]) -> None:
    async def ask(viewer: int, view: View = View.GRID):  # type: ignore[no-untyped-def]
        async with session_factory() as session:
            return await monthly_stats(session, viewer_id=viewer, community_id=1, month=OCTOBER, view=view, now=NOW)

    assert len((await ask(STREET_CHEN)).rows) == 3  # the street office sees all its communities' grids
    own = await ask(LI_JUAN, View.GRID)  # a grid worker gets their own row, whatever view is asked for
    assert own.own_row_only and own.view is View.WORKER
    assert [row.key for row in own.rows] == [LI_JUAN] and own.total.received == 1 and own.grids == []
    for refused in (R1, HOUSING_HAN):
        with pytest.raises(AccessDenied):
            await ask(refused)
    async with session_factory() as session:
        with pytest.raises(AccessDenied):
            await monthly_stats(session, viewer_id=STAFF_WANG, community_id=99, month=OCTOBER, view=View.GRID, now=NOW)


async def test_the_office_report_needs_no_viewer(session_factory: SessionFactory, october: dict[str, int]) -> None:
    async with session_factory() as session:
        stats = await community_stats(session, community_id=1, month=OCTOBER, view=View.CATEGORY, now=NOW)
    by_name = {row.name: row.figures.received for row in stats.rows}
    assert by_name["路灯/楼道灯"] == 5 and by_name["管道堵塞"] == 1
    async with session_factory() as session:
        stats = await community_stats(session, community_id=1, month=OCTOBER, view=View.COMPOUND, now=NOW)
    by_compound = {row.name: row.figures for row in stats.rows}
    # T1-T4 and T6 in 银巴小区 (grids 1 and 2), T5 in 朝阳花园小区 (grid 3), nothing in 幸福苑小区.
    assert {name: f.received for name, f in by_compound.items()} == {"银巴小区": 5, "幸福苑小区": 0, "朝阳花园小区": 1}
    assert by_compound["银巴小区"].median_accept == hours(1.5)  # 1, 1, 2 and 5 h: T6 was never accepted
    assert by_compound["朝阳花园小区"].median_resolve == hours(36)


def test_months() -> None:
    assert Month.parse("2026-10").shift(3) == Month(2027, 1)
    assert last_complete_month(datetime(2026, 10, 31, 16, 30, tzinfo=UTC), "Asia/Shanghai") == OCTOBER
    assert OCTOBER.bounds("Asia/Shanghai") == (
        datetime(2026, 9, 30, 16, tzinfo=UTC),
        datetime(2026, 10, 31, 16, tzinfo=UTC),
    )
    for wrong in ("2026-13", "26-10", "2026-1", "abcd-ef"):
        with pytest.raises(ValueError):
            Month.parse(wrong)


async def test_ended_months_are_kept_a_while_the_shown_month_never(
    session_factory: SessionFactory, clock: FakeClock, october: dict[str, int]
) -> None:
    cache = MonthCache(keep=timedelta(minutes=10))

    async def november_trend() -> tuple[int, int]:
        async with session_factory() as session:
            stats = await monthly_stats(
                session,
                viewer_id=STAFF_WANG,
                community_id=1,
                month=NOVEMBER,
                view=View.GRID,
                now=clock(),
                cache=cache,
            )
        by_month = {point.month: point.figures.received for point in stats.trend}
        return by_month[OCTOBER], stats.total.received

    clock.now = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    assert await november_trend() == (6, 1)
    # A late October ticket appears in the record (a re-import, a clock put right) and one in November.
    async with session_factory() as session, session.begin():
        for ticket_id in (october["t6"], october["t8"]):
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None
            session.add(
                Ticket(
                    community_id=ticket.community_id,
                    category_id=ticket.category_id,
                    building_id=ticket.building_id,
                    grid_id=ticket.grid_id,
                    reporter_id=ticket.reporter_id,
                    description="又坏了",
                    created_at=ticket.created_at,
                    updated_at=ticket.created_at,
                )
            )
    assert await november_trend() == (6, 2), "October, which has ended, is kept; November is counted afresh"
    clock.advance(minutes=11)
    assert await november_trend() == (7, 2)


async def test_the_kept_durations_agree_with_the_timestamps_after_the_story(
    session_factory: SessionFactory, october: dict[str, int]
) -> None:
    """The figures read each ticket's two durations kept as whole seconds, never the timestamps: after acceptance,
    escalation and send-down, hand-back, reopen (which clears the resolution) and auto-close, they must still be
    what the timestamps say."""
    async with session_factory() as session:
        found = list(await session.scalars(select(Ticket).order_by(Ticket.id)))
    assert len(found) == 7
    for ticket in found:
        accept = ticket.first_accepted_at and round((ticket.first_accepted_at - ticket.created_at).total_seconds())
        resolve = ticket.resolved_at and round((ticket.resolved_at - ticket.created_at).total_seconds())
        assert (ticket.accept_seconds, ticket.resolve_seconds) == (accept, resolve), ticket.id
    t4 = next(t for t in found if t.reopen_count)
    assert t4.resolve_seconds == 30 * 3600  # the latest resolution, not the one the resident reopened
    assert sum(t.accept_seconds is None for t in found) == 2  # T6 and T8 were never accepted


# --- the summary of ended months ----------------------------------------------------------------------------
# The month before the one on show and the trend read it (domain/month_summary.py, ``summarise_months``), so it
# must always agree with the tickets it sums, also after a late change to one of them.

SAMPLE = CommunityRef(1, "jsx", "", "", "Asia/Shanghai")


async def summarise(sessions: SessionFactory, now: datetime) -> tuple[int, int]:
    async with sessions() as session:
        report = await summarise_months(session, now)
    return report.marked, report.summed


async def from_summary(sessions: SessionFactory, month: Month, view: View) -> dict[object, tuple[int, ...]] | None:
    async with sessions() as session, session.begin():
        found = await _summed_by(session, SAMPLE, month, view, None)
    if found is None:
        return None
    return {key: counts(figures) for key, figures in found.items()}


async def from_tickets(sessions: SessionFactory, month: Month, view: View) -> dict[object, tuple[int, ...]]:
    where = _month_filter(1, *month.bounds(SAMPLE.timezone))
    async with sessions() as session, session.begin():
        found = await _figures_by(session, _key(view), where, NOW)
    return {key: counts(figures) for key, figures in found.items()}


def counts(figures: object) -> tuple[int, ...]:
    return tuple(getattr(figures, name) for name in ("received", *SUMMED_FIELDS))


async def test_an_ended_month_is_summed_once_settled_and_agrees_with_its_tickets(
    session_factory: SessionFactory, october: dict[str, int]
) -> None:
    assert await summarise(session_factory, NOW) == (1, 0), "October gets its row; summed from the next run on"
    assert await from_summary(session_factory, OCTOBER, View.GRID) is None
    assert await summarise(session_factory, NOW + SETTLE) == (0, 1)
    assert await summarise(session_factory, NOW + 2 * SETTLE) == (0, 0), "nothing changed: nothing summed again"
    for view in View:
        assert await from_summary(session_factory, OCTOBER, view) == await from_tickets(session_factory, OCTOBER, view)
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(MonthFigures)) > 0
        # November is still running: no row for it.
        assert await session.scalar(select(MonthSummary.month).where(MonthSummary.month == NOVEMBER.index)) is None


async def test_a_late_change_to_an_ended_month_is_summed_again(
    session_factory: SessionFactory, clock: FakeClock, october: dict[str, int]
) -> None:
    await summarise(session_factory, NOW)
    await summarise(session_factory, NOW + SETTLE)
    before = await from_summary(session_factory, OCTOBER, View.WORKER)
    assert before is not None and before[MA_LI][SUMMED_FIELDS.index("resolved_once") + 1] == 2

    # 马丽 finally takes on and resolves T6 (filed 20 October) on 6 November.
    clock.now = NOW + timedelta(days=1)
    async with session_factory() as session:
        await tickets.accept(session, actor_id=MA_LI, ticket_id=october["t6"], now=clock.now)
    async with session_factory() as session:
        await tickets.resolve(
            session, actor_id=MA_LI, ticket_id=october["t6"], now=clock.now, note="修好了", photo=None
        )
    async with session_factory() as session:
        summary = await session.get(MonthSummary, (1, OCTOBER.index))
        assert summary is not None and (summary.changes, summary.summarised_changes) == (2, 0)
    assert await from_summary(session_factory, OCTOBER, View.WORKER) == before, "the summary lags until the job"

    async def ma_li_in_october() -> Figures:
        async with session_factory() as session:
            stats = await monthly_stats(
                session, viewer_id=STAFF_WANG, community_id=1, month=OCTOBER, view=View.WORKER, now=clock.now
            )
        return next(row.figures for row in stats.rows if row.key == MA_LI)

    # October on show: its counts from the summary (behind until the job), T6 no longer overdue at once.
    lagging = await ma_li_in_october()
    # Her resolutions took 20 h (T3), 80 h (T2) and now 408 h (T6, 17 days): the median is fresh too.
    assert (lagging.resolved_once, lagging.overdue_now, lagging.median_resolve) == (2, 0, hours(80))

    assert await summarise(session_factory, clock.now) == (0, 1)
    after = await from_summary(session_factory, OCTOBER, View.WORKER)
    assert after == await from_tickets(session_factory, OCTOBER, View.WORKER)
    assert after is not None and after[MA_LI][SUMMED_FIELDS.index("resolved_once") + 1] == 3
    assert (await ma_li_in_october()).resolved_once == 3

    # What the office sees: November ranked against October as summed, and the trend's October point.
    async with session_factory() as session:
        stats = await monthly_stats(
            session, viewer_id=STAFF_WANG, community_id=1, month=NOVEMBER, view=View.WORKER, now=clock.now
        )
    assert {point.month: point.figures.received for point in stats.trend}[OCTOBER] == 6
    # Every October ticket is resolved now, T6 too. Only the summary holds this count for a month not on show
    # (counted from the tickets, the trend reads just the score's fields).
    assert stats.trend[-2].figures.resolved_once == 6


async def test_a_change_of_windows_in_the_community_file_sums_every_month_again(
    session_factory: SessionFactory, clock: FakeClock, october: dict[str, int]
) -> None:
    await summarise(session_factory, NOW)
    await summarise(session_factory, NOW + SETTLE)
    text = SAMPLE_COMMUNITY.read_text(encoding="utf-8")
    assert "response_hours = 2\n" in text
    async with session_factory() as session:
        await import_community(
            session, loads_community(text.replace("response_hours = 2\n", "response_hours = 3\n", 1)), NOW
        )
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(MonthSummary)) == 0
    assert await summarise(session_factory, NOW + 2 * SETTLE) == (1, 0)
    assert await summarise(session_factory, NOW + 3 * SETTLE) == (0, 1)
    assert await from_summary(session_factory, OCTOBER, View.CATEGORY) == await from_tickets(
        session_factory, OCTOBER, View.CATEGORY
    )


# Every time zone this machine knows, the furthest ahead (UTC+14) and behind (UTC-12) among them.
ZONES = sorted(available_timezones())
INSTANTS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=UTC)
)


@settings(max_examples=400, deadline=None)
@given(
    created=INSTANTS,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=70)),
    zone=st.sampled_from(ZONES),
)
def test_a_write_to_a_ticket_of_an_ended_month_is_never_left_unmarked(
    created: datetime, later: timedelta, zone: str
) -> None:
    """The hook skips the mark only when ``may_have_ended`` says no: that must never happen for a ticket whose
    month, in its community's time zone, has ended at the moment of the write."""
    moment = created + later
    tz = ZoneInfo(zone)
    ended = Month.of(created, zone) < Month.of(moment, zone)
    if ended:
        assert may_have_ended(created, moment), (created.astimezone(tz), moment.astimezone(tz))


@pytest.mark.parametrize(
    ("created", "moment", "expected"),
    [
        # Filed and written in the middle of the same month: nothing to mark anywhere on earth.
        (datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC), False),
        # 30 November 12:00 UTC is already 1 December in Kiritimati (UTC+14): the month may have ended.
        (datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 30, 12, tzinfo=UTC), True),
        # Filed 1 November 06:00 UTC, still 31 October at UTC-12.
        (datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC), True),
    ],
)
def test_which_writes_may_touch_an_ended_month(created: datetime, moment: datetime, expected: bool) -> None:
    assert may_have_ended(created, moment) is expected
