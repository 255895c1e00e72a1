"""Direct replies (bot/outbound/replies.py), through the real dispatcher: retried through a 429 and passing faults,
paced so that a burst into one chat meets no 429, and a reply that fails for good loses nothing the update
saved. The outbox sender and polling are left to see Telegram's answers themselves."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from aiogram.exceptions import TelegramRetryAfter, TelegramServerError
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import AnswerCallbackQuery, GetUpdates, SendMessage, TelegramMethod
from aiogram.utils.backoff import BackoffConfig
from sqlalchemy import select

from bot.callbacks import LanguageCb
from bot.outbound import replies
from handlers.report import ReportWizard
from storage.models import OutboxMessage, OutboxStatus, Ticket, TicketStatus
from tests.conftest import FakeClock
from tests.fake_telegram import BOT_ID, SERVER_ERROR, TOO_MANY_REQUESTS, sent_to, text_of
from tests.harness import Harness, Person
from tests.test_report_flow import LI_JUAN, bind, file_report

RESIDENT = 900700


@pytest.fixture
def steady_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's backoff without its jitter, so the waits can be checked exactly."""
    monkeypatch.setattr(replies, "BACKOFF", BackoffConfig(min_delay=0.5, max_delay=5.0, factor=2.0, jitter=0))


def texts(requests: list[TelegramMethod[Any]]) -> str:
    return "\n".join(text_of(r) for r in requests)


async def at_summary(harness: Harness) -> tuple[Person, list[TelegramMethod[Any]]]:
    """A bound resident whose report waits for Submit, and some time later (they read the summary)."""
    resident = harness.person(RESIDENT)
    await bind(resident)
    answer = await resident.send("/report")
    answer = await resident.tap(answer, "楼道杂物")
    await resident.send("楼道里堆满了纸箱")
    summary = await resident.send("✅ 完成")
    harness.timer.now += 60
    return resident, summary


async def tickets(harness: Harness) -> list[Ticket]:
    async with harness.sessions() as session:
        return list(await session.scalars(select(Ticket).order_by(Ticket.id)))


async def test_sent_ticket_n_survives_a_429_and_arrives_once_after_retry_after(harness: Harness) -> None:
    resident, summary = await at_summary(harness)
    harness.telegram.fail_next(RESIDENT, TOO_MANY_REQUESTS)  # retry_after=7
    slept_before = len(harness.timer.slept)

    answer = await resident.tap(summary, "提交")

    assert [type(r) for r in answer] == [SendMessage, SendMessage], "refused once, then asked again"
    assert harness.telegram.refused == [answer[0]]
    assert harness.timer.slept[slept_before:] == [7.0], "waited exactly retry_after, and only that"
    delivered = [r for r in sent_to(harness.telegram.accepted, RESIDENT) if "#1" in text_of(r)]
    assert len(delivered) == 1, "the resident hears 'Sent! ticket #1' once"
    assert len(await tickets(harness)) == 1


async def test_a_502_is_retried_after_a_growing_pause(harness: Harness, steady_backoff: None) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    harness.timer.now += 60
    harness.telegram.fail_next(RESIDENT, SERVER_ERROR, SERVER_ERROR)
    slept_before = len(harness.timer.slept)

    answer = await resident.send("/help")

    assert len(answer) == 3 and len(harness.telegram.refused) == 2
    # 0.5 s of backoff (and 0.5 s more, for the chat's one-second turn), then 1 s of backoff.
    assert harness.timer.slept[slept_before:] == [0.5, 0.5, 1.0]
    assert [text_of(r) for r in sent_to(harness.telegram.accepted, RESIDENT)][-1] == text_of(answer[-1])
    assert "/report" in text_of(answer[-1])


