"""The seven-step deliberation through the real dispatcher: staff's buttons and typed steps, residents' survey,
what reaches whom through the outbox, and forged or stale buttons refused without a change."""

from __future__ import annotations

from aiogram.methods import SendMessage
from sqlalchemy import func, select

from bot.callbacks import SurveyCb, TicketAction, TicketCb, TopicAction, TopicCb
from domain import deliberation as delib
from domain.community_file import import_community, loads_community
from domain.deliberation import propose_candidates
from storage.models import Building, Community, Compound, SurveyVote, Ticket, Topic, TopicStatus, TopicTask, User
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, sent_to
from tests.harness import Harness
from tests.households import verify_household
from tests.test_community_import import SMALL
from tests.test_escalation import LI_JUAN, STAFF_LIU, STAFF_WANG, alerted, file, speak_english, texts
from tests.test_routing import resident_in

RESIDENT, FAR_AWAY = 900200, 900401
OTHER_STAFF, OTHER_RESIDENT = 700001, 900402  # of a second community, 测试社区


def topic_button(action: TopicAction, topic_id: int, task_id: int = 0) -> str:
    return TopicCb(action=action, topic_id=topic_id, task_id=task_id).pack()


async def topic_of(harness: Harness, topic_id: int) -> Topic:
    async with harness.sessions() as session:
        found = await session.get(Topic, topic_id)
        assert found is not None
        return found


async def votes(harness: Harness) -> int:
    async with harness.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SurveyVote)) or 0)


