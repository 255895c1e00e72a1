"""Closing the loop: "Is it fixed?", the 1-5 rating, reopening to the same worker, the reminder and auto-close.

Through the real dispatcher; the time-based part through ``close_unconfirmed`` with the clock moved by hand.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import partial
from typing import Any

from aiogram.methods import SendMessage, TelegramMethod
from sqlalchemy import func, select, update

from bot.callbacks import FeedbackAction, FeedbackCb, TicketAction, TicketCb
from bot.config import Settings
from domain.confirmation import ConfirmationSweep, close_unconfirmed
from domain.outbox import Notice
from scheduler.jobs import run_sweep
from storage.models import EventKind, OutboxMessage, Ticket, TicketEvent, TicketStatus, User
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, sent_to, text_of
from tests.harness import Harness, Person
from tests.households import verify

LI_JUAN = 200001  # grid 1's first primary worker: gets the first report of building yinba/1
RESIDENT, NEIGHBOUR = 930001, 930002


def texts(requests: list[TelegramMethod[Any]]) -> str:
    return "\n".join(text_of(r) for r in requests)


def alerted(requests: list[TelegramMethod[Any]]) -> bool:
    return any(getattr(r, "show_alert", False) for r in requests)


def callbacks(requests: list[TelegramMethod[Any]]) -> list[str]:
    return [data for r in requests for _text, data in buttons_of(r)]


async def speak_english(harness: Harness, *user_ids: int) -> None:
    async with harness.sessions() as session, session.begin():
        await session.execute(update(User).where(User.id.in_(user_ids)).values(language="en"))


async def bind(resident: Person, link: str = "jsx_yinba_1", unit: str = "2") -> None:
    answer = await resident.send(f"/start {link}")
    await resident.tap(answer, unit)


async def bind_verified(resident: Person, link: str = "jsx_yinba_1", unit: str = "2") -> None:
    """Bind, then verify the resident's household: only a verified household answers "Is it fixed?" and rates."""
    await bind(resident, link, unit)
    await verify(resident)


async def report(resident: Person, category: str = "Blocked drain", text: str = "The drain outside is blocked") -> int:
    """A whole report wizard in English; returns the ticket number."""
    answer = await resident.send("/report")
    answer = await resident.tap(answer, category)
    if any("mt:" in data for data in callbacks(answer)):
        await resident.tap(answer, "different")
    await resident.send(text)
    summary = await resident.send("✅ Done")
    done = await resident.tap(summary, "Submit")
    found = re.search(r"#(\d+)", texts(done))
    assert found, texts(done)
    return int(found.group(1))


async def work_and_resolve(harness: Harness, worker_id: int, number: int, note: str = "Cleared the drain") -> None:
    worker = harness.person(worker_id)
    if (await ticket(harness, number)).status == TicketStatus.ASSIGNED:
        await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send(note)


async def ticket(harness: Harness, number: int) -> Ticket:
    async with harness.sessions() as session:
        found = await session.get(Ticket, number)
        assert found is not None
        return found


async def event_kinds(harness: Harness, number: int) -> list[str]:
    async with harness.sessions() as session:
        return list(
            await session.scalars(
                select(TicketEvent.kind).where(TicketEvent.ticket_id == number).order_by(TicketEvent.id)
            )
        )


async def resolved_ticket(harness: Harness) -> tuple[Person, int, list[TelegramMethod[Any]]]:
    """An English resident's ticket, accepted and resolved by Li Juan; returns what the resident was sent."""
    resident = harness.person(RESIDENT, language="en")
    await bind_verified(resident)
    number = await report(resident)
    await harness.deliver()
    await work_and_resolve(harness, LI_JUAN, number)
    told = sent_to(await harness.deliver(), RESIDENT)
    return resident, number, told


