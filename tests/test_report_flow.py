"""The core loop through the real dispatcher: a resident reports, the right grid worker gets it, works it,
and the resident hears about every step."""

from __future__ import annotations

import itertools
import re
from typing import Any

from aiogram.methods import SendMessage, SendPhoto, TelegramMethod
from sqlalchemy import select

from bot.callbacks import TicketAction, TicketCb
from storage.models import EventKind, Ticket, TicketEvent, TicketStatus, User
from tests.fake_telegram import buttons_of, sent_to, text_of
from tests.harness import Harness, Person

LI_JUAN, MA_LI, ZHANG_WEI = 200001, 200002, 200003  # grid 1: two primaries and a backup
YANG_MIN = 200011  # grid 2
STAFF_WANG, STAFF_LIU = 100001, 100002


def texts(requests: list[TelegramMethod[Any]]) -> str:
    return "\n".join(text_of(r) for r in requests)


async def bind(resident: Person, link: str = "jsx_yinba_1", unit: str = "2") -> None:
    answer = await resident.send(f"/start {link}")
    await resident.tap(answer, unit)


async def file_report(resident: Person, category: str, description: str, photos: int = 0) -> int:
    answer = await resident.send("/report")
    answer = await resident.tap(answer, category)
    await resident.send(description)
    for n in range(photos):
        await resident.send_photo(f"photo-{resident.id}-{n}")
    summary = await resident.send("✅ 完成")
    done = await resident.tap(summary, "提交")
    found = re.search(r"#(\d+)", texts(done))
    assert found, texts(done)
    return int(found.group(1))


async def ticket(harness: Harness, ticket_id: int) -> Ticket:
    async with harness.sessions() as session:
        found = await session.get(Ticket, ticket_id)
        assert found is not None
        return found


async def events(harness: Harness, ticket_id: int) -> list[TicketEvent]:
    async with harness.sessions() as session:
        return list(
            await session.scalars(
                select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
            )
        )


async def test_deep_link_binds_resident_to_building_and_unit(harness: Harness) -> None:
    resident = harness.person(900001, "张女士")
    answer = await resident.send("/start jsx_yinba_11")
    assert "单元" in texts(answer)
    answer = await resident.tap(answer, "2")
    assert "银巴小区 11号楼 2单元" in texts(answer)
    async with harness.sessions() as session:
        user = await session.get(User, 900001)
        assert user is not None and user.unit == 2 and user.building_id is not None


async def test_choosing_compound_building_unit_with_buttons(harness: Harness) -> None:
    resident = harness.person(900002)
    answer = await resident.send("/start")
    assert "银巴小区" in str(buttons_of(answer[-1]))
    answer = await resident.tap(answer, "幸福")  # the second compound of the sample
    answer = await resident.tap(answer, "2号楼")
    answer = await resident.tap(answer, "1")
    assert "2号楼 1单元" in texts(answer)


async def test_unknown_qr_code_offers_the_buttons(harness: Harness) -> None:
    resident = harness.person(900003)
    answer = await resident.send("/start jsx_nowhere_99")
    assert "银巴小区" in str([buttons_of(r) for r in answer])


async def test_report_reaches_least_loaded_grid_worker_with_a_full_card(harness: Harness) -> None:
    resident = harness.person(900004, "李先生")
    await bind(resident)
    answer = await resident.send("/report")
    answer = await resident.tap(answer, "飞线充电")
    answer = await resident.send("3单元窗户有飞线 <给电动车充电> & 很危险")
    assert "照片" in texts(answer)
    answer = await resident.send_photo("photo-a")
    assert "1" in texts(answer)
    await resident.send_location(38.47, 106.23)
    summary = await resident.send("✅ 完成")
    assert "&lt;给电动车充电&gt; &amp; 很危险" in texts(summary), "user text must be escaped in HTML"
    done = await resident.tap(summary, "提交")
    assert "#1" in texts(done)

    delivered = await harness.deliver()
    to_worker = sent_to(delivered, LI_JUAN)
    card = next(r for r in to_worker if isinstance(r, SendMessage))
    assert "#1" in card.text and "飞线充电" in card.text and "银巴小区 1号楼 2单元" in card.text
    assert "&lt;给电动车充电&gt;" in card.text
    assert "uri.amap.com" in card.text
    assert [label for label, _ in buttons_of(card)][:2] == ["✅ 接单", "↩️ 转交他人"]
    assert any(isinstance(r, SendPhoto) and r.photo == "photo-a" for r in to_worker)
    assert not sent_to(delivered, MA_LI), "only the chosen worker is told"

    saved = await ticket(harness, 1)
    assert saved.status == TicketStatus.ASSIGNED and saved.assignee_id == LI_JUAN
    routed = [e for e in await events(harness, 1) if e.kind == EventKind.ROUTED]
    assert routed[0].data["reason"] == "grid_worker" and routed[0].data["assignee"] == LI_JUAN

    # The next report in grid 1 goes to the other primary worker, who has fewer open tickets.
    neighbour = harness.person(900005)
    await bind(neighbour)
    second = await file_report(neighbour, "楼道扶手", "楼道没有扶手，老人上下楼不方便")
    assert (await ticket(harness, second)).assignee_id == MA_LI


