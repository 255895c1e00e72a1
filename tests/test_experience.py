"""The experience as residents and workers found it through a real client (issue 10, part 8), through the real
dispatcher on both backends: workers greeted as workers, photos first and their captions, the reporter told
about other households, surveys that are not open, refusals that point residents to their own commands, and the
Chinese wording of statuses, levels and actions."""

from __future__ import annotations

from aiogram.methods import SendMessage, SendPhoto
from sqlalchemy import select

from bot.callbacks import FeedbackAction, FeedbackCb, MeTooAction, MeTooCb, SurveyCb, TicketAction, TicketCb
from domain import deliberation
from storage.models import Ticket, TicketPhoto, TicketStatus
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, reply_buttons_of, sent_to, text_of
from tests.harness import Harness
from tests.households import verify
from tests.test_cards import edits
from tests.test_report_flow import LI_JUAN, STAFF_WANG, bind, file_report, texts, ticket

RESIDENT, NEIGHBOUR = 960001, 960002


async def only_ticket(harness: Harness) -> Ticket:
    async with harness.sessions() as session:
        [found] = list(await session.scalars(select(Ticket)))
        return found


async def test_workers_and_staff_are_greeted_as_such_with_their_menu(harness: Harness) -> None:
    for worker_id in (LI_JUAN, STAFF_WANG):
        answer = await harness.person(worker_id).send("/start")
        said = texts(answer)
        assert "办理居民反映的问题" in said and "/tickets" in said
        assert "住在哪里" not in said and "小区" not in said, "not asked where they live"
        assert "🗂 待办工单" in reply_buttons_of(answer[-1])


async def test_the_reporter_hears_of_another_household_joining_and_answering(harness: Harness) -> None:
    reporter, neighbour = harness.person(RESIDENT), harness.person(NEIGHBOUR)
    await bind(reporter)
    await bind(neighbour)
    await verify(neighbour)  # only a verified household joins and answers "Is it fixed?"
    number = await file_report(reporter, "管道", "楼下雨水管堵了")
    await harness.deliver()

    await neighbour.tap(await neighbour.send("/report"), "管道")
    await neighbour.press(MeTooCb(action=MeTooAction.JOIN, ticket_id=number).pack())
    delivered = await harness.deliver()
    [told] = sent_to(delivered, RESIDENT)
    assert f"#{number}" in text_of(told) and "又有一户" in text_of(told) and "2 户" in text_of(told)
    assert not sent_to(delivered, NEIGHBOUR), "the one who joined knows already"
    [card] = edits(sent_to(delivered, LI_JUAN))
    assert "受影响住户：2 户" in card.text, "the worker's card counts them"

    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通")
    await harness.deliver()
    await neighbour.press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack())
    [told] = [r for r in sent_to(await harness.deliver(), RESIDENT) if isinstance(r, SendMessage)]
    assert "另一户居民已确认问题解决，工单已关闭" in text_of(told)
    assert (await ticket(harness, number)).status == TicketStatus.CLOSED


async def test_photos_first_and_their_captions_are_kept(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    # A photo, with nothing before it, starts a report; its caption is the description.
    answer = await resident.send_photo("crack-1", caption="2单元楼梯间墙面开裂")
    assert "类别" in texts(answer) or "✅" in str(buttons_of(answer[-1]))
    answer = await resident.tap(answer, "楼道")
    assert "完成" in texts(answer), "the description is there already: on to more photos"
    answer = await resident.send_photo("crack-2", caption="裂缝在窗户旁边")
    assert "2" in texts(answer)
    summary = await resident.send("✅ 完成")
    await resident.tap(summary, "提交")
    saved = await only_ticket(harness)
    assert saved.description == "2单元楼梯间墙面开裂"
    async with harness.sessions() as session:
        photos = list(await session.scalars(select(TicketPhoto).order_by(TicketPhoto.id)))
    assert [(p.file_id, p.caption) for p in photos] == [("crack-1", ""), ("crack-2", "裂缝在窗户旁边")]
    # The worker sees each photo with what the resident wrote on it.
    album = [r for r in sent_to(await harness.deliver(), LI_JUAN) if not isinstance(r, SendMessage)]
    assert "裂缝在窗户旁边" in str(album)


async def test_a_photo_at_the_description_step_is_taken(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await resident.tap(await resident.send("/report"), "楼道")
    answer = await resident.send_photo("stairs-1")
    assert "照片已添加" in texts(answer) and "描述" in texts(answer), "kept, and asked for words"
    answer = await resident.send("楼道扶手松了，老人上下楼不安全")
    assert "完成" in texts(answer)
    summary = await resident.send("✅ 完成")
    assert "照片：1" in texts(summary)
    await resident.tap(summary, "提交")
    saved = await only_ticket(harness)
    assert saved.description.startswith("楼道扶手") and [p.file_id for p in saved.photos] == ["stairs-1"]
    photo = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendPhoto)]
    assert photo and photo[0].photo == "stairs-1"


async def test_an_agenda_button_for_a_survey_not_open_leads_on(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    async with harness.sessions() as session:
        topic = await deliberation.suggest(session, user_id=RESIDENT, text="在小区里建电动车充电棚", now=clock())
    answer = await resident.press(SurveyCb(topic_id=topic.id).pack())
    assert "没有正在进行的调研" in texts(answer) and "/suggest" in texts(answer)
    async with harness.sessions() as session:
        await deliberation.draft(
            session,
            actor_id=STAFF_WANG,
            topic_id=topic.id,
            title="充电棚选址",
            background="飞线充电屡禁不止",
            options=["1号楼北侧", "停车场东侧"],
            now=clock(),
        )
    answer = await resident.press(SurveyCb(topic_id=topic.id).pack())
    assert "充电棚选址" in texts(answer)
    assert "调研尚未开始" in texts(answer) and "邀请" in texts(answer) and "/suggest" in texts(answer)


async def test_a_residents_refusal_points_to_their_own_commands(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await verify(resident)  # so the button is refused as out of date, not for want of verification
    number = await file_report(resident, "管道", "楼下雨水管堵了")
    answer = await resident.press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack())
    assert "已过期" in texts(answer) and "/my" in texts(answer) and "/tickets" not in texts(answer)


async def test_statuses_levels_and_actions_read_right_in_chinese(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "管道", "楼下雨水管堵了")
    [card] = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert "⏳ 接单时限" in card.text and "响应时限" not in card.text
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.ESCALATE, ticket_id=number).pack())
    await worker.send("需要社区协调物业")
    [card] = [r for r in sent_to(await harness.deliver(), STAFF_WANG) if isinstance(r, SendMessage)]
    assert "当前层级：社区" in card.text
    labels = [label for label, _ in buttons_of(card)]
    assert "↩️ 转交他人" in labels and "⬇️ 退回下级" in labels
    assert len(set(labels)) == len(labels), "two actions never share a name"


async def test_help_shows_residents_their_commands_and_workers_theirs_too(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    said = texts(await resident.send("/help"))
    assert "/report" in said and "/my" in said
    assert "/tickets" not in said and "/ledger" not in said and "/topics" not in said
    said = texts(await harness.person(STAFF_WANG).send("/help"))
    assert "/report" in said and "/tickets" in said and "/ledger" in said