async def test_yes_then_rating_and_comment_close_the_ticket_and_the_worker_hears_it(harness: Harness) -> None:
    await speak_english(harness, LI_JUAN)
    resident, number, told = await resolved_ticket(harness)
    resolution = told[-1]
    assert "Cleared the drain" in text_of(resolution) and "Is it fixed?" in text_of(resolution)
    assert FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack() in callbacks([resolution])

    answer = await resident.tap([resolution], "Yes")
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.CLOSED and saved.closed_at is not None
    assert "How satisfied" in texts(answer)
    answer = await resident.tap(answer, "4⭐")
    assert (await ticket(harness, number)).rating == 4
    assert "comment" in texts(answer)
    answer = await resident.tap(answer, "Add a comment")
    assert "/cancel" in texts(answer)
    answer = await resident.send("Quick & <tidy> work")
    assert "Thank you for your feedback" in texts(answer)
    saved = await ticket(harness, number)
    assert saved.rating == 4 and saved.rating_comment == "Quick & <tidy> work"
    assert (await event_kinds(harness, number))[-3:] == ["confirmed", "rated", "rating_comment"]

    # One message to the worker for all three answers (their card is edited besides: closed, History only).
    to_worker = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert len(to_worker) == 1
    said = texts(to_worker)
    assert "confirmed it is fixed" in said and "Satisfaction rating: 4 of 5" in said
    assert "Quick &amp; &lt;tidy&gt; work" in said, "the resident's words are escaped"
    assert str(RESIDENT) not in said and "user930001" not in said, "the worker never learns who it was"

    # The same buttons again (a double tap, an old message) change nothing.
    assert alerted(await resident.tap([resolution], "Yes"))
    assert alerted(await resident.press(FeedbackCb(action=FeedbackAction.RATE, ticket_id=number, stars=1).pack()))
    assert (await ticket(harness, number)).rating == 4
    assert (await event_kinds(harness, number)).count("confirmed") == 1


async def test_the_rating_comment_is_offered_never_awaited(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, LI_JUAN)
    resident, number, told = await resolved_ticket(harness)
    answer = await resident.tap(told, "Yes")
    rated = await resident.tap(answer, "5⭐")
    assert "Add a comment" in str(buttons_of(rated[-1]))
    # What the resident types next is a new problem, not a comment: it starts a report.
    answer = await resident.send("The lift on the 3rd floor is stuck")
    assert "Thank you" in texts(answer) and "category" in texts(answer).lower()
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.CLOSED and saved.rating == 5 and saved.rating_comment == ""

    # The worker hears the confirmation and rating together, once the comment had its chance.
    to_worker = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert to_worker == []
    clock.advance(minutes=16)
    [told_worker] = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert "confirmed it is fixed" in text_of(told_worker) and "5 of 5" in text_of(told_worker)
    # "Add a comment" on the rating's message still works later, and is told on its own.
    await resident.send("/cancel")
    await resident.tap(rated, "Add a comment")
    await resident.send("Thanks a lot")
    [comment] = [r for r in sent_to(await harness.deliver(), LI_JUAN) if isinstance(r, SendMessage)]
    assert "Thanks a lot" in text_of(comment) and "5 of 5" not in text_of(comment)


async def test_no_with_a_reason_reopens_to_the_same_worker_counts_and_resends_the_card(harness: Harness) -> None:
    await speak_english(harness, LI_JUAN)
    resident, number, told = await resolved_ticket(harness)
    answer = await resident.tap(told, "No")
    assert "What is still wrong" in texts(answer)
    assert (await ticket(harness, number)).status == TicketStatus.RESOLVED, "nothing changes before the reason"
    answer = await resident.send("Still blocked <again>")
    assert "reopened" in texts(answer)

    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.IN_PROGRESS and saved.assignee_id == LI_JUAN
    assert saved.reopen_count == 1 and saved.resolved_at is None
    to_worker = sent_to(await harness.deliver(), LI_JUAN)
    card = next(r for r in to_worker if isinstance(r, SendMessage))
    assert "Still blocked &lt;again&gt;" in card.text and "Reopened by a resident (1×)" in card.text
    assert TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack() in callbacks([card])

    # Resolved again: asked again; "no" again counts a second reopen.
    await work_and_resolve(harness, LI_JUAN, number, "Replaced the pipe")
    told = sent_to(await harness.deliver(), RESIDENT)
    assert "Is it fixed?" in texts(told)
    await resident.tap(told, "No")
    await resident.send("Water still on the floor")
    assert (await ticket(harness, number)).reopen_count == 2
    kinds = await event_kinds(harness, number)
    assert kinds.count("reopened") == 2 and kinds.count("resolved") == 2

    # The reporter's history reads it too.
    history = await resident.press(TicketCb(action=TicketAction.HISTORY, ticket_id=number).pack())
    assert "Water still on the floor" in texts(history)


