""" "Is it fixed?" kept current (domain/questions.py), through the real dispatcher and the outbox on both backends:
once one household answers, or nobody does in time, every household's question loses its Yes / No buttons and
says what happened; what the sender learns late is caught up at once."""

from __future__ import annotations

from typing import Any

from aiogram.methods import EditMessageCaption, EditMessageText, SendMessage, SendPhoto, TelegramMethod
from sqlalchemy import select

from bot.callbacks import FeedbackAction, FeedbackCb, TicketAction, TicketCb
from domain.confirmation import close_unconfirmed
from domain.questions import record_question
from storage.models import Ticket, TicketQuestionCopy, TicketStatus
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, sent_to, text_of
from tests.harness import Harness, Person
from tests.test_confirmation import (
    LI_JUAN,
    NEIGHBOUR,
    RESIDENT,
    bind_verified,
    report,
    speak_english,
    work_and_resolve,
)

YES = FeedbackAction.FIXED
Edit = EditMessageText | EditMessageCaption


def questions(requests: list[TelegramMethod[Any]], number: int) -> list[TelegramMethod[Any]]:
    """The messages among ``requests`` that ask "Is it fixed?" about ticket ``number``."""
    yes = FeedbackCb(action=YES, ticket_id=number).pack()
    return [r for r in requests if isinstance(r, SendMessage | SendPhoto) and yes in {d for _, d in buttons_of(r)}]


def edits_to(requests: list[TelegramMethod[Any]], chat_id: int) -> list[Edit]:
    return [r for r in sent_to(requests, chat_id) if isinstance(r, EditMessageText | EditMessageCaption)]


def feedback_buttons(request: TelegramMethod[Any]) -> list[str]:
    return [data for _label, data in buttons_of(request) if data.startswith("fb:")]


async def two_households(harness: Harness) -> tuple[Person, Person, int]:
    """An English resident's ticket, joined by a neighbour ("me too"); both verified households."""
    await speak_english(harness, LI_JUAN)
    resident, neighbour = harness.person(RESIDENT, language="en"), harness.person(NEIGHBOUR, language="en")
    await bind_verified(resident)
    await bind_verified(neighbour, unit="3")
    number = await report(resident)
    answer = await neighbour.tap(await neighbour.send("/report"), "Blocked drain")
    assert "joined" in text_of((await neighbour.tap(answer, f"#{number}"))[-1])
    await harness.deliver()
    return resident, neighbour, number


async def copies(harness: Harness) -> list[tuple[int, int]]:
    """(chat, message) of every question recorded."""
    async with harness.sessions() as session:
        rows = await session.execute(select(TicketQuestionCopy.chat_id, TicketQuestionCopy.message_id))
        return sorted((chat_id, message_id) for chat_id, message_id in rows)


async def test_one_answer_takes_the_buttons_off_every_other_households_question(harness: Harness) -> None:
    resident, neighbour, number = await two_households(harness)
    await work_and_resolve(harness, LI_JUAN, number)
    asked = await harness.deliver()
    [to_resident] = questions(sent_to(asked, RESIDENT), number)
    [to_neighbour] = questions(sent_to(asked, NEIGHBOUR), number)
    recorded = dict(await copies(harness))
    assert recorded.keys() == {RESIDENT, NEIGHBOUR}

    await neighbour.tap([to_neighbour], "Yes")
    delivered = await harness.deliver()
    [edit] = edits_to(delivered, RESIDENT)
    assert isinstance(edit, EditMessageText) and edit.message_id == recorded[RESIDENT]
    assert feedback_buttons(edit) == [], "no Yes / No left to press"
    assert "Cleared the drain" in edit.text, "what the worker did is still there"
    assert "Answered: it is fixed, and the ticket is closed." in edit.text
    [own] = edits_to(delivered, NEIGHBOUR)  # the one who answered: their question says so too
    assert own.message_id == recorded[NEIGHBOUR]
    assert "Answered: it is fixed" in text_of(own) and feedback_buttons(own) == []
    assert await copies(harness) == [], "settled: nothing more to keep current"
    # Its button, pressed all the same (from a client that had not updated), is still refused.
    assert any(getattr(r, "show_alert", False) for r in await resident.tap([to_resident], "Yes"))