async def test_worker_accepts_notes_and_resolves_and_resident_hears_each_step(harness: Harness) -> None:
    resident = harness.person(900006)
    await bind(resident)
    number = await file_report(resident, "管道堵塞", "楼下下水道堵了", photos=2)
    delivered = await harness.deliver()
    card = next(r for r in sent_to(delivered, LI_JUAN) if isinstance(r, SendMessage))
    worker = harness.person(LI_JUAN, "李娟")

    answer = await worker.tap([card], "接单")
    assert "已接单" in texts(answer) or "接单" in texts(answer)
    assert (await ticket(harness, number)).status == TicketStatus.IN_PROGRESS
    told = sent_to(await harness.deliver(), resident.id)
    assert len(told) == 1 and "李娟" in texts(told) and "接单" in texts(told)

    answer = await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    await worker.send_photo("progress-photo", caption="已联系物业疏通")
    told = sent_to(await harness.deliver(), resident.id)
    assert isinstance(told[0], SendPhoto) and told[0].photo == "progress-photo"
    assert "已联系物业疏通" in texts(told)

    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通，排水正常")
    told = sent_to(await harness.deliver(), resident.id)
    assert "已疏通，排水正常" in texts(told)
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.RESOLVED and saved.resolved_at is not None
    kinds = [e.kind for e in await events(harness, number)]
    assert kinds == ["created", "routed", "accepted", "note", "resolved"]

    # The resident's /my lists it, and its history tells the whole story.
    answer = await resident.send("/my")
    assert f"#{number}" in texts(answer) and "已办结（待确认）" in texts(answer)
    history = await resident.tap(answer, f"#{number}")
    assert "已疏通，排水正常" in texts(history) and "已联系物业疏通" in texts(history)


async def test_hand_back_goes_to_colleague_then_backup_then_staff(harness: Harness) -> None:
    resident = harness.person(900007)
    await bind(resident)
    number = await file_report(resident, "路灯", "3号楼前的路灯不亮了")
    await harness.deliver()
    chain = [LI_JUAN, MA_LI, ZHANG_WEI, STAFF_WANG, STAFF_LIU]
    for current, following in itertools.pairwise(chain):
        assert (await ticket(harness, number)).assignee_id == current
        worker = harness.person(current)
        await worker.press(TicketCb(action=TicketAction.HAND_BACK, ticket_id=number).pack())
        await worker.send(f"{current} 不在岗")
        delivered = await harness.deliver()
        card = next(r for r in sent_to(delivered, following) if isinstance(r, SendMessage))
        assert f"{current} 不在岗" in card.text, "the next person sees why it came to them"
    # The last staff member has nobody left to hand it to: a clear refusal, and the ticket stays.
    last = harness.person(STAFF_LIU)
    await last.press(TicketCb(action=TicketAction.HAND_BACK, ticket_id=number).pack())
    answer = await last.send("也不在岗")
    assert "没有其他人" in texts(answer)
    assert (await ticket(harness, number)).assignee_id == STAFF_LIU


async def test_forged_and_stale_buttons_are_refused_and_change_nothing(harness: Harness) -> None:
    resident = harness.person(900008)
    await bind(resident)
    number = await file_report(resident, "噪声", "夜里广场舞太吵")
    await harness.deliver()

    outsider = harness.person(YANG_MIN)  # a grid-2 worker forging a grid-1 ticket's button
    answer = await outsider.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    assert any(getattr(r, "show_alert", False) for r in answer)
    neighbour = harness.person(900009)
    await bind(neighbour)
    answer = await neighbour.press(TicketCb(action=TicketAction.HISTORY, ticket_id=number).pack())
    assert "夜里广场舞太吵" not in texts(answer)
    answer = await neighbour.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    assert any(getattr(r, "show_alert", False) for r in answer)
    answer = await neighbour.press("t:a:not-a-number")
    assert any(getattr(r, "show_alert", False) for r in answer)
    assert (await ticket(harness, number)).status == TicketStatus.ASSIGNED

    # Ma Li (same grid) may not accept a ticket that is assigned to Li Juan.
    answer = await harness.person(MA_LI).press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    assert any(getattr(r, "show_alert", False) for r in answer)
    # Li Juan accepts; pressing Accept again (a stale card) is refused politely.
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    answer = await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    assert "过时" in texts(answer)
    assert len([e for e in await events(harness, number) if e.kind == EventKind.ACCEPTED]) == 1


async def test_worker_sees_open_tickets_of_own_grids_only(harness: Harness) -> None:
    resident = harness.person(900010)
    await bind(resident)
    number = await file_report(resident, "停车", "消防通道被私家车占用")
    answer = await harness.person(MA_LI).send("/tickets")
    assert f"#{number}" in texts(answer)
    answer = await harness.person(YANG_MIN).send("/tickets")
    assert f"#{number}" not in texts(answer)
    answer = await harness.person(STAFF_WANG).send("/tickets")
    assert f"#{number}" in texts(answer)
    card = await harness.person(MA_LI).tap(await harness.person(MA_LI).send("/tickets"), f"#{number}")
    assert "消防通道被私家车占用" in texts(card)


async def test_double_submit_files_one_ticket(harness: Harness) -> None:
    resident = harness.person(900011)
    await bind(resident)
    answer = await resident.send("/report")
    answer = await resident.tap(answer, "其他")
    await resident.send("小区大门的门禁坏了")
    summary = await resident.send("✅ 完成")
    await resident.tap(summary, "提交")
    again = await resident.tap(summary, "提交")
    assert "已经" in texts(again), "a second Submit says the report was already sent"
    async with harness.sessions() as session:
        assert len(list(await session.scalars(select(Ticket)))) == 1