async def test_a_reminder_once_then_closed_as_unconfirmed_after_the_configured_days(
    harness: Harness, clock: FakeClock
) -> None:
    within = timedelta(days=Settings(bot_token=None).confirm_within_days)
    assert within == timedelta(days=7)
    resident, number, told = await resolved_ticket(harness)

    async def sweep() -> tuple[list[int], list[int]]:
        async with harness.sessions() as session:
            result = await close_unconfirmed(session, clock(), within=within)
        return result.reminded, result.closed

    clock.advance(days=3, hours=11)
    assert await sweep() == ([], [])
    clock.advance(hours=1)  # half of seven days
    assert await sweep() == ([number], [])
    assert await sweep() == ([], []), "a second run reminds nobody twice"
    reminder = sent_to(await harness.deliver(), RESIDENT)
    assert len(reminder) == 1 and "not heard from you" in text_of(reminder[0])
    assert FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack() in callbacks(reminder)

    clock.advance(days=3, hours=11, minutes=59)
    assert await sweep() == ([], [])
    clock.advance(minutes=1)
    assert await sweep() == ([], [number])
    assert await sweep() == ([], []), "a second run closes nothing twice"
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.UNCONFIRMED and saved.closed_at == clock()
    kinds = await event_kinds(harness, number)
    assert kinds.count("confirm_reminded") == 1 and kinds.count("auto_closed") == 1
    told = sent_to(await harness.deliver(), RESIDENT)
    assert "closed as resolved, unconfirmed" in texts(told)
    async with harness.sessions() as session:
        reminders = await session.scalar(select(func.count()).where(OutboxMessage.kind == Notice.CONFIRM_REMINDER))
    assert reminders == 1

    # The old buttons are out of date now.
    assert alerted(await resident.tap(reminder, "Yes"))
    assert (await ticket(harness, number)).status == TicketStatus.UNCONFIRMED


async def test_a_reminder_queued_before_an_answer_is_not_sent_after_it(harness: Harness, clock: FakeClock) -> None:
    resident, number, told = await resolved_ticket(harness)
    clock.advance(days=1)
    async with harness.sessions() as session:
        assert (await close_unconfirmed(session, clock(), within=timedelta(days=2))).reminded == [number]
    await resident.tap(told, "Yes")
    sent = sent_to(await harness.deliver(), RESIDENT)
    assert not [r for r in sent if isinstance(r, SendMessage)], "the pending reminder has nothing left to ask"
    clock.advance(days=5)
    async with harness.sessions() as session:
        assert (await close_unconfirmed(session, clock(), within=timedelta(days=2))).closed == []
    assert (await ticket(harness, number)).status == TicketStatus.CLOSED


async def test_forged_and_stale_confirm_and_rating_buttons_are_refused(harness: Harness) -> None:
    resident = harness.person(RESIDENT, language="en")
    await bind_verified(resident)
    number = await report(resident)
    await harness.deliver()
    fixed = FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack()
    not_fixed = FeedbackCb(action=FeedbackAction.NOT_FIXED, ticket_id=number).pack()

    # Before the worker resolves it, there is nothing to confirm.
    answer = await resident.press(fixed)
    assert alerted(answer) and "out of date" in texts(answer)
    assert alerted(await resident.press(not_fixed))
    await work_and_resolve(harness, LI_JUAN, number)
    await harness.deliver()

    # Someone else's ticket: a neighbour and the worker himself cannot answer for the resident.
    neighbour = harness.person(NEIGHBOUR, language="en")
    await bind(neighbour)
    for outsider in (neighbour, harness.person(LI_JUAN)):
        assert alerted(await outsider.press(fixed))
        assert alerted(await outsider.press(not_fixed))
    assert alerted(await neighbour.press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=9999).pack()))
    assert alerted(await neighbour.press("fb:y:not-a-number"))
    # A rating before anyone confirmed, and a forged number of stars.
    assert alerted(await resident.press(FeedbackCb(action=FeedbackAction.RATE, ticket_id=number, stars=5).pack()))
    assert (await ticket(harness, number)).status == TicketStatus.RESOLVED

    await resident.press(fixed)
    assert alerted(await resident.press(FeedbackCb(action=FeedbackAction.RATE, ticket_id=number, stars=9).pack()))
    assert alerted(await neighbour.press(FeedbackCb(action=FeedbackAction.RATE, ticket_id=number, stars=1).pack()))
    assert alerted(await resident.press(not_fixed)), "a closed ticket is not reopened"
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.CLOSED and saved.rating is None and saved.reopen_count == 0
    assert "reopened" not in await event_kinds(harness, number)
    assert EventKind.RATED not in await event_kinds(harness, number)


async def test_the_scheduled_job_runs_the_sweep_and_wakes_the_sender(harness: Harness, clock: FakeClock) -> None:
    _resident, number, _told = await resolved_ticket(harness)
    woken: list[bool] = []
    job = partial(close_unconfirmed, within=timedelta(days=7))
    clock.advance(days=8)
    result = await run_sweep("confirmation-sweep", job, harness.sessions, clock, lambda: woken.append(True))
    assert isinstance(result, ConfirmationSweep) and result.closed == [number] and woken == [True]
    clock.advance(minutes=1)  # the next minute's run (this minute's has run)
    again = await run_sweep("confirmation-sweep", job, harness.sessions, clock, lambda: woken.append(True))
    assert isinstance(again, ConfirmationSweep) and again.closed == [] and woken == [True]
