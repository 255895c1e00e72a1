"""The monthly broadcasts: once per community, kind and period; who gets them; the schedule and its catch-up;
/settings and the staff's /broadcasts through the real dispatcher; 403s, and notices going before broadcasts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from bot.callbacks import BroadcastAction, BroadcastCb, SurveyCb
from domain.broadcasts import period_of, start_broadcast
from domain.community_file import import_community, loads_community
from domain.deliberation import open_survey
from scheduler.broadcasts import latest_fire_time, schedule_broadcasts, send_due_broadcasts
from scheduler.jobs import create_scheduler
from storage.db import SessionFactory
from storage.models import (
    Broadcast,
    BroadcastKind,
    Building,
    Community,
    Compound,
    OutboxMessage,
    Topic,
    TopicSource,
    TopicStatus,
    User,
)
from tests.conftest import FakeClock
from tests.fake_telegram import BLOCKED, SERVER_ERROR, TOO_MANY_REQUESTS, buttons_of, sent_to
from tests.harness import Harness
from tests.test_community_import import SMALL
from tests.test_escalation import LI_JUAN, STAFF_WANG, alerted, file, texts
from tests.test_routing import resident_in

NEIGHBOUR, OPTED_OUT, BLOCKED_IT, STAFF_ONLY = 900501, 900502, 900503, 900504
OTHER_STAFF = 700001
SHANGHAI = "Asia/Shanghai"
# 2026-11-25 09:00 in Shanghai: the sample community's agenda time, three days before the meeting on the 28th.
AGENDA_TIME = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
FEEDBACK_TIME = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)  # the 5th at 19:00


def community(meeting_day: int = 28) -> Community:
    return Community(code="x", name="x", timezone=SHANGHAI, meeting_day=meeting_day, meeting_time="19:30")


def local(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00")


def test_the_agenda_is_about_the_next_meeting_and_the_feedback_about_the_last() -> None:
    on_28th = community()
    assert period_of(on_28th, BroadcastKind.AGENDA, local("2026-11-25T09:00")) == "2026-11"
    assert period_of(on_28th, BroadcastKind.AGENDA, local("2026-11-28T08:00")) == "2026-11"  # the meeting day
    assert period_of(on_28th, BroadcastKind.AGENDA, local("2026-11-29T09:00")) == "2026-12"
    assert period_of(on_28th, BroadcastKind.AGENDA, local("2026-12-30T09:00")) == "2027-01"
    assert period_of(on_28th, BroadcastKind.FEEDBACK, local("2026-12-05T19:00")) == "2026-11"
    assert period_of(on_28th, BroadcastKind.FEEDBACK, local("2026-11-29T19:00")) == "2026-11"
    assert period_of(on_28th, BroadcastKind.FEEDBACK, local("2026-01-05T19:00")) == "2025-12"
    # Days count in the community's time zone: 2026-11-28 17:00 UTC is already the 29th in Shanghai.
    assert period_of(on_28th, BroadcastKind.AGENDA, datetime(2026, 11, 28, 17, 0, tzinfo=UTC)) == "2026-12"
    # A meeting on the 31st is on the last day of a shorter month.
    on_31st = community(meeting_day=31)
    assert period_of(on_31st, BroadcastKind.AGENDA, local("2027-02-28T09:00")) == "2027-02"
    assert period_of(on_31st, BroadcastKind.FEEDBACK, local("2027-03-01T19:00")) == "2027-02"


def test_latest_fire_time_within_the_grace_window() -> None:
    grace = timedelta(hours=12)
    on_time = AGENDA_TIME + timedelta(seconds=5)
    assert latest_fire_time("0 9 25 * *", SHANGHAI, on_time - grace, on_time) == AGENDA_TIME
    back_after_11_hours = AGENDA_TIME + timedelta(hours=11)
    assert latest_fire_time("0 9 25 * *", SHANGHAI, back_after_11_hours - grace, back_after_11_hours) == AGENDA_TIME
    too_late = AGENDA_TIME + timedelta(hours=13)
    assert latest_fire_time("0 9 25 * *", SHANGHAI, too_late - grace, too_late) is None
    assert latest_fire_time("0 9 25 * *", SHANGHAI, AGENDA_TIME - grace, AGENDA_TIME - timedelta(seconds=1)) is None


async def residents(session_factory: SessionFactory, clock: FakeClock) -> None:
    """Two who want broadcasts, one who turned them off, one who blocked the bot, and staff with no home."""
    for user_id in (NEIGHBOUR, OPTED_OUT, BLOCKED_IT):
        await resident_in(session_factory, clock, user_id, "yinba/11")
    async with session_factory() as session, session.begin():
        await session.execute(update(User).where(User.id == OPTED_OUT).values(broadcasts_off=True))
        await session.execute(update(User).where(User.id == BLOCKED_IT).values(unreachable_at=clock()))
        session.add(User(id=STAFF_ONLY, full_name="staff", created_at=clock()))


async def recipients(session_factory: SessionFactory) -> list[int]:
    async with session_factory() as session:
        rows = await session.scalars(
            select(OutboxMessage.chat_id).where(OutboxMessage.broadcast_id.is_not(None)).order_by(OutboxMessage.id)
        )
        return list(rows)


async def community_id(session_factory: SessionFactory, code: str = "jsx") -> int:
    async with session_factory() as session:
        found = await session.scalar(select(Community.id).where(Community.code == code))
        assert found is not None
        return found


async def test_a_broadcast_is_queued_once_for_the_residents_who_want_it(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await residents(session_factory, clock)
    await resident_in(session_factory, clock, 900505, "yinba/1")
    jsx = await community_id(session_factory)

    async with session_factory() as session:
        first = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    assert first.new and first.broadcast.recipients == 2
    assert sorted(await recipients(session_factory)) == [NEIGHBOUR, 900505]

    # A double trigger, and two processes at once: nothing more is queued, and nobody gets an error.
    async with session_factory() as session:
        again = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    assert not again.new and again.broadcast.id == first.broadcast.id

    async def start(kind: BroadcastKind) -> bool:
        async with session_factory() as session:
            return (await start_broadcast(session, jsx, kind, "2026-11", clock())).new

    assert sorted(await asyncio.gather(start(BroadcastKind.FEEDBACK), start(BroadcastKind.FEEDBACK))) == [False, True]
    assert len(await recipients(session_factory)) == 4
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Broadcast)) == 2


async def test_a_broadcast_a_crash_left_half_queued_is_finished_once(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await residents(session_factory, clock)
    for user_id, building in ((900505, "yinba/1"), (900506, "yinba/10")):
        await resident_in(session_factory, clock, user_id, building)
    jsx = await community_id(session_factory)
    async with session_factory() as session:
        started = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    assert started.broadcast.recipients == 3 and started.broadcast.queued_at is not None
    # Recipients are queued building by building, each batch committed with how far it got. A crash after the
    # first building's batch leaves this behind:
    queued = await recipients(session_factory)
    async with session_factory() as session, session.begin():
        homes = {user_id: home for user_id, home in await session.execute(select(User.id, User.building_id))}
        first = min(homes[chat_id] or 0 for chat_id in queued)
        later = [chat_id for chat_id, home in homes.items() if home != first]
        await session.execute(delete(OutboxMessage).where(OutboxMessage.chat_id.in_(later)))
        await session.execute(
            update(Broadcast).values(
                queued_through=first,
                queued_at=None,
                recipients=func.count().select().where(OutboxMessage.broadcast_id == Broadcast.id).scalar_subquery(),
            )
        )
    assert len(await recipients(session_factory)) < 3
    # At start-up (and every hour) the catch-up finishes it; staff pressing "send now" meanwhile neither
    # starts it again nor queues anyone twice.
    async with session_factory() as session:
        again = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    assert not again.new and again.broadcast.recipients == 3
    await send_due_broadcasts(session_factory, clock, timedelta(hours=12), lambda: None)
    assert sorted(await recipients(session_factory)) == sorted([NEIGHBOUR, 900505, 900506])
    async with session_factory() as session:
        [broadcast] = list(await session.scalars(select(Broadcast)))
    assert broadcast.recipients == 3 and broadcast.queued_at is not None


async def test_the_schedule_sends_on_time_catches_up_within_grace_and_never_twice(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await residents(session_factory, clock)
    woken: list[bool] = []
    grace = timedelta(hours=12)

    clock.now = AGENDA_TIME - timedelta(minutes=1)
    assert await send_due_broadcasts(session_factory, clock, grace, lambda: woken.append(True)) == []
    clock.now = AGENDA_TIME + timedelta(seconds=2)
    [agenda] = await send_due_broadcasts(session_factory, clock, grace, lambda: woken.append(True))
    assert (agenda.broadcast.kind, agenda.broadcast.period) == (BroadcastKind.AGENDA, "2026-11")
    assert agenda.broadcast.scheduled_for == AGENDA_TIME and woken == [True]
    # The hourly catch-up, a restart, a second process: the same run is not sent again.
    clock.advance(hours=1)
    assert await send_due_broadcasts(session_factory, clock, grace, lambda: woken.append(True)) == []

    # The bot was down at the feedback time and comes back 11 hours later: still sent, about November.
    clock.now = FEEDBACK_TIME + timedelta(hours=11)
    [feedback] = await send_due_broadcasts(session_factory, clock, grace, lambda: None)
    assert (feedback.broadcast.kind, feedback.broadcast.period) == (BroadcastKind.FEEDBACK, "2026-11")
    assert len(await recipients(session_factory)) == 2


async def test_a_run_missed_by_more_than_the_grace_window_is_left_to_staff(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await residents(session_factory, clock)
    clock.now = AGENDA_TIME + timedelta(hours=13)
    assert await send_due_broadcasts(session_factory, clock, timedelta(hours=12), lambda: None) == []
    assert await recipients(session_factory) == []


async def test_each_community_gets_its_crontab_in_its_time_zone(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    scheduler = create_scheduler()
    await schedule_broadcasts(scheduler, session_factory, clock, timedelta(hours=12), lambda: None)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {
        "broadcast-jsx-agenda",
        "broadcast-jsx-feedback",
        "broadcast-jsx-report",  # the office's monthly report (test_monthly_report.py)
        "broadcast-catch-up",
    }
    assert jobs["broadcast-jsx-agenda"].trigger.get_next_fire_time(None, clock()) == AGENDA_TIME
    assert jobs["broadcast-jsx-feedback"].trigger.get_next_fire_time(None, clock()) == datetime(
        2026, 11, 5, 11, 0, tzinfo=UTC
    )
    assert jobs["broadcast-jsx-report"].trigger.get_next_fire_time(None, clock()) == datetime(
        2026, 12, 1, 0, 0, tzinfo=UTC
    )


# --- through the dispatcher -------------------------------------------------------------------------------


async def drafted_topic(harness: Harness, clock: FakeClock, status: TopicStatus = TopicStatus.SURVEYED) -> int:
    jsx = await community_id(harness.sessions)
    async with harness.sessions() as session, session.begin():
        topic = Topic(
            community_id=jsx,
            status=status,
            source=TopicSource.STAFF,
            title="银巴小区电动车充电棚选址 <b>",
            background="楼道飞线充电反复出现，存在火灾隐患。",
            options=["东门停车场", "11号楼北侧"],
            created_at=clock(),
            updated_at=clock(),
        )
        session.add(topic)
        await session.flush()
        return topic.id


def broadcast_button(action: BroadcastAction, kind: str = BroadcastKind.AGENDA, broadcast_id: int = 0) -> str:
    return BroadcastCb(action=action, kind=kind, broadcast_id=broadcast_id).pack()


async def test_residents_turn_broadcasts_off_and_on(harness: Harness, clock: FakeClock) -> None:
    await resident_in(harness.sessions, clock, NEIGHBOUR, "yinba/11")
    neighbour = harness.person(NEIGHBOUR, language="en")
    shown = await neighbour.send("/settings")
    assert "<b>on</b>" in texts(shown)
    turned_off = await neighbour.tap(shown, "Turn off")
    assert "turned off" in texts(turned_off) and "<b>off</b>" in texts(turned_off)
    async with harness.sessions() as session:
        user = await session.get(User, NEIGHBOUR)
        assert user is not None and user.broadcasts_off
    staff = harness.person(STAFF_WANG, language="en")
    await staff.press(broadcast_button(BroadcastAction.SEND_NOW))
    assert sent_to(await harness.deliver(), NEIGHBOUR) == []

    turned_on = await neighbour.tap(await neighbour.send("/settings"), "Turn on")
    assert "<b>on</b>" in texts(turned_on)
    await staff.press(broadcast_button(BroadcastAction.SEND_NOW, BroadcastKind.FEEDBACK))
    assert "Execution feedback" in texts(sent_to(await harness.deliver(), NEIGHBOUR))


async def test_staff_preview_send_now_and_follow_progress(harness: Harness, clock: FakeClock) -> None:
    await resident_in(harness.sessions, clock, NEIGHBOUR, "yinba/11")
    await resident_in(harness.sessions, clock, BLOCKED_IT, "yinba/1")
    topic_id = await drafted_topic(harness, clock)
    staff = harness.person(STAFF_WANG, language="en")

    menu = await staff.send("/broadcasts")
    assert "Broadcasts to residents" in texts(menu)
    preview = await staff.tap(menu, "Preview the agenda")
    assert "Preview of the monthly agenda for 2026-11" in texts(preview)
    assert "2026-11-28 19:30" in texts(preview) and "社区党群服务中心二楼议事厅" in texts(preview)
    assert "银巴小区电动车充电棚选址 &lt;b&gt;" in texts(preview)
    assert await harness.deliver() == []  # a preview sends nothing to residents

    harness.telegram.fail_next(BLOCKED_IT, BLOCKED)
    queued = await staff.tap(preview, "Send it now")
    assert "Queued for 2 residents" in texts(queued)
    delivered = await harness.deliver()
    [agenda] = sent_to(delivered, NEIGHBOUR)
    # A Chinese client gets it in Chinese, with a survey button per topic and a way to turn it off.
    assert "每月一议事" in texts([agenda]) and "&lt;b&gt;" in texts([agenda])
    assert SurveyCb(topic_id=topic_id).pack() in [data for _, data in buttons_of(agenda)]

    again = await staff.press(broadcast_button(BroadcastAction.SEND_NOW))
    assert "never sent twice" in texts(again)
    assert await harness.deliver() == []

    progress = await staff.tap(queued, "Refresh")
    assert "Sent 1 · failed 1 · remaining 0 (of 2)" in texts(progress)
    assert "cannot reach 1 residents" in texts(progress) and "resident" in texts(progress)

    # The resident follows the agenda's survey button to the topic.
    survey = await harness.person(NEIGHBOUR).press(SurveyCb(topic_id=topic_id).pack())
    assert "11号楼北侧" in texts(survey)


async def test_broadcast_buttons_are_refused_to_others(harness: Harness, clock: FakeClock) -> None:
    await resident_in(harness.sessions, clock, NEIGHBOUR, "yinba/11")
    staff = harness.person(STAFF_WANG, language="en")
    await staff.press(broadcast_button(BroadcastAction.SEND_NOW))
    async with harness.sessions() as session:
        broadcast_id = await session.scalar(select(Broadcast.id))
    async with harness.sessions() as session:
        await import_community(session, loads_community(SMALL.replace("100001", str(OTHER_STAFF))), clock())

    resident = harness.person(NEIGHBOUR, language="en")
    assert "only for community staff" in texts(await resident.send("/broadcasts"))
    for action in BroadcastAction:
        assert alerted(await resident.press(broadcast_button(action, broadcast_id=broadcast_id or 0)))
    other_staff = harness.person(OTHER_STAFF, language="en")
    assert alerted(await other_staff.press(broadcast_button(BroadcastAction.PROGRESS, broadcast_id=broadcast_id or 0)))
    assert alerted(await staff.press(broadcast_button(BroadcastAction.PREVIEW, kind="nonsense")))
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Broadcast)) == 1


async def test_a_ticket_card_goes_out_before_a_queued_broadcast(harness: Harness, clock: FakeClock) -> None:
    async with harness.sessions() as session, session.begin():
        building = await session.scalar(select(Building.id).order_by(Building.id))
        await session.execute(
            insert(User),
            [
                {"id": 8_000_000 + n, "full_name": "居民", "building_id": building, "unit": 1, "created_at": clock()}
                for n in range(250)
            ],
        )
    async with harness.sessions() as session:
        started = await start_broadcast(
            session, await community_id(harness.sessions), BroadcastKind.AGENDA, "2026-11", clock()
        )
    assert started.broadcast.recipients == 250
    await file(harness, clock, code="light")  # a worker's card, queued after the broadcast
    delivered = await harness.deliver()
    assert len(delivered) > 250
    # Claimed in the first batch of 100, ahead of the 250 broadcast rows queued before it. (Within a batch
    # chats are served at once, so on PostgreSQL a few broadcast messages may finish before it.)
    card_at = next(n for n, request in enumerate(delivered) if getattr(request, "chat_id", None) == LI_JUAN)
    assert card_at < 100 and "工单 #" in texts(delivered[card_at : card_at + 1])


async def test_a_429_in_the_middle_of_a_broadcast_delays_and_never_doubles(harness: Harness, clock: FakeClock) -> None:
    await resident_in(harness.sessions, clock, NEIGHBOUR, "yinba/11")
    await resident_in(harness.sessions, clock, OPTED_OUT, "yinba/1")  # here simply a second resident
    harness.telegram.fail_next(NEIGHBOUR, TOO_MANY_REQUESTS, SERVER_ERROR)
    staff = harness.person(STAFF_WANG, language="en")
    queued = await staff.press(broadcast_button(BroadcastAction.SEND_NOW))
    # The 429, retry_after waited, then a 502. (Should the other resident's message go after the 502, Telegram
    # answers again and the row is due at once, without its backoff.)
    first = await harness.deliver()
    assert len(sent_to(first, OPTED_OUT)) == 1 and len(sent_to(first, NEIGHBOUR)) >= 2
    assert harness.sender_rate.waited == [7.0], "retry_after waited"
    clock.advance(seconds=5)  # the 502's backoff
    await harness.deliver()
    assert len(sent_to(harness.telegram.requests, NEIGHBOUR)) == 3  # 429, 502, and the one that arrived
    assert len(sent_to(harness.telegram.accepted, NEIGHBOUR)) == 1
    assert await harness.deliver() == []
    assert "Sent 2 · failed 0 · remaining 0 (of 2)" in texts(await staff.tap(queued, "Refresh"))


async def test_opening_a_survey_asks_the_residents_in_its_scope_once(harness: Harness, clock: FakeClock) -> None:
    await residents(harness.sessions, clock)  # NEIGHBOUR wants broadcasts, OPTED_OUT does not, both in 银巴小区
    await resident_in(harness.sessions, clock, 900506, "chaoyang/1")  # another compound
    topic_id = await drafted_topic(harness, clock, status=TopicStatus.DRAFTED)
    async with harness.sessions() as session, session.begin():
        topic = await session.get(Topic, topic_id)
        assert topic is not None
        topic.compound_ids = list(await session.scalars(select(Compound.id).where(Compound.code == "yinba")))
    staff = harness.person(STAFF_WANG, language="en")
    async with harness.sessions() as session:
        await open_survey(session, actor_id=STAFF_WANG, topic_id=topic_id, now=clock())
    assert await recipients(harness.sessions) == [NEIGHBOUR]
    [invitation] = await harness.deliver()
    assert invitation.chat_id == NEIGHBOUR  # type: ignore[attr-defined]
    assert "议前调研" in texts([invitation]) and "东门停车场" in texts([invitation])
    # Staff follow it like the monthly ones; it cannot be sent again by hand.
    async with harness.sessions() as session:
        survey_id = await session.scalar(select(Broadcast.id).where(Broadcast.kind == BroadcastKind.SURVEY))
    progress = await staff.press(broadcast_button(BroadcastAction.PROGRESS, BroadcastKind.SURVEY, survey_id or 0))
    assert f"survey invitation t{topic_id}" in texts(progress)
    assert "Sent 1 · failed 0 · remaining 0 (of 1)" in texts(progress)
    assert alerted(await staff.press(broadcast_button(BroadcastAction.SEND_NOW, BroadcastKind.SURVEY)))


async def test_the_agenda_offers_each_resident_the_surveys_they_may_take(harness: Harness, clock: FakeClock) -> None:
    await resident_in(harness.sessions, clock, NEIGHBOUR, "yinba/11")
    await resident_in(harness.sessions, clock, 900506, "chaoyang/1")
    narrowed = await drafted_topic(harness, clock)
    everyone = await drafted_topic(harness, clock)
    async with harness.sessions() as session, session.begin():
        topic = await session.get(Topic, narrowed)
        assert topic is not None
        topic.compound_ids = list(await session.scalars(select(Compound.id).where(Compound.code == "yinba")))
    await harness.person(STAFF_WANG, language="en").press(broadcast_button(BroadcastAction.SEND_NOW))
    delivered = await harness.deliver()
    [inside] = sent_to(delivered, NEIGHBOUR)
    [outside] = sent_to(delivered, 900506)
    # Both read the whole agenda; only the resident of 银巴小区 gets the button of the topic about 银巴小区.
    assert texts([inside]) == texts([outside]) and texts([inside]).count("充电棚选址") == 2
    survey = {SurveyCb(topic_id=t).pack(): t for t in (narrowed, everyone)}
    assert {survey[d] for _, d in buttons_of(inside) if d in survey} == {narrowed, everyone}
    assert {survey[d] for _, d in buttons_of(outside) if d in survey} == {everyone}
