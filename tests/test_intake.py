"""Incoming updates: recorded before Telegram is told they arrived, handled once, in order per user."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import CallbackQuery, Chat, Message, Update, User
from sqlalchemy import func, select

from bot.intake import MAX_RECOVERIES, HandledMark, InboxMarkMiddleware, UpdateInbox
from domain import tickets
from handlers.report import ReportWizard
from storage.models import FsmRecord, InboundUpdate, Ticket
from tests.conftest import FakeClock
from tests.fake_telegram import (
    BLOCKED,
    BOT_ID,
    SERVER_ERROR,
    ProcessDied,
    buttons_of,
    reply_buttons_of,
    sent_to,
    text_of,
)
from tests.harness import Harness
from tests.test_report_flow import bind

_ids = itertools.count(10_000)


def text_update(user_id: int, text: str) -> Update:
    user = User(id=user_id, is_bot=False, first_name=f"user{user_id}", language_code="zh-hans")
    chat = Chat(id=user_id, type="private")
    message = Message(message_id=next(_ids), date=datetime.now(UTC), chat=chat, from_user=user, text=text)
    return Update(update_id=next(_ids), message=message)


async def up_to_submit(harness: Harness, user_id: int, description: str) -> Update:
    """A resident's report wizard up to the summary; returns their Submit, not yet sent."""
    resident = harness.person(user_id)
    await bind(resident)
    answer = await resident.send("/report")
    await resident.tap(answer, "楼道杂物")
    await resident.send(description)
    await resident.send("✅ 完成")
    return text_update(user_id, "📨 提交")


def inbox_of(harness: Harness) -> UpdateInbox:
    return UpdateInbox(harness.bot, harness.app.dispatcher, harness.sessions, harness.app.sender.clock)


async def tickets_described(harness: Harness, description: str) -> int:
    async with harness.sessions() as session:
        return int(await session.scalar(select(func.count(Ticket.id)).where(Ticket.description == description)) or 0)


async def unhandled(harness: Harness) -> int:
    async with harness.sessions() as session:
        found = await session.scalar(
            select(func.count(InboundUpdate.update_id)).where(InboundUpdate.handled_at.is_(None))
        )
        return int(found or 0)


async def test_a_batch_records_only_the_updates_not_known_yet(harness: Harness) -> None:
    """One statement records a whole batch; what it returns is what was new, in Telegram's order."""
    first, second, third, fourth = (text_update(900310 + n, f"第{n}条") for n in range(4))
    inbox = inbox_of(harness)
    assert await inbox.record([second, first]) == [first, second]
    assert await inbox.record([second, fourth, first, third]) == [third, fourth], "the known ones are left out"
    async with harness.sessions() as session:
        recorded = await session.scalars(select(InboundUpdate).order_by(InboundUpdate.update_id))
        assert [(row.update_id, row.user_key, row.recoveries) for row in recorded] == [
            (u.update_id, 900310 + n, 0) for n, u in enumerate((first, second, third, fourth))
        ]


async def test_an_update_delivered_twice_is_handled_once(harness: Harness) -> None:
    submit = await up_to_submit(harness, 900300, "三楼楼道堆满纸箱")
    inbox = inbox_of(harness)
    assert [u.update_id for u in await inbox.record([submit])] == [submit.update_id]
    assert await inbox.record([submit]) == [], "Telegram sent it again: it is known already"
    for fresh in await inbox.record([submit]):
        inbox.submit(fresh)
    inbox.submit(submit)
    await inbox.drain(seconds=5)
    assert await inbox.record([submit]) == []
    assert await tickets_described(harness, "三楼楼道堆满纸箱") == 1
    assert await unhandled(harness) == 0