async def test_a_reopening_tells_the_other_household_under_its_question(harness: Harness) -> None:
    resident, neighbour, number = await two_households(harness)
    await work_and_resolve(harness, LI_JUAN, number)
    await harness.deliver()
    await resident.press(FeedbackCb(action=FeedbackAction.NOT_FIXED, ticket_id=number).pack())
    await resident.send("Still blocked after the rain")
    [edit] = edits_to(await harness.deliver(), NEIGHBOUR)
    assert "Answered: it is not fixed, and the ticket is back with the worker." in text_of(edit)
    assert feedback_buttons(edit) == []

    # Resolved again, it asks afresh, with buttons that work.
    await work_and_resolve(harness, LI_JUAN, number, note="Replaced the pipe")
    [again] = questions(sent_to(await harness.deliver(), NEIGHBOUR), number)
    assert "Replaced the pipe" in text_of(again)
    await neighbour.tap([again], "Yes")
    async with harness.sessions() as session:
        assert (await session.get(Ticket, number)).status == TicketStatus.CLOSED  # type: ignore[union-attr]


async def test_closing_unanswered_edits_the_question_and_the_reminder(harness: Harness, clock: FakeClock) -> None:
    _resident, _neighbour, number = await two_households(harness)
    await work_and_resolve(harness, LI_JUAN, number)
    await harness.deliver()
    clock.advance(days=4)
    async with harness.sessions() as session:
        assert (await close_unconfirmed(session, clock())).reminded == [number]
    reminders = questions(sent_to(await harness.deliver(), RESIDENT), number)
    assert len(reminders) == 1 and "we have not heard from you" in text_of(reminders[0])
    assert len(await copies(harness)) == 4, "two households, each asked twice"

    clock.advance(days=4)
    async with harness.sessions() as session:
        assert (await close_unconfirmed(session, clock())).closed == [number]
    delivered = await harness.deliver()
    for household in (RESIDENT, NEIGHBOUR):
        edited = edits_to(delivered, household)
        assert len(edited) == 2, household
        for edit in edited:
            assert "Nobody answered in time" in text_of(edit) and feedback_buttons(edit) == []
    assert await copies(harness) == []


async def test_a_question_on_a_photo_is_edited_as_a_caption(harness: Harness) -> None:
    _resident, neighbour, number = await two_households(harness)
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send_photo("after-photo", caption="New pipe fitted")
    [photo] = questions(sent_to(await harness.deliver(), RESIDENT), number)
    assert isinstance(photo, SendPhoto)
    await neighbour.press(FeedbackCb(action=YES, ticket_id=number).pack())
    [edit] = edits_to(await harness.deliver(), RESIDENT)
    assert isinstance(edit, EditMessageCaption) and edit.caption is not None
    assert "New pipe fitted" in edit.caption and "Answered: it is fixed" in edit.caption
    assert feedback_buttons(edit) == []


async def test_a_question_recorded_after_the_answer_is_edited_at_once(harness: Harness, clock: FakeClock) -> None:
    """The sender records a message only once Telegram took it; the question may have been settled meanwhile."""
    _resident, neighbour, number = await two_households(harness)
    await work_and_resolve(harness, LI_JUAN, number)
    await harness.deliver()
    await neighbour.press(FeedbackCb(action=YES, ticket_id=number).pack())
    await harness.deliver()
    async with harness.sessions() as session, session.begin():
        late = {"ticket_id": number, "chat_id": RESIDENT, "message_id": 777, "event_id": None, "caption": False}
        await record_question(session, now=clock(), **late)
    assert await copies(harness) == []
    [edit] = edits_to(await harness.deliver(), RESIDENT)
    assert edit.message_id == 777 and "Answered: it is fixed" in text_of(edit)
