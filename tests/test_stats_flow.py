"""/stats through the real dispatcher: the office's month, its buttons, the chart and the spreadsheet, and who
gets what. The tickets are the hand-computed month of test_stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import pytest
from aiogram.methods import EditMessageText, SendDocument, SendMessage, SendPhoto, TelegramMethod
from openpyxl import load_workbook

from bot.callbacks import StatsAction, StatsCb
from domain import confirmation, tickets
from domain.community_file import import_community, loads_community
from domain.errors import AccessDenied
from domain.stats import SETTLE, Month, street_stats, summarise_months
from tests.conftest import ROOT
from tests.fake_telegram import buttons_of, text_of
from tests.harness import Harness
from tests.test_routing import report, resident_in
from tests.test_stats import LI_JUAN, NOVEMBER, NOW, OCTOBER, R1, STAFF_WANG, STREET_CHEN, october

# A second community under the same street office: its staff, its one grid worker and a resident.
HEPING = ROOT / "tests" / "communities" / "heping.toml"
HEPING_STAFF, SUN_FANG, HEPING_RESIDENT = 110001, 210001, 940101

# Every test runs on the hand-computed October of test_stats.
pytestmark = pytest.mark.usefixtures(october.__name__)


def stats_button(
    action: StatsAction = StatsAction.SHOW, month: Month = OCTOBER, view: str = "g", community: int = 1
) -> str:
    return StatsCb(action=action, community_id=community, month=month.index, view=view).pack()


def of_kind(requests: list[TelegramMethod[Any]], kind: type) -> list[Any]:
    return [r for r in requests if isinstance(r, kind)]


def alert(requests: list[TelegramMethod[Any]]) -> str:
    return next(r.text for r in requests if getattr(r, "show_alert", False))


async def test_staff_get_last_month_ranked_with_the_chart(harness: Harness) -> None:
    wang = harness.person(STAFF_WANG, language="en")
    answer = await wang.send("/stats")
    message = of_kind(answer, SendMessage)[0]
    text = text_of(message)
    assert "10/2026" in text and "By grid" in text
    # Ranked: Grid 3, then Grid 2, then Grid 1; nothing ranked in September, so each is "new".
    assert text.index("1. <b>Grid 3</b> new") < text.index("2. <b>Grid 2</b>") < text.index("3. <b>Grid 1</b>")
    assert "received 3 · response 67% · in time 67% · resolved 67% · satisfied 50% (avg 3.5)" in text
    assert "to accept 2 h · to resolve 20 h · overdue 0" in text
    photos = of_kind(answer, SendPhoto)
    assert len(photos) == 1 and photos[0].chat_id == STAFF_WANG
    labels = [label for label, _ in buttons_of(message)]
    assert "◀ 9/2026" in labels and "11/2026 ▶" in labels and "• By grid" in labels and "ℹ️ Definitions" in labels

    # Back a month: September had nothing; the message is edited in place.
    answer = await wang.tap([message], "◀ 9/2026")
    edited = of_kind(answer, EditMessageText)[0]
    assert "9/2026" in edited.text and "received 0" in edited.text
    answer = await wang.press(stats_button(view="w"))
    by_worker = of_kind(answer, EditMessageText)[0].text
    assert "By worker" in by_worker and "马丽" in by_worker and "张伟" in by_worker
    # By category and by compound, with the tap on the view's button (October again).
    message = of_kind(await wang.send("/stats"), SendMessage)[0]
    by_category = of_kind(await wang.tap([message], "By category"), EditMessageText)[0]
    assert "• By category" in str(buttons_of(by_category))
    assert "Broken street or stairwell light</b>" in by_category.text and "received 5" in by_category.text
    by_compound = of_kind(await wang.tap([by_category], "By compound"), EditMessageText)[0].text
    assert "Yinba Compound</b>" in by_compound and "Chaoyang Garden Compound</b>" in by_compound
    answer = await wang.press(stats_button(StatsAction.DEFINITIONS))
    assert "Response rate</b>: tickets first accepted within" in text_of(of_kind(answer, SendMessage)[0])


async def test_rows_show_places_and_score_moved_since_the_month_before(harness: Harness) -> None:
    # In November grid 1 does everything right (a light fixed in 2 h, confirmed, rated 5), while grid 3's T8 is
    # still not accepted: grid 1 climbs from third to first, grid 3 drops from first to second.
    clock = harness.clock
    now = clock.now
    clock.now = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    filed = await report(harness.sessions, clock, R1, code="light")
    assert filed.decision.assignee is not None and filed.decision.assignee.user_id == LI_JUAN
    number = filed.ticket.id
    for step, kwargs, after in (
        (tickets.accept, {"actor_id": LI_JUAN}, 1),
        (tickets.resolve, {"actor_id": LI_JUAN, "note": "换了灯泡", "photo": None}, 1),
        (confirmation.confirm_fixed, {"actor_id": R1}, 0),
        (confirmation.rate, {"actor_id": R1, "stars": 5}, 0),
    ):
        clock.now += timedelta(hours=after)
        async with harness.sessions() as session:
            await step(session, ticket_id=number, now=clock(), **kwargs)  # type: ignore[operator]
    clock.now = now

    wang = harness.person(STAFF_WANG, language="en")
    answer = await wang.press(stats_button(month=NOVEMBER))
    text = of_kind(answer, EditMessageText)[0].text
    # October's scores: grid 1 (2/3 + 2/3 + 1/2) / 3 = 61.1, grid 3 100.0; November's: 100.0 and 0.0.
    assert "1. <b>Grid 1</b> ↑2 score 100.0 (+38.9)" in text
    assert "2. <b>Grid 3</b> ↓1 score 0.0 (-100.0)" in text
    assert text.index("Grid 1") < text.index("Grid 3") < text.index("– <b>Grid 2</b>")


async def test_the_spreadsheet_has_the_month_the_ledger_and_the_rates(harness: Harness) -> None:
    wang = harness.person(STAFF_WANG)  # Chinese
    answer = await wang.press(stats_button(StatsAction.SPREADSHEET))
    document = of_kind(answer, SendDocument)[0]
    assert document.document.filename == "jsx-2026-10.xlsx"
    book = load_workbook(BytesIO(document.document.data))
    tickets, ledger, by_grid = book.worksheets[0], book.worksheets[1], book.worksheets[2]
    assert len(book.worksheets) == 6
    headers = [cell.value for cell in tickets[1]]
    assert headers[:3] == ["编号", "类别", "小区"] and "处理路径" in headers
    assert tickets.max_row == 1 + 6  # T1-T6
    path = {row[0].value: row[headers.index("处理路径")].value for row in tickets.iter_rows(min_row=2)}
    assert sorted(path.values()).count("网格") == 5 and "网格 → 社区 → 网格" in path.values()
    assert ledger.max_row == 1 + 2  # open now: T6 and November's T8
    assert by_grid["C2"].value == "第三网格" and by_grid.column_dimensions["C"].width >= 10


async def test_a_grid_worker_sees_only_their_own_row(harness: Harness) -> None:
    li_juan = harness.person(LI_JUAN, language="en")
    answer = await li_juan.send("/stats")
    text = text_of(of_kind(answer, SendMessage)[0])
    assert "Your own figures" in text and "李娟" in text and "马丽" not in text and "Whole community" not in text
    assert not of_kind(answer, SendPhoto)
    assert "By grid" not in str([label for r in answer for label, _ in buttons_of(r)])
    # Forged buttons: another view shows her own row again; the chart and the spreadsheet are refused.
    answer = await li_juan.press(stats_button(view="g"))
    assert "马丽" not in of_kind(answer, EditMessageText)[0].text
    for action in (StatsAction.CHART, StatsAction.SPREADSHEET):
        answer = await li_juan.press(stats_button(action))
        assert "only for community staff" in alert(answer)
        assert not of_kind(answer, SendPhoto) and not of_kind(answer, SendDocument)


async def test_residents_and_forged_communities_are_refused(harness: Harness) -> None:
    resident = harness.person(R1, language="en")
    answer = await resident.send("/stats")
    assert "only for community staff" in text_of(answer[0])
    street = harness.person(STREET_CHEN, language="en")
    assert "Grid 3" in text_of(of_kind(await street.send("/stats"), SendMessage)[0])
    answer = await street.press(stats_button(community=99))
    assert "only for community staff" in alert(answer)
    answer = await street.press(stats_button(view="zz"))
    assert "only for community staff" in alert(answer)


async def test_in_chinese(harness: Harness) -> None:
    wang = harness.person(STAFF_WANG)
    text = text_of(of_kind(await wang.send("/stats"), SendMessage)[0])
    assert "2026年10月 · 按网格" in text and "1. <b>第三网格</b> 新上榜 得分 100.0" in text
    assert "受理 3 · 响应 67% · 按时办结 67% · 解决 67% · 满意 50%（均分 3.5）" in text


async def second_community(harness: Harness, timezone: str | None = None) -> int:
    """和平里社区 beside the sample (in ``timezone`` instead of Beijing time if given), with one ticket of
    October, accepted after an hour; returns its id."""
    clock = harness.clock
    text = HEPING.read_text(encoding="utf-8")
    if timezone is not None:
        assert 'timezone = "Asia/Shanghai"' in text
        text = text.replace('timezone = "Asia/Shanghai"', f'timezone = "{timezone}"')
    async with harness.sessions() as session:
        await import_community(session, loads_community(text), clock())
    now = clock.now
    clock.now = datetime(2026, 10, 12, 2, 0, tzinfo=UTC)
    await resident_in(harness.sessions, clock, HEPING_RESIDENT, "heping/1")
    filed = await report(harness.sessions, clock, HEPING_RESIDENT, code="lamp")
    assert filed.decision.assignee is not None and filed.decision.assignee.user_id == SUN_FANG
    clock.now += timedelta(hours=1)
    async with harness.sessions() as session:
        await tickets.accept(session, actor_id=SUN_FANG, ticket_id=filed.ticket.id, now=clock())
    clock.now = now
    return filed.ticket.community_id


def community_buttons(request: TelegramMethod[Any]) -> list[str]:
    return [label for label, _ in buttons_of(request) if label.startswith("🏘")]


async def test_the_street_office_sees_each_of_its_communities_and_their_staff_only_their_own(
    harness: Harness,
) -> None:
    heping = await second_community(harness)
    street = harness.person(STREET_CHEN, language="en")
    message = of_kind(await street.send("/stats"), SendMessage)[0]
    assert "Jianshexiang" in text_of(message) and "Grid 3" in text_of(message)
    assert community_buttons(message) == ["🏘 Hepingli Community"]
    answer = await street.tap([message], "🏘 Hepingli Community")
    edited = of_kind(answer, EditMessageText)[0]
    assert "Hepingli" in edited.text and "Hepingli Grid 1" in edited.text and "received 1" in edited.text
    assert "Grid 3" not in edited.text and community_buttons(edited) == ["🏘 Jianshexiang Community"]
    document = of_kind(await street.press(stats_button(StatsAction.SPREADSHEET, community=heping)), SendDocument)
    assert document[0].document.filename == "hpl-2026-10.xlsx"
    assert of_kind(await street.press(stats_button(StatsAction.CHART, community=heping)), SendPhoto)

    # Each community's staff see their own community, with no way to the other's, forged buttons included.
    for staff, own, other, other_id in (
        (STAFF_WANG, "Grid 3", "Hepingli Grid 1", heping),
        (HEPING_STAFF, "Hepingli Grid 1", "Grid 3", 1),
    ):
        person = harness.person(staff, language="en")
        message = of_kind(await person.send("/stats"), SendMessage)[0]
        assert own in text_of(message) and other not in text_of(message) and community_buttons(message) == []
        for action in (StatsAction.SHOW, StatsAction.CHART, StatsAction.SPREADSHEET):
            answer = await person.press(stats_button(action, community=other_id))
            assert "only for community staff" in alert(answer)
            assert not of_kind(answer, EditMessageText) and not of_kind(answer, SendPhoto)
            assert not of_kind(answer, SendDocument)


async def test_a_grid_worker_of_the_second_community_sees_only_their_own_row(harness: Harness) -> None:
    heping = await second_community(harness)
    sun_fang = harness.person(SUN_FANG, language="en")
    message = of_kind(await sun_fang.send("/stats"), SendMessage)[0]
    text = text_of(message)
    assert "Your own figures" in text and "孙芳" in text and "received 1 · response 100%" in text
    assert "Grid 3" not in text and "李娟" not in text and community_buttons(message) == []
    answer = await sun_fang.press(stats_button(community=1))
    assert "only for community staff" in alert(answer) and not of_kind(answer, EditMessageText)
    # And the sample community's worker gets nothing of the second community.
    answer = await harness.person(LI_JUAN, language="en").press(stats_button(community=heping))
    assert "only for community staff" in alert(answer) and not of_kind(answer, EditMessageText)


# --- the street office ranks its communities --------------------------------------------------------------------
#
# October, hand-computed (now = 5 November):
# - 建设巷 (the sample's T1-T6, see test_stats): received 6, accepted in time 4, resolved in time 4, closed
#   confirmed 4, resolved once 5, reopened 1, rated 3 (5, 2, 4), overdue 1 (T6); to accept 1, 2, 5, 1, 11 h
#   (median 2 h), to resolve 10, 80, 20, 30, 36 h (median 30 h). Score (4/6 + 4/6 + 2/3) / 3 = 66.7.
# - 和平里: one lamp accepted after 1 h (of 4), never resolved (48 h are long over): received 1, accepted in time
#   1, overdue 1, nothing rated. Score (1 + 0) / 2 = 50.0.
# Both: received 7, accepted in time 5, resolved in time 4, closed 4, reopened 1 of 5, to accept 1, 1, 1, 2, 5,
# 11 h (median 1.5 h).
# In November 建设巷 has only T8, never accepted (score 0.0), and 和平里 one more lamp accepted in time (50.0):
# 和平里 climbs to first (↑1, +0.0), 建设巷 drops to second (↓1, -66.7).

RANKING = "🏆 Communities ranked"


def ranking_button(month: Month = OCTOBER) -> str:
    return stats_button(StatsAction.STREET, month=month, community=0)


async def heping_lamp_in_november(harness: Harness) -> None:
    clock = harness.clock
    now = clock.now
    clock.now = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
    filed = await report(harness.sessions, clock, HEPING_RESIDENT, code="lamp")
    clock.now += timedelta(hours=2)
    async with harness.sessions() as session:
        await tickets.accept(session, actor_id=SUN_FANG, ticket_id=filed.ticket.id, now=clock())
    clock.now = now


@pytest.mark.parametrize("summed", [False, True], ids=["counted from the tickets", "summed"])
async def test_the_street_office_ranks_its_communities_month_by_month(harness: Harness, summed: bool) -> None:
    await second_community(harness)
    await heping_lamp_in_november(harness)
    if summed:  # the statistics job has summed October in both communities: the same figures must show
        for at in (harness.clock(), harness.clock() + SETTLE):
            async with harness.sessions() as session:
                await summarise_months(session, at)
    street = harness.person(STREET_CHEN, language="en")
    message = of_kind(await street.send("/stats"), SendMessage)[0]
    assert RANKING in [label for label, _ in buttons_of(message)]

    answer = await street.tap([message], RANKING)
    ranked = of_kind(answer, EditMessageText)[0]
    text = ranked.text
    assert "Communities ranked</b> · 10/2026" in text and "As of 2026-11-05 10:00." in text
    assert (
        "<b>All your communities</b>\nreceived 7 · response 71% · in time 57% · resolved 57% · satisfied 67% "
        "(avg 3.7) · reopened 20% · to accept 1.5 h · to resolve 30 h · overdue 2"
    ) in text
    # Nothing was ranked in September: both are new.
    assert (
        "1. <b>Jianshexiang Community</b> new score 66.7\nreceived 6 · response 67% · in time 67% · resolved 67% "
        "· satisfied 67% (avg 3.7) · reopened 20% · to accept 2 h · to resolve 30 h · overdue 1"
    ) in text
    assert (
        "2. <b>Hepingli Community</b> new score 50.0\nreceived 1 · response 100% · in time 0% · resolved 0% "
        "· satisfied — (avg —) · reopened — · to accept 1 h · to resolve — · overdue 1"
    ) in text
    labels = [label for label, _ in buttons_of(ranked)]
    assert labels[:2] == ["◀ 9/2026", "11/2026 ▶"]
    assert "🏘 Jianshexiang Community" in labels and "🏘 Hepingli Community" in labels

    # A month on: the places and the score moved since October.
    november = of_kind(await street.tap([ranked], "11/2026 ▶"), EditMessageText)[0]
    assert "1. <b>Hepingli Community</b> ↑1 score 50.0 (+0.0)" in november.text
    assert "2. <b>Jianshexiang Community</b> ↓1 score 0.0 (-66.7)" in november.text
    assert "11/2026 ▶" not in str(buttons_of(november))  # the month still running is the last one

    # From the ranking to one community's own figures, for the same month, and back.
    answer = await street.tap([ranked], "🏘 Hepingli Community")
    own = of_kind(answer, EditMessageText)[0]
    assert "Hepingli Community" in own.text and "10/2026 · By grid" in own.text and "Hepingli Grid 1" in own.text
    assert RANKING in [label for label, _ in buttons_of(own)]

    # In Chinese.
    chen = harness.person(STREET_CHEN)
    text = of_kind(await chen.press(ranking_button()), EditMessageText)[0].text
    assert "社区排名" in text and "1. <b>建设巷社区</b> 新上榜 得分 66.7" in text and "2. <b>和平里社区</b>" in text


async def test_only_the_street_office_gets_the_ranking(harness: Harness) -> None:
    await second_community(harness)
    for user_id in (STAFF_WANG, HEPING_STAFF, LI_JUAN, SUN_FANG, R1):
        person = harness.person(user_id, language="en")
        answer = await person.send("/stats")
        assert RANKING not in [label for r in answer for label, _ in buttons_of(r)]
        answer = await person.press(ranking_button())
        assert "only for community staff" in alert(answer)
        assert not of_kind(answer, EditMessageText) and not of_kind(answer, SendMessage)
    # Refused in the domain, whatever calls it.
    async with harness.sessions() as session:
        with pytest.raises(AccessDenied):
            await street_stats(session, viewer_id=STAFF_WANG, month=OCTOBER, now=NOW)


async def test_each_community_counts_its_month_in_its_own_time_zone(harness: Harness) -> None:
    # 和平里 in London: a lamp reported at 20:00 UTC on 31 October is October's there (it is 1 November in
    # Beijing, where 建设巷 would count it in November).
    await second_community(harness, timezone="Europe/London")
    clock = harness.clock
    now = clock.now
    clock.now = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
    await report(harness.sessions, clock, HEPING_RESIDENT, code="lamp")
    clock.now = now
    async with harness.sessions() as session:
        october_ = await street_stats(session, viewer_id=STREET_CHEN, month=None, now=NOW)
    assert october_.month == OCTOBER  # the last month complete in both
    received = {row.name_en: row.figures.received for row in october_.rows}
    assert received == {"Jianshexiang Community": 6, "Hepingli Community": 2}
    async with harness.sessions() as session:
        november = await street_stats(session, viewer_id=STREET_CHEN, month=NOVEMBER, now=NOW)
    assert {row.name_en: row.figures.received for row in november.rows} == {
        "Jianshexiang Community": 1,
        "Hepingli Community": 0,
    }
    assert [row.rank for row in november.rows] == [1, None]  # without tickets, not ranked