async def test_a_crash_after_the_commit_loses_nothing_and_repeats_nothing(harness: Harness, clock: FakeClock) -> None:
    submit = await up_to_submit(harness, 900301, "楼顶有建筑垃圾")
    inbox = inbox_of(harness)
    await inbox.record([submit])
    # The ticket is committed; the process dies while telling the resident.
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await inbox.handle(submit)
    assert await tickets_described(harness, "楼顶有建筑垃圾") == 1

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.recover() == 0, "handled in the ticket's own transaction"
    assert await again.record([submit]) == [], "delivered again by Telegram: known"
    assert await tickets_described(harness, "楼顶有建筑垃圾") == 1


async def test_a_crash_before_the_commit_is_handled_after_the_restart(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit = await up_to_submit(harness, 900302, "单元门口路灯不亮")
    inbox = inbox_of(harness)
    await inbox.record([submit])
    real_file_report = tickets.file_report

    async def die(*args: Any, **kwargs: Any) -> Any:
        raise ProcessDied()

    monkeypatch.setattr(tickets, "file_report", die)
    with pytest.raises(ProcessDied):
        await inbox.handle(submit)
    assert await tickets_described(harness, "单元门口路灯不亮") == 0
    monkeypatch.setattr(tickets, "file_report", real_file_report)

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.recover() == 1
    await again.drain(seconds=5)
    assert await tickets_described(harness, "单元门口路灯不亮") == 1
    async with harness.sessions() as session:
        number = await session.scalar(select(Ticket.id).where(Ticket.description == "单元门口路灯不亮"))
    replies = [text_of(r) for r in sent_to(restarted.telegram.requests, 900302)]
    assert any(f"#{number}" in reply for reply in replies), f"the resident is told the number: {replies}"
    assert await unhandled(harness) == 0
    assert await again.recover() == 0, "and not again"


async def test_a_crash_after_a_commit_that_only_read_is_handled_after_the_restart(
    harness: Harness, clock: FakeClock
) -> None:
    resident = harness.person(900303)
    await bind(resident)
    start = text_update(resident.id, "/my")
    inbox = inbox_of(harness)
    await inbox.record([start])
    # /my reads the resident's reports in a transaction of its own, then dies while answering.
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await inbox.handle(start)

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.recover() == 1, "a commit that only read does not count as handled"
    await again.drain(seconds=5)
    assert sent_to(restarted.telegram.requests, resident.id), "the answer comes after the restart"


async def test_a_change_the_commit_itself_flushes_carries_handled(harness: Harness, clock: FakeClock) -> None:
    """An object added and committed without a flush of its own is written by the commit, after its
    before-commit hooks ran: "handled" goes with it all the same, so a crash cannot make the change twice."""
    update = text_update(900304, "hello")
    await inbox_of(harness).record([update])
    mark = HandledMark(update.update_id)

    async def handler(_event: object, data: dict[str, Any]) -> None:
        session = data["session"]
        async with session.begin():
            session.add(FsmRecord(key="unflushed", state="x", data={}))
        assert mark.written, "handled in the change's own commit"

    async with harness.sessions() as session:
        await InboxMarkMiddleware()(handler, update, {"inbox_mark": mark, "session": session, "clock": clock})
    assert await unhandled(harness) == 0


async def test_updates_of_one_user_keep_their_order_and_users_run_concurrently(harness: Harness) -> None:
    inbox = inbox_of(harness)
    residents = [900310 + n for n in range(6)]
    for resident in residents:
        await bind(harness.person(resident))
    # Each resident's whole wizard at once: it only files a ticket if its steps run in order.
    steps = ["/report", None, "飞线充电", "✅ 完成", "📨 提交"]
    category = await category_button(harness, residents[0])
    batches = [
        [text_update(r, text) if text is not None else press(harness, r, category) for text in steps] for r in residents
    ]
    # One resident's reply is held up until another's arrives: were users run one after another, this would hang.
    held = asyncio.Event()
    record = harness.telegram.make_request

    async def make_request(bot: Any, method: Any, timeout: int | None = None) -> Any:  # noqa: ASYNC109
        chat_id = getattr(method, "chat_id", None)
        if chat_id == residents[0] and not held.is_set():
            await asyncio.wait_for(held.wait(), 5)
        if chat_id == residents[1]:
            held.set()
        return await record(bot, method, timeout)

    harness.telegram.make_request = make_request  # type: ignore[method-assign]
    for update_ in itertools.chain(*zip(*batches, strict=True)):  # interleaved, as Telegram would mix them
        inbox.submit(update_)
    await inbox.drain(seconds=10)
    for resident in residents:
        async with harness.sessions() as session:
            filed = await session.scalar(select(func.count(Ticket.id)).where(Ticket.reporter_id == resident))
        assert filed == 1, resident


async def test_nothing_is_confirmed_to_telegram_before_it_is_recorded(harness: Harness) -> None:
    inbox = inbox_of(harness)
    first, second = text_update(900320, "/help"), text_update(900321, "/help")
    harness.telegram.unconfirmed = [first, second]
    record = inbox.record
    failures = iter([True])

    async def record_or_fail(updates: Any) -> Any:
        if next(failures, False):
            raise RuntimeError("database unavailable")
        return await record(updates)

    inbox.record = record_or_fail  # type: ignore[method-assign]
    stop = asyncio.Event()
    polling = asyncio.create_task(inbox.poll(stop, polling_timeout=0))
    for _ in range(500):
        if second.update_id + 1 in harness.telegram.offsets:
            break
        await asyncio.sleep(0.01)
    stop.set()
    polling.cancel()
    await asyncio.gather(polling, return_exceptions=True)
    offsets = harness.telegram.offsets
    # The first batch could not be recorded: the next request confirmed nothing and got it all again.
    assert offsets[:2] == [None, None], offsets
    assert second.update_id + 1 in offsets
    await inbox.drain(seconds=5)
    answered = {r.chat_id for r in harness.telegram.requests if hasattr(r, "chat_id")}
    assert {900320, 900321} <= answered


async def category_button(harness: Harness, resident: int) -> str:
    answer = await harness.person(resident).send("/report")
    for request in answer:
        markup = getattr(request, "reply_markup", None)
        for row in getattr(markup, "inline_keyboard", None) or []:
            for button in row:
                if "楼道杂物" in button.text:
                    await harness.person(resident).send("/cancel")
                    return str(button.callback_data)
    raise AssertionError("no category button")


def press(harness: Harness, user_id: int, data: str) -> Update:
    user = User(id=user_id, is_bot=False, first_name=f"user{user_id}", language_code="zh-hans")
    chat = Chat(id=user_id, type="private")
    bot_message = Message(
        message_id=next(_ids), date=datetime.now(UTC), chat=chat, from_user=User(id=BOT_ID, is_bot=True, first_name="b")
    )
    query = CallbackQuery(id=str(next(_ids)), from_user=user, chat_instance="t", data=data, message=bot_message)
    return Update(update_id=next(_ids), callback_query=query)


async def test_restarts_that_die_before_an_update_is_handled_do_not_set_it_aside(
    harness: Harness, clock: FakeClock
) -> None:
    submit = await up_to_submit(harness, 900304, "二楼扶手松动")
    await inbox_of(harness).record([submit])
    # The process dies right after recording; so do the next five, each before it came to the update.
    for _ in range(5):
        starting = inbox_of(Harness(harness.sessions, clock))
        starting.handle = _never  # type: ignore[method-assign]
        assert await starting.recover() == 1
    restarted = inbox_of(Harness(harness.sessions, clock))
    assert await restarted.recover() == 1, "still waiting to be handled, not set aside"
    await restarted.drain(seconds=5)
    assert await tickets_described(harness, "二楼扶手松动") == 1


async def test_an_update_that_keeps_crashing_the_bot_is_set_aside(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit = await up_to_submit(harness, 900305, "楼道灯一直闪")

    async def die(*args: Any, **kwargs: Any) -> Any:
        raise ProcessDied()

    monkeypatch.setattr(tickets, "file_report", die)
    await inbox_of(harness).record([submit])
    crashes = 0
    while True:
        restarted = inbox_of(Harness(harness.sessions, clock))
        restarted.submit = lambda update, **_: None  # type: ignore[method-assign]  # handled by hand below
        if not await restarted.recover():
            break
        with pytest.raises(ProcessDied):
            await restarted.handle(submit, HandledMark(submit.update_id, recovered=True))
        crashes += 1
    assert crashes == MAX_RECOVERIES, "each restart tried it once more, then it was set aside"
    assert await unhandled(harness) == 0


async def _never(*_args: Any, **_kwargs: Any) -> None:
    await asyncio.Event().wait()


async def test_a_step_is_saved_before_the_bot_answers_it(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(900306)
    await bind(resident)
    report = text_update(resident.id, "/report")
    inbox = inbox_of(harness)
    await inbox.record([report])
    # Telegram takes the wizard's first question; the process dies before it hears back (or while it retries).
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await inbox.handle(report)

    restarted = Harness(harness.sessions, clock)
    assert await inbox_of(restarted).recover() == 0, "saved, and counted handled, before the bot spoke"
    key = StorageKey(bot_id=BOT_ID, chat_id=resident.id, user_id=resident.id)
    assert await restarted.app.dispatcher.storage.get_state(key) == ReportWizard.category.state
    answer = await restarted.person(resident.id).send("楼道杂物")  # the resident answers the question they saw
    assert any("楼道杂物" in text_of(r) for r in sent_to(answer, resident.id)), "the wizard goes on"


async def test_a_crash_during_recovery_counts_only_against_the_update_under_way(
    harness: Harness, clock: FakeClock
) -> None:
    updates = [text_update(900400 + n, "/help") for n in range(5)]  # five people, one message each
    await inbox_of(harness).record(updates)

    starting = inbox_of(Harness(harness.sessions, clock))
    started: list[int] = []

    async def stuck(_bot: object, update: Update, **_kwargs: object) -> None:
        started.append(update.update_id)
        await asyncio.Event().wait()  # the process is killed while it handles this one

    starting.dispatcher.feed_update = stuck  # type: ignore[method-assign]
    assert await starting.recover() == 5
    for _ in range(500):  # until the first has begun (a round trip to PostgreSQL on a busy machine), then a while
        if started:
            break
        await asyncio.sleep(0.01)
    for _ in range(20):
        await asyncio.sleep(0.01)
    async with harness.sessions() as session:
        counted = list(await session.scalars(select(InboundUpdate.update_id).where(InboundUpdate.recoveries > 0)))
    assert started == counted == [updates[0].update_id], "the other four had not begun"


def lose_the_next_answer(harness: Harness) -> None:
    """The process dies as it begins to answer: the update's change is committed, Telegram gets nothing."""

    async def dies(*_args: Any, **_kwargs: Any) -> Any:
        raise ProcessDied()

    harness.telegram.make_request = dies  # type: ignore[method-assign]


async def test_an_answer_lost_in_a_crash_is_given_after_the_restart(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(900500)
    await bind(resident)
    report = text_update(resident.id, "/report")
    inbox = inbox_of(harness)
    await inbox.record([report])
    lose_the_next_answer(harness)
    with pytest.raises(ProcessDied):
        await inbox.handle(report)

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.resume() == 1, "handled (the wizard is open), never answered"
    assert await again.recover() == 0
    await again.drain(seconds=5)
    await again.write_marks()
    asked = sent_to(restarted.telegram.requests, resident.id)
    assert any("楼道杂物" in text for r in asked for text, _ in buttons_of(r)), "the category question, with buttons"
    assert await inbox_of(restarted).resume() == 0, "said once"

    # The resident answers the question they now see; the wizard goes on from where it was saved.
    answer = await restarted.person(resident.id).tap(asked, "楼道杂物")
    assert "描述" in "".join(text_of(r) for r in answer)


async def test_a_lost_sent_ticket_n_leaves_the_resident_with_the_menu_not_the_old_submit(
    harness: Harness, clock: FakeClock
) -> None:
    submit = await up_to_submit(harness, 900501, "五楼窗户玻璃碎了")
    inbox = inbox_of(harness)
    await inbox.record([submit])
    lose_the_next_answer(harness)
    with pytest.raises(ProcessDied):
        await inbox.handle(submit)
    assert await tickets_described(harness, "五楼窗户玻璃碎了") == 1

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.resume() == 1
    await again.drain(seconds=5)
    said = sent_to(restarted.telegram.requests, 900501)
    assert len(said) == 1 and "收到" in text_of(said[0]), [text_of(r) for r in said]
    keyboard = reply_buttons_of(said[0])
    assert keyboard and "📨 提交" not in keyboard, "the main menu replaces the old Submit"
    # Submit pressed anyway on an old screen: no second ticket.
    await restarted.person(900501).send("📨 提交")
    assert await tickets_described(harness, "五楼窗户玻璃碎了") == 1


async def test_only_a_persons_last_unanswered_update_is_resumed(harness: Harness, clock: FakeClock) -> None:
    answered, cut_off, later = (900502, 900503, 900504)
    for user_id in (answered, cut_off, later):
        await bind(harness.person(user_id))
    inbox = inbox_of(harness)
    # Answered in full: nothing to resume.
    first = text_update(answered, "/report")
    await inbox.record([first])
    await inbox.handle(first)
    await inbox.write_marks()
    # Cut off twice in a row: one resume, for the last.
    lose_the_next_answer(harness)
    for _ in range(2):
        cut = text_update(cut_off, "/report")
        await inbox.record([cut])
        with pytest.raises(ProcessDied):
            await inbox.handle(cut)
    # Cut off, but a later update is still to be handled: that one answers.
    lost = text_update(later, "/report")
    await inbox.record([lost, text_update(later, "/cancel")])
    with pytest.raises(ProcessDied):
        await inbox.handle(lost)

    restarted = Harness(harness.sessions, clock)
    again = inbox_of(restarted)
    assert await again.resume() == 1
    assert await again.recover() == 1
    await again.drain(seconds=5)
    assert not sent_to(restarted.telegram.requests, answered)
    assert len(sent_to(restarted.telegram.requests, cut_off)) == 1
    assert "取消" in "".join(text_of(r) for r in sent_to(restarted.telegram.requests, later))
    await again.write_marks()
    assert await inbox_of(restarted).resume() == 0, "the others were marked done at once"


async def test_an_answer_refused_in_an_outage_is_given_once_telegram_answers(
    harness: Harness, clock: FakeClock
) -> None:
    resident = harness.person(900520)
    await bind(resident)
    report = text_update(resident.id, "/report")
    inbox = inbox_of(harness)
    await inbox.record([report])
    bound = len(harness.telegram.accepted)
    harness.telegram.outage = SERVER_ERROR
    await inbox.handle(report)  # the wizard opens; its question outlasts the reply's retries and is given up
    assert await inbox.reprompt() == 0, "Telegram still fails: nothing is said yet"
    assert len(harness.telegram.accepted) == bound

    harness.telegram.outage = None
    assert await inbox.reprompt() == 1
    await inbox.drain(seconds=5)
    asked = sent_to(harness.telegram.accepted[bound:], resident.id)
    assert any("楼道杂物" in text for r in asked for text, _ in buttons_of(r)), "the category question, with buttons"
    await inbox.write_marks()
    assert await inbox.reprompt() == 0, "said once"
    # The wizard goes on from where it was saved.
    answer = await harness.person(resident.id).tap(asked, "楼道杂物")
    assert "描述" in "".join(text_of(r) for r in answer)
    assert await inbox_of(Harness(harness.sessions, clock)).resume() == 0, "and not again after a restart"


async def test_an_answer_refused_for_the_chat_or_superseded_is_not_repeated(harness: Harness) -> None:
    blocked, wrote_again = 900521, 900522
    for user_id in (blocked, wrote_again):
        await bind(harness.person(user_id))
    inbox = inbox_of(harness)
    # Telegram's word on the chat: nothing to say later.
    harness.telegram.fail_next(blocked, BLOCKED)
    refused_for_good = text_update(blocked, "/report")
    await inbox.record([refused_for_good])
    await inbox.handle(refused_for_good)
    # Refused in an outage, but the person wrote again meanwhile: the answer to that is what they need.
    harness.telegram.outage = SERVER_ERROR
    lost = text_update(wrote_again, "/report")
    await inbox.record([lost])
    await inbox.handle(lost)
    harness.telegram.outage = None
    later = text_update(wrote_again, "/cancel")
    await inbox.record([later])
    await inbox.handle(later)
    before = len(harness.telegram.requests)

    assert await inbox.reprompt() == 0
    await inbox.drain(seconds=5)
    assert not [r for r in harness.telegram.requests[before:] if getattr(r, "chat_id", None) in (blocked, wrote_again)]


async def test_polling_waits_until_the_dead_process_updates_are_being_answered(
    harness: Harness, clock: FakeClock
) -> None:
    await bind(harness.person(900510))
    left = [text_update(900510, "/help"), text_update(900511, "/help")]  # recorded by a process that died
    await inbox_of(harness).record(left)

    restarted = Harness(harness.sessions, clock)
    inbox = inbox_of(restarted)
    assert await inbox.recover() == 2
    loop = asyncio.get_running_loop()
    began = loop.time()
    await inbox.recovery_settled(seconds=5)
    assert loop.time() - began < 4, "settled as soon as the answers were on their way, not at the timeout"
    for _ in range(100):
        if {900510, 900511} <= {getattr(r, "chat_id", None) for r in restarted.telegram.requests}:
            break
        await asyncio.sleep(0.01)
    assert {900510, 900511} <= {getattr(r, "chat_id", None) for r in restarted.telegram.requests}
    await inbox.drain(seconds=5)


async def test_polling_does_not_wait_for_a_persons_later_updates_while_the_first_answer_is_retried(
    harness: Harness, clock: FakeClock
) -> None:
    """In a 429 storm the first recovered update's answer is retried for seconds; the same person's second one
    waits behind it in their queue, and polling need not wait for it: a new update of theirs queues behind."""
    await bind(harness.person(900512))
    await inbox_of(harness).record([text_update(900512, "/help"), text_update(900512, "/settings")])

    restarted = Harness(harness.sessions, clock)
    telegram_answers = asyncio.Event()
    make_request = restarted.telegram.make_request

    async def held(bot: Any, method: Any, timeout: int | None = None) -> Any:  # noqa: ASYNC109 - aiogram's
        await telegram_answers.wait()  # the first answer is on its way, and Telegram keeps it waiting
        return await make_request(bot, method, timeout)

    restarted.telegram.make_request = held  # type: ignore[method-assign]
    inbox = inbox_of(restarted)
    assert await inbox.recover() == 2
    loop = asyncio.get_running_loop()
    began = loop.time()
    await inbox.recovery_settled(seconds=5)
    assert loop.time() - began < 4, "the person's first answer is on its way; the second waits in their queue"
    assert [getattr(r, "chat_id", None) for r in restarted.telegram.requests] == []

    telegram_answers.set()
    await inbox.drain(seconds=5)
    help_text, settings_text = (text_of(r) for r in sent_to(restarted.telegram.requests, 900512)[:2])
    assert "/report" in help_text and help_text != settings_text, "answered in the order they were sent"