async def test_from_a_ticket_to_the_public_notice(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, LI_JUAN, STAFF_WANG, STAFF_LIU)
    number = await file(harness, clock, code="flying-lead")
    await harness.deliver()
    worker, staff, resident = (harness.person(i, language="en") for i in (LI_JUAN, STAFF_WANG, RESIDENT))

    card = await worker.press(TicketCb(action=TicketAction.OPEN, ticket_id=number).pack())
    prompt = await worker.tap(card, "Needs deliberation")
    assert "need the monthly deliberation" in texts(prompt)
    done = await worker.send("充电桩选址要全体居民商量 <b>")
    assert "taken to the monthly deliberation" in texts(done)
    async with harness.sessions() as session:
        ticket = await session.get(Ticket, number)
        assert ticket is not None and ticket.topic_id is not None
        topic_id = ticket.topic_id
    told = [r for r in await harness.deliver() if isinstance(r, SendMessage)]  # not the card's edit
    assert {r.chat_id for r in told} == {STAFF_WANG, STAFF_LIU}
    assert "A new topic was raised" in texts(told) and "&lt;b&gt;" in texts(told)

    # Staff of another community, not staff, a stale step, a topic that does not exist: refused, nothing changes.
    async with harness.sessions() as session:
        await import_community(session, loads_community(SMALL.replace("100001", str(OTHER_STAFF))), clock())
    other_staff = harness.person(OTHER_STAFF, language="en")
    assert alerted(await other_staff.press(topic_button(TopicAction.DRAFT, topic_id)))
    assert alerted(await other_staff.press(topic_button(TopicAction.OPEN, topic_id)))
    assert "No topics yet" in texts(await other_staff.send("/topics"))
    assert alerted(await resident.press(topic_button(TopicAction.OPEN_SURVEY, topic_id)))
    assert alerted(await worker.press(topic_button(TopicAction.DRAFT, topic_id)))
    assert alerted(await staff.press(topic_button(TopicAction.RECORD_VOTE, topic_id)))
    assert alerted(await staff.press(topic_button(TopicAction.OPEN, 9999)))
    assert (await topic_of(harness, topic_id)).status == TopicStatus.COLLECTED

    listing = await staff.send("/topics")
    assert f"Topic #{topic_id}" in texts(listing)
    opened = await staff.tap(listing, f"#{topic_id}")
    assert "Ticket #" in texts(opened) and "taken to deliberation" in texts(opened)
    await staff.tap(opened, "Write the draft")
    await staff.send("/cancel")  # /cancel always works, and nothing was saved
    assert (await topic_of(harness, topic_id)).status == TopicStatus.COLLECTED
    await staff.tap(opened, "Write the draft")
    await staff.send("银巴小区电动车充电棚选址")
    await staff.send("楼道飞线充电反复出现，存在火灾隐患。")
    assert "Please send 2 to 6 options" in texts(await staff.send("只有一个"))
    assert "is drafted" in texts(await staff.send("3号楼东侧\n小区南门\n暂不建设"))
    opened = await staff.press(topic_button(TopicAction.OPEN, topic_id))
    assert "3. 暂不建设" in texts(opened)
    assert "The survey is open" in texts(await staff.tap(opened, "Open the survey"))
    # The residents in the topic's scope (its compound, 银巴小区) are asked, once, through the broadcast engine.
    [invitation] = await harness.deliver()
    assert invitation.chat_id == RESIDENT  # type: ignore[attr-defined]
    assert "银巴小区电动车充电棚选址" in texts([invitation]) and "3. 暂不建设" in texts([invitation])
    assert SurveyCb(topic_id=topic_id).pack() in [data for _, data in buttons_of(invitation)]

    await verify_household(harness.sessions, RESIDENT, clock())  # only verified households vote
    shown = await resident.press(SurveyCb(topic_id=topic_id).pack())
    assert "银巴小区电动车充电棚选址" in texts(shown) and "Tap an option to vote" in texts(shown)
    assert "your vote is counted" in texts(await resident.tap(shown, "小区南门"))
    changed = await resident.press(SurveyCb(topic_id=topic_id, option=0).pack())
    assert "Your household's vote: 3号楼东侧" in texts(changed)
    # Out of scope, out of range: refused, still one vote.
    await resident_in(harness.sessions, clock, FAR_AWAY, "chaoyang/1")
    async with harness.sessions() as session, session.begin():
        other_building = await session.scalar(
            select(Building.id).join(Compound).join(Community).where(Community.code == "t").limit(1)
        )
        session.add(User(id=OTHER_RESIDENT, full_name="resident", building_id=other_building, created_at=clock()))
    for outsider in (harness.person(FAR_AWAY, language="en"), harness.person(OTHER_RESIDENT, language="en")):
        assert alerted(await outsider.press(SurveyCb(topic_id=topic_id, option=0).pack()))
        assert alerted(await outsider.press(SurveyCb(topic_id=topic_id).pack()))
    assert alerted(await resident.press(SurveyCb(topic_id=topic_id, option=7).pack()))
    assert await votes(harness) == 1

    results = await staff.press(topic_button(TopicAction.RESULTS, topic_id))
    assert "1 votes" in texts(results) and "1. 3号楼东侧: 1" in texts(results)
    await staff.press(topic_button(TopicAction.RECORD_VOTE, topic_id))
    await staff.send("在小区南门建设充电棚")
    assert "three whole numbers" in texts(await staff.send("很多"))
    assert "is recorded" in texts(await staff.send("23 2 1"))
    assert alerted(await resident.press(SurveyCb(topic_id=topic_id, option=1).pack()))  # the survey closed
    told = await harness.deliver()
    assert [r.chat_id for r in told] == [RESIDENT]  # type: ignore[attr-defined]
    assert "The meeting has decided" in texts(told) and "23 for, 2 against, 1 abstaining" in texts(told)

    await staff.press(topic_button(TopicAction.ADD_TASK, topic_id))
    await staff.send("建设充电棚")
    await staff.send("鑫盛物业")
    assert "YYYY-MM-DD" in texts(await staff.send("下个月"))
    assert "Task added" in texts(await staff.send("2026-12-20"))
    assert "建设充电棚 — 鑫盛物业, due 2026-12-20: 0%" in texts(sent_to(await harness.deliver(), RESIDENT))
    async with harness.sessions() as session:
        task_id = await session.scalar(select(TopicTask.id).where(TopicTask.topic_id == topic_id))
    assert task_id is not None
    opened = await staff.press(topic_button(TopicAction.OPEN, topic_id))
    await staff.tap(opened, "Progress: 建设充电棚")
    assert "from 0 to 100" in texts(await staff.send("150"))
    await staff.send("60%")
    assert "Progress recorded" in texts(await staff.send("地基和顶棚完成"))
    told = sent_to(await harness.deliver(), RESIDENT)
    assert "地基和顶棚完成" in texts(told) and "60%" in texts(told)

    assert alerted(await staff.press(topic_button(TopicAction.NOTICE, topic_id)))  # feedback comes first
    await staff.press(topic_button(TopicAction.FEEDBACK, topic_id))
    assert "Publicly noticed" in texts(await staff.press(topic_button(TopicAction.NOTICE, topic_id)))
    assert "publicly noticed" in texts(sent_to(await harness.deliver(), RESIDENT))
    assert (await topic_of(harness, topic_id)).status == TopicStatus.NOTICED
    assert alerted(await staff.press(topic_button(TopicAction.PROGRESS, topic_id, task_id)))


