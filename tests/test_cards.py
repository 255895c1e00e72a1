"""Cards kept current (domain/cards.py), through the real dispatcher and the outbox on both backends: every copy
of a ticket's card is edited when the ticket changes, a button that no longer applies is refused when pressed,
and edits Telegram has no use for are done, not failed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiogram.methods import EditMessageText, SendMessage, TelegramMethod
from sqlalchemy import select

from bot.callbacks import FeedbackAction, FeedbackCb, TicketAction, TicketCb
from domain.outbox import Notice
from domain.sweep import sweep
from storage.models import OutboxMessage, OutboxStatus, TicketCardCopy
from tests.conftest import FakeClock
from tests.fake_telegram import ScriptedError, buttons_of, sent_to
from tests.harness import Harness
from tests.households import verify
from tests.test_report_flow import LI_JUAN, STAFF_WANG, bind, file_report, texts, ticket
from tests.test_text_steps import state_of

RESIDENT = 950001
NOT_MODIFIED = ScriptedError(
    400,
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message",
)
GONE = ScriptedError(400, "Bad Request: message to edit not found")


async def copies(harness: Harness, number: int) -> set[tuple[int, int]]:
    async with harness.sessions() as session:
        rows = await session.execute(
            select(TicketCardCopy.chat_id, TicketCardCopy.message_id).where(TicketCardCopy.ticket_id == number)
        )
        return {(chat_id, message_id) for chat_id, message_id in rows}


def edits(requests: list[TelegramMethod[Any]]) -> list[EditMessageText]:
    return [r for r in requests if isinstance(r, EditMessageText)]


def actions(request: TelegramMethod[Any]) -> set[str]:
    return {TicketCb.unpack(data).action for _label, data in buttons_of(request) if data.startswith("t:")}


async def reported(harness: Harness) -> int:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await verify(resident)  # a verified household: it may close the ticket with "Yes"
    number = await file_report(resident, "管道", "楼下雨水管堵了")
    await harness.deliver()  # Li Juan's card: the first copy
    return number


async def test_every_copy_of_a_card_follows_the_ticket(harness: Harness) -> None:
    number = await reported(harness)
    worker, staff = harness.person(LI_JUAN), harness.person(STAFF_WANG)
    await worker.tap(await worker.send("/tickets"), f"#{number}")  # opened again from the list
    await staff.tap(await staff.send("/tickets"), f"#{number}")  # and by community staff
    recorded = await copies(harness, number)
    assert len(recorded) == 3 and {chat for chat, _ in recorded} == {LI_JUAN, STAFF_WANG}

    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    edited = edits(await harness.deliver())
    assert {(e.chat_id, e.message_id) for e in edited} == recorded
    for edit in edited:
        assert "处理中" in edit.text and {TicketAction.NOTE, TicketAction.RESOLVE} <= actions(edit)
        assert TicketAction.ACCEPT not in actions(edit)

    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通")
    edited = edits(await harness.deliver())
    assert {(e.chat_id, e.message_id) for e in edited} == recorded
    for edit in edited:
        assert "已办结（待确认）" in edit.text
        assert actions(edit) == {TicketAction.HISTORY}, "nothing left to press but History"

    await harness.person(RESIDENT).press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack())
    edited = [e for e in edits(await harness.deliver()) if e.chat_id != RESIDENT]  # theirs asked "Is it fixed?"
    assert {(e.chat_id, e.message_id) for e in edited} == recorded
    assert all("已关闭" in e.text for e in edited)
    assert await copies(harness, number) == set(), "closed for good: nothing more to keep current"


async def test_a_hand_back_takes_the_buttons_off_the_old_card_and_sends_the_new_one(harness: Harness) -> None:
    number = await reported(harness)
    [(_, first_card)] = await copies(harness, number)
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.HAND_BACK, ticket_id=number).pack())
    await worker.send("我这周休假")
    delivered = await harness.deliver()
    [edit] = edits(sent_to(delivered, LI_JUAN))
    assert edit.message_id == first_card and actions(edit) == {TicketAction.HISTORY}
    new_cards = [r for r in delivered if isinstance(r, SendMessage) and TicketAction.ACCEPT in actions(r)]
    assert len(new_cards) == 1 and new_cards[0].chat_id != LI_JUAN
    assert len(await copies(harness, number)) == 2, "the new holder's card is kept current too"


async def test_a_button_that_no_longer_applies_is_refused_before_any_text(harness: Harness) -> None:
    number = await reported(harness)
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通")
    for action in (TicketAction.NOTE, TicketAction.RESOLVE, TicketAction.HAND_BACK):
        answer = await worker.press(TicketCb(action=action, ticket_id=number).pack())
        assert "已过时" in texts(answer) and any(getattr(r, "show_alert", False) for r in answer), action
        assert not [r for r in answer if isinstance(r, SendMessage)], "no prompt"
        assert await state_of(harness, worker) is None


async def test_edits_telegram_has_no_use_for_are_done_not_failed(harness: Harness) -> None:
    number = await reported(harness)
    worker = harness.person(LI_JUAN)
    await worker.tap(await worker.send("/tickets"), f"#{number}")
    await worker.tap(await worker.send("/tickets"), f"#{number}")
    assert len(await copies(harness, number)) == 3
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    # The first copy already reads so; the second the worker deleted; the third Telegram refuses for good.
    harness.telegram.fail_next(LI_JUAN, NOT_MODIFIED, GONE, ScriptedError(400, "Bad Request: chat not found"))
    await harness.deliver()
    async with harness.sessions() as session:
        rows = list(
            await session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == Notice.CARD_EDIT).order_by(OutboxMessage.id)
            )
        )
    assert [(row.status, row.error) for row in rows] == [
        (OutboxStatus.SENT, ""),
        (OutboxStatus.SENT, ""),
        (OutboxStatus.FAILED, "400: Bad Request: chat not found"),
    ]
    deleted = (LI_JUAN, rows[1].payload["message_id"])
    assert deleted not in await copies(harness, number), "a message Telegram no longer has is forgotten at once"
    assert len(await copies(harness, number)) == 2

    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通")
    edited = edits(sent_to(await harness.deliver(), LI_JUAN))
    assert deleted not in {(e.chat_id, e.message_id) for e in edited} and len(edited) == 2, "and never edited again"


async def test_a_deadline_reminder_follows_the_ticket_like_its_card(harness: Harness, clock: FakeClock) -> None:
    number = await reported(harness)
    saved = await ticket(harness, number)
    assert saved.respond_by is not None
    # A fifth of the time to accept is left: Li Juan is reminded, with the card's buttons.
    clock.now = saved.created_at + (saved.respond_by - saved.created_at) * 0.8
    async with harness.sessions() as session:
        assert (await sweep(session, clock())).reminded == [number]
    [reminder] = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert TicketAction.ACCEPT in actions(reminder)
    recorded = await copies(harness, number)
    assert len(recorded) == 2

    clock.now = saved.respond_by + timedelta(seconds=1)  # not accepted in time: passed to the grid's backup worker
    async with harness.sessions() as session:
        assert (await sweep(session, clock())).passed_on == [number]
    delivered = await harness.deliver()
    edited = edits(sent_to(delivered, LI_JUAN))
    assert {(e.chat_id, e.message_id) for e in edited} == recorded
    assert all(actions(e) == {TicketAction.HISTORY} for e in edited), "no Accept left for the one who lost it"