async def test_a_burst_into_one_chat_is_paced_and_meets_no_429(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    harness.timer.now += 60
    harness.telegram.limit_per_chat(1.0, harness.timer.monotonic)
    started, accepted_before = harness.timer.now, len(harness.telegram.accepted)

    # Twenty quick presses and messages, as from an impatient resident: each one answers into the chat.
    for n in range(20):
        if n % 2:
            await resident.send("/help")
        else:
            await resident.press(LanguageCb(code="en" if n % 4 else "zh_CN").pack())

    assert harness.telegram.refused == [], "paced replies meet no 429"
    burst = harness.telegram.accepted[accepted_before:]
    assert len(sent_to(burst, RESIDENT)) == 20
    assert sum(isinstance(r, AnswerCallbackQuery) for r in burst) == 10
    assert harness.timer.now - started == pytest.approx(19.0), "one second apart, and no more"

    # The same fake refuses what is not paced: calls outside an update are the outbox's own business.
    harness.timer.now += 1
    await harness.bot.send_message(RESIDENT, "outside an update")
    with pytest.raises(TelegramRetryAfter):
        await harness.bot.send_message(RESIDENT, "outside an update, too soon")


async def test_a_reply_lost_to_an_outage_keeps_the_ticket_and_the_next_message_is_answered(
    harness: Harness, steady_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    resident, summary = await at_summary(harness)
    harness.telegram.outage = SERVER_ERROR
    started, slept_before = harness.timer.now, len(harness.timer.slept)

    with caplog.at_level(logging.ERROR, logger="bot.outbound.replies"):
        answer = await resident.tap(summary, "提交")  # handled: no exception reaches polling

    # Backoff 0.5 s (+0.5 s to the chat's next turn), 1, 2, 4, then 5 s: the ninth attempt fails 28 s after
    # the first, and 5 s more would pass the 30-second budget.
    assert len(answer) == 9 and all(r is answer[0] for r in answer)
    assert harness.timer.slept[slept_before:] == [0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert harness.timer.now - started == 28.0
    assert "not fully answered" in caplog.text and "Bad Gateway" in caplog.text

    # What Submit saved stays saved: the ticket, routed, with the worker's card queued, and the wizard ended.
    filed = await tickets(harness)
    assert len(filed) == 1 and filed[0].reporter_id == RESIDENT and filed[0].status == TicketStatus.ASSIGNED
    state = harness.app.dispatcher.fsm.get_context(harness.bot, RESIDENT, RESIDENT)
    assert await state.get_state() is None
    harness.telegram.outage = None
    assert sent_to(await harness.deliver(), LI_JUAN), "the worker gets the card all the same"

    # Telegram is back: pressing Submit again files nothing twice, and /my shows the ticket.
    again = await resident.tap(summary, "提交")
    assert "已经提交" in texts(again)
    assert len(await tickets(harness)) == 1
    mine = await resident.send("/my")
    assert f"#{filed[0].id}" in texts(mine)


async def test_a_lost_wizard_prompt_does_not_leave_the_resident_stuck(harness: Harness, steady_backoff: None) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    harness.telegram.outage = SERVER_ERROR
    await resident.send("/report")  # the wizard opens; its question never arrives
    harness.telegram.outage = None

    answer = await resident.send("楼道里堆满了纸箱")
    assert "类别" in texts(answer), "the typed problem carries the wizard on: which category?"
    summary = await resident.tap(answer, "楼道杂物")
    summary = await resident.send("✅ 完成")
    done = await resident.tap(summary, "提交")
    assert re.search(r"#\d+", texts(done))


async def test_the_outbox_sender_and_polling_see_telegrams_answers_at_once(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await file_report(resident, "楼道杂物", "楼道里堆满了纸箱")  # a card for Li Juan, in the outbox
    harness.telegram.fail_next(LI_JUAN, TOO_MANY_REQUESTS)
    slept_before = len(harness.timer.slept)

    delivered = await harness.deliver()

    assert len(sent_to(delivered, LI_JUAN)) == 2, "the sender's request is not repeated by the reply policy"
    assert harness.sender_rate.waited == [7.0], "the sender saw the 429 and waited its retry_after before trying again"
    assert harness.timer.slept[slept_before:] == []
    async with harness.sessions() as session:
        rows = list(await session.scalars(select(OutboxMessage).where(OutboxMessage.chat_id == LI_JUAN)))
    assert [r.status for r in rows] == [OutboxStatus.SENT]

    harness.telegram.outage = SERVER_ERROR
    before = len(harness.telegram.requests)
    with pytest.raises(TelegramServerError):
        await harness.bot(GetUpdates())
    assert len(harness.telegram.requests) == before + 1, "polling's getUpdates is asked once"


async def test_a_press_that_cannot_be_acknowledged_is_still_carried_out(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    question = await resident.send("/report")
    record = harness.telegram.make_request

    async def presses_refused(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(method, AnswerCallbackQuery):  # Telegram cannot take acknowledgements of presses
            raise TelegramServerError(method=method, message="Bad Gateway")
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = presses_refused  # type: ignore[method-assign]
    waited_before = harness.timer.now
    await resident.tap(question, "楼道杂物")
    assert harness.timer.now - waited_before <= replies.PRESS_ANSWER_SECONDS, "not half a minute of retries"
    key = StorageKey(bot_id=BOT_ID, chat_id=resident.id, user_id=resident.id)
    state = harness.app.dispatcher.storage
    assert await state.get_state(key) == ReportWizard.description.state, "the category was taken all the same"