async def test_suggestions_and_candidates_reach_staff(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, STAFF_WANG, STAFF_LIU)
    number = await file(harness, clock, code="flying-lead")
    resident, staff = harness.person(RESIDENT, language="en"), harness.person(STAFF_WANG, language="en")
    await harness.deliver()
    assert "Residents can send /suggest" in texts(await resident.send("/newtopic"))
    assert "only for community staff" in texts(await resident.send("/topics"))
    await resident.send("/suggest")
    assert "Thank you" in texts(await resident.send("在银巴小区南门加装充电桩"))
    told = await harness.deliver()
    assert "a resident's suggestion" in texts(sent_to(told, STAFF_LIU)) and "南门加装充电桩" in texts(told)

    # A forged "needs deliberation" from a resident is refused.
    assert alerted(await resident.press(TicketCb(action=TicketAction.DELIBERATE, ticket_id=number).pack()))
    for _ in range(2):
        await file(harness, clock, code="flying-lead")
    await harness.deliver()
    async with harness.sessions() as session:
        proposed = await propose_candidates(session, clock())
    told = await harness.deliver()
    assert "The bot proposes a topic" in texts(sent_to(told, STAFF_WANG))
    topic_id = proposed.proposed[0]
    opened = await staff.press(topic_button(TopicAction.OPEN, topic_id))
    assert "Proposed by the bot from 3 reports" in texts(opened)
    assert "Accepted" in texts(await staff.tap(opened, "Accept as a topic"))
    assert alerted(await staff.press(topic_button(TopicAction.ACCEPT, topic_id)))  # a second tap is stale
    assert (await topic_of(harness, topic_id)).status == TopicStatus.COLLECTED


async def test_topics_waiting_for_staff_go_in_one_message_until_it_is_sent(harness: Harness, clock: FakeClock) -> None:
    """After an outage, or a busy minute of the candidates job, a staff member gets one message listing the new
    topics, not one a second apart; what staff set aside meanwhile is left out."""
    await speak_english(harness, STAFF_WANG, STAFF_LIU)
    await file(harness, clock)
    await harness.deliver()
    ideas = ["在银巴小区南门加装充电桩", "三号楼前增设休息长椅 <i>", "小区东门加装路灯", "清理楼顶建筑垃圾"]
    topic_ids = []
    for idea in ideas:
        async with harness.sessions() as session:
            topic_ids.append((await delib.suggest(session, user_id=RESIDENT, text=idea, now=clock())).id)
    async with harness.sessions() as session:
        await delib.dismiss(session, actor_id=STAFF_LIU, topic_id=topic_ids[3], reason="重复", now=clock())

    told = [r for r in await harness.deliver() if isinstance(r, SendMessage)]
    assert len(sent_to(told, STAFF_WANG)) == 1 and len(sent_to(told, STAFF_LIU)) == 1
    (listing,) = sent_to(told, STAFF_WANG)
    assert "3 new topics wait for you" in texts([listing]) and "&lt;i&gt;" in texts([listing])
    assert ideas[3] not in texts([listing]), "the topic set aside before the message went"
    assert [data for _, data in buttons_of(listing)] == [topic_button(TopicAction.OPEN, i) for i in topic_ids[:3]]
    staff = harness.person(STAFF_WANG, language="en")
    assert "东门加装路灯" in texts(await staff.press(buttons_of(listing)[2][1]))

    async with harness.sessions() as session:  # the message went: the next topic is a message of its own
        await delib.suggest(session, user_id=RESIDENT, text="修补二号楼扶手", now=clock())
    (single,) = sent_to(await harness.deliver(), STAFF_WANG)
    assert "A new topic was raised" in texts([single]) and "修补二号楼扶手" in texts([single])
    assert [text for text, _ in buttons_of(single)] == ["📂 Open the topic"]
