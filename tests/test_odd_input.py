"""Odd and hostile input through the real dispatcher, on SQLite and PostgreSQL: group chats, bot accounts, the
bot blocked and unblocked, forged ids past the database's range, buttons on messages Telegram no longer shows,
and text with NUL, control and invisible characters."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import AnswerCallbackQuery, GetMe, SendMessage, TelegramMethod
from aiogram.types import (
    CallbackQuery,
    Chat,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberUpdated,
    InaccessibleMessage,
    Message,
    Update,
    User,
)
from sqlalchemy import select

from bot.callbacks import FeedbackAction, FeedbackCb, TicketAction, TicketCb, TopicAction, TopicCb
from domain.text import TextEmpty, TextTooLong, clean, is_blank, required_text
from storage.models import EventKind, Ticket, TicketEvent, TicketStatus
from storage.models import User as UserRecord
from tests.fake_telegram import BOT_ID, text_of
from tests.harness import Harness
from tests.telegram_rules import request_problems
from tests.test_report_flow import LI_JUAN, STAFF_WANG, bind, events, file_report, texts, ticket

RESIDENT = 930001
GROUP = Chat(id=-1001234500001, type="supergroup", title="银巴小区业主群")
BOT = User(id=BOT_ID, is_bot=True, first_name="Feedback", username="feedback_test_bot")
GROUP_ANONYMOUS_BOT = User(id=1087968824, is_bot=True, first_name="Group", username="GroupAnonymousBot")
_ids = itertools.count(10**8)
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def person(user_id: int) -> User:
    return User(id=user_id, is_bot=False, first_name=f"user{user_id}", language_code="zh-hans")


async def in_group(harness: Harness, sender: User, text: str) -> list[TelegramMethod[Any]]:
    extra = {"sender_chat": GROUP} if sender.is_bot else {}
    message = Message(message_id=next(_ids), date=datetime.now(UTC), chat=GROUP, from_user=sender, text=text, **extra)
    return await harness.feed(Update(update_id=next(_ids), message=message))


def membership(chat: Chat, user: User, old: Any, new: Any) -> Update:
    change = ChatMemberUpdated(
        chat=chat, from_user=user, date=datetime.now(UTC), old_chat_member=old, new_chat_member=new
    )
    return Update(update_id=next(_ids), my_chat_member=change)


def only_the_way_to_the_private_chat(requests: list[TelegramMethod[Any]]) -> None:
    """One message, of one line, with one button: the link to the private chat (after getMe, asked once)."""
    [answer] = [r for r in requests if not isinstance(r, GetMe)]
    assert isinstance(answer, SendMessage) and answer.chat_id == GROUP.id
    assert "\n" not in answer.text and "#" not in answer.text
    assert answer.reply_markup is not None
    assert [[button.url for button in row] for row in answer.reply_markup.inline_keyboard] == [
        ["https://t.me/feedback_test_bot"]
    ]


def out_of_date(requests: list[TelegramMethod[Any]]) -> bool:
    return any(isinstance(r, AnswerCallbackQuery) and "过时" in (r.text or "") for r in requests)


# --- groups ------------------------------------------------------------------------------------------------


async def test_in_a_group_commands_get_the_way_to_the_private_chat_and_no_ticket_data(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "飞线充电", "1号楼2单元楼道里有人飞线充电")
    for user_id in (STAFF_WANG, LI_JUAN, RESIDENT):
        for command in ("/tickets", "/my", "/tickets@feedback_test_bot", "/ledger"):
            answer = await in_group(harness, person(user_id), command)
            only_the_way_to_the_private_chat(answer)
            assert f"#{number}" not in texts(answer) and "飞线" not in texts(answer)
    # The same people get their lists in private, as before.
    assert f"#{number}" in texts(await harness.person(STAFF_WANG).send("/tickets"))
    assert f"#{number}" in texts(await resident.send("/my"))


async def test_a_group_leaves_no_wizard_and_hears_nothing_it_did_not_ask_for(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    for command in ("/report", "/report@feedback_test_bot", "/suggest", "/newtopic"):
        only_the_way_to_the_private_chat(await in_group(harness, person(RESIDENT), command))
    assert await in_group(harness, person(RESIDENT), "/report@some_other_bot") == []
    assert await in_group(harness, person(RESIDENT), "楼道灯坏了") == [], "a group's talk is not a report"
    storage = harness.app.dispatcher.fsm.storage
    assert await storage.get_state(StorageKey(bot_id=BOT_ID, chat_id=GROUP.id, user_id=RESIDENT)) is None
    async with harness.sessions() as session:
        assert list(await session.scalars(select(Ticket))) == []
    # The private chat is untouched by it: no wizard there either, and /report still starts one.
    assert await storage.get_state(StorageKey(bot_id=BOT_ID, chat_id=RESIDENT, user_id=RESIDENT)) is None
    assert "类别" in texts(await resident.send("/report"))


async def test_a_button_pressed_in_a_group_gets_a_short_answer_only(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "路灯", "3号楼前的路灯不亮了")
    message = Message(message_id=next(_ids), date=datetime.now(UTC), chat=GROUP, from_user=BOT, text="…")
    data = TicketCb(action=TicketAction.HISTORY, ticket_id=number).pack()
    query = CallbackQuery(id="q", from_user=person(RESIDENT), chat_instance="g", data=data, message=message)
    [answer] = await harness.feed(Update(update_id=next(_ids), callback_query=query))
    assert isinstance(answer, AnswerCallbackQuery) and "私聊" in (answer.text or "")


async def test_messages_from_bot_accounts_get_no_handler_and_no_error(harness: Harness) -> None:
    # An anonymous group admin writes as GroupAnonymousBot: a command gets the way to the private chat.
    only_the_way_to_the_private_chat(await in_group(harness, GROUP_ANONYMOUS_BOT, "/report"))
    assert await in_group(harness, GROUP_ANONYMOUS_BOT, "大家好") == []
    # Another bot in a private chat (Telegram never sends this; a forged update may): silence.
    other = User(id=777000111, is_bot=True, first_name="Helper")
    chat = Chat(id=other.id, type="private")
    message = Message(message_id=next(_ids), date=datetime.now(UTC), chat=chat, from_user=other, text="/my")
    assert await harness.feed(Update(update_id=next(_ids), message=message)) == []
    async with harness.sessions() as session:
        assert await session.get(UserRecord, GROUP_ANONYMOUS_BOT.id) is None, "no record of bot accounts"


async def test_added_to_a_group_the_bot_says_once_where_reports_go(harness: Harness) -> None:
    added = membership(GROUP, person(STAFF_WANG), ChatMemberLeft(user=BOT), ChatMemberMember(user=BOT))
    answer = await harness.feed(added)
    only_the_way_to_the_private_chat(answer)
    assert "私聊" in texts(answer)
    removed = membership(GROUP, person(STAFF_WANG), ChatMemberMember(user=BOT), ChatMemberLeft(user=BOT))
    assert await harness.feed(removed) == []


async def test_blocking_the_bot_marks_the_person_unreachable_and_unblocking_clears_it(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    chat = Chat(id=RESIDENT, type="private")
    user = person(RESIDENT)
    assert (
        await harness.feed(membership(chat, user, ChatMemberMember(user=BOT), ChatMemberBanned(user=BOT, until_date=0)))
        == []
    )
    async with harness.sessions() as session:
        record = await session.get(UserRecord, RESIDENT)
        assert record is not None and record.unreachable_at is not None
    assert (
        await harness.feed(membership(chat, user, ChatMemberBanned(user=BOT, until_date=0), ChatMemberMember(user=BOT)))
        == []
    )
    async with harness.sessions() as session:
        record = await session.get(UserRecord, RESIDENT)
        assert record is not None and record.unreachable_at is None


# --- forged ids, old buttons -------------------------------------------------------------------------------


@pytest.mark.parametrize("forged_id", [2**31, 2**40, 2**63, 2**70])
async def test_a_button_with_an_id_past_the_database_range_is_out_of_date(harness: Harness, forged_id: int) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    worker = harness.person(LI_JUAN)
    for data in (
        f"t:o:{forged_id}",
        f"t:a:{forged_id}",
        f"t:y:{forged_id}",
        f"fb:r:{forged_id}:5",
        f"fb:r:1:{forged_id}",
        f"mt:j:{forged_id}",
        f"tp:o:{forged_id}:0",
        f"sv:{forged_id}:0",
        f"p:b:{forged_id}:0",
        f"c:{forged_id}",
        f"bc:p:agenda:{forged_id}",
        f"t:o:-{forged_id}",
    ):
        for pressing in (worker, resident):
            answer = await pressing.press(data)
            assert out_of_date(answer), (data, [text_of(r) for r in answer])


async def test_a_button_on_a_message_telegram_no_longer_shows_still_works(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "管道堵塞", "楼下下水道堵了")

    async def press_old(user_id: int, data: str) -> list[TelegramMethod[Any]]:
        old = InaccessibleMessage(chat=Chat(id=user_id, type="private"), message_id=7)  # older than 48 hours
        query = CallbackQuery(id=str(next(_ids)), from_user=person(user_id), chat_instance="c", data=data, message=old)
        return await harness.feed(Update(update_id=next(_ids), callback_query=query))

    card = await press_old(LI_JUAN, TicketCb(action=TicketAction.OPEN, ticket_id=number).pack())
    assert any(isinstance(r, SendMessage) and r.chat_id == LI_JUAN and "楼下下水道堵了" in r.text for r in card)
    accepted = await press_old(LI_JUAN, TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    assert (await ticket(harness, number)).status == TicketStatus.IN_PROGRESS, "the action still happens"
    assert any(isinstance(r, SendMessage) and "楼下下水道堵了" in r.text for r in accepted), "the card comes anew"
    prompt = await press_old(LI_JUAN, TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    assert "/cancel" in texts(prompt), "the typed step says what to type"
    history = await press_old(RESIDENT, TicketCb(action=TicketAction.HISTORY, ticket_id=number).pack())
    assert "楼下下水道堵了" in texts(history)
    refused = await press_old(RESIDENT, FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack())
    assert any(getattr(r, "show_alert", False) for r in refused), "not resolved yet: refused as before"
    topic = await press_old(STAFF_WANG, TopicCb(action=TopicAction.OPEN, topic_id=1).pack())
    assert any(getattr(r, "show_alert", False) for r in topic)


# --- clean text --------------------------------------------------------------------------------------------


def test_clean_strips_controls_and_blank_edges_and_keeps_what_shows() -> None:
    assert clean("\ufeff 漏水\x00了\x07\r\n第二行\t!\u200b ") == "漏水了\n第二行\t!"
    assert clean("👨\u200d👩\u200d👧 ❤️") == "👨\u200d👩\u200d👧 ❤️", "joiners and variation selectors do work"
    assert is_blank(" \n\t\u3000" + INVISIBLE + "\u00ad\u115f\u2800\u0301") and not is_blank("\u200ba")
    assert required_text("  x\x00 ", 1) == "x"
    with pytest.raises(TextEmpty):
        required_text("\x00 " + INVISIBLE, 10)
    with pytest.raises(TextTooLong):
        required_text("长" * 11, 10)


async def test_a_description_with_nul_and_invisible_characters_is_filed_clean(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "其他", "\u200b小区大门\x00的门禁\x1b坏了\ufeff")
    saved = await ticket(harness, number)
    assert saved.description == "小区大门的门禁坏了"
    delivered = await harness.deliver()
    assert delivered and not [problem for r in delivered for problem in request_problems(r)]
    assert any("小区大门的门禁坏了" in text_of(r) for r in delivered)


async def test_a_blank_description_keeps_the_resident_in_the_step(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    answer = await resident.tap(await resident.send("/report"), "路灯")
    answer = await resident.send(INVISIBLE + " \x00")
    assert "没有文字" in texts(answer)
    assert "照片" in texts(await resident.send("路灯不亮")), "the next text is the description"
    # Blank text typed outside any step opens no wizard.
    other = harness.person(RESIDENT + 1)
    await bind(other)
    assert "没有文字" in texts(await other.send("\u2060\u200b"))
    assert (
        await harness.app.dispatcher.fsm.storage.get_state(
            StorageKey(bot_id=BOT_ID, chat_id=other.id, user_id=other.id)
        )
        is None
    )


async def test_a_blank_progress_note_is_refused_and_the_worker_stays_in_the_step(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "管道堵塞", "楼下下水道堵了")
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await harness.deliver()
    await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    for blank in (" ", INVISIBLE, "\x00\t\u3000"):
        answer = await worker.send(blank)
        assert "没有文字" in texts(answer), texts(answer)
    answer = await worker.send_photo("progress-photo")  # a photo without a caption has no words either
    assert "没有文字" in texts(answer)
    assert [e for e in await events(harness, number) if e.kind == EventKind.NOTE] == []
    assert await harness.deliver() == [], "the resident is told nothing"
    answer = await worker.send("已联系物业\x00疏通")  # still in the step
    assert "已添加" in texts(answer) or "#" in texts(answer)
    [note] = [e for e in await events(harness, number) if e.kind == EventKind.NOTE]
    assert note.note == "已联系物业疏通"


async def test_blank_reasons_are_refused_everywhere_text_is_required(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await file_report(resident, "管道堵塞", "楼下下水道堵了")
    worker = harness.person(LI_JUAN)
    for action in (TicketAction.HAND_BACK, TicketAction.ESCALATE, TicketAction.DELIBERATE):
        await worker.press(TicketCb(action=action, ticket_id=number).pack())
        assert "没有文字" in texts(await worker.send(INVISIBLE)), action
        await worker.send("/cancel")
    assert "金点子" in texts(await resident.send("/suggest"))
    assert "没有文字" in texts(await resident.send("\u200b"))
    await resident.send("/cancel")
    kinds = {e.kind for e in await events(harness, number)}
    assert kinds == {EventKind.CREATED, EventKind.ROUTED}, "nothing changed"
    async with harness.sessions() as session:
        assert (await session.scalars(select(TicketEvent.note).where(TicketEvent.note != ""))).all() == []
