""" "Me too": while reporting, a resident sees the open tickets of that category in their building and joins one."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bot.callbacks import MeTooAction, MeTooCb, TicketAction, TicketCb
from domain import followers
from domain.errors import AccessDenied, InvalidTransition
from storage.db import SessionFactory
from storage.models import EventKind, Ticket, TicketFollower, TicketStatus
from tests.conftest import FakeClock
from tests.fake_telegram import sent_to
from tests.harness import Harness
from tests.households import verify, verify_household
from tests.test_confirmation import (
    LI_JUAN,
    alerted,
    bind,
    bind_verified,
    callbacks,
    event_kinds,
    report,
    speak_english,
    texts,
    ticket,
    work_and_resolve,
)
from tests.test_routing import report as domain_report
from tests.test_routing import resident_in

REPORTER, OTHER_CATEGORY, OTHER_BUILDING, FIXED_ALREADY, JOINER = 940001, 940002, 940003, 940004, 940005


def me_too(number: int) -> str:
    return MeTooCb(action=MeTooAction.JOIN, ticket_id=number).pack()


async def test_me_too_lists_only_open_tickets_of_that_category_in_that_building(harness: Harness) -> None:
    await speak_english(harness, LI_JUAN)
    reporter = harness.person(REPORTER, "Zhang Secret", language="en")
    await bind(reporter)
    drain = await report(reporter, text="The drain by unit 2 is blocked")
    other_category = harness.person(OTHER_CATEGORY, language="en")
    await bind(other_category)
    light = await report(other_category, category="Broken street", text="Stairwell light is out")
    other_building = harness.person(OTHER_BUILDING, language="en")
    await bind(other_building, link="jsx_yinba_11")
    elsewhere = await report(other_building, text="Drain blocked in building 11")
    fixed_already = harness.person(FIXED_ALREADY, language="en")
    await bind(fixed_already)
    resolved = await report(fixed_already, text="Drain blocked last week")
    await harness.deliver()
    worker = (await ticket(harness, resolved)).assignee_id
    assert worker is not None
    await work_and_resolve(harness, worker, resolved)
    await harness.deliver()

    joiner = harness.person(JOINER, language="en")
    await bind_verified(joiner)
    answer = await joiner.send("/report")
    answer = await joiner.tap(answer, "Blocked drain")
    shown = callbacks(answer)
    assert me_too(drain) in shown
    assert MeTooCb(action=MeTooAction.DIFFERENT).pack() in shown
    for hidden in (light, elsewhere, resolved):
        assert me_too(hidden) not in shown
    listing = texts(answer)
    assert f"#{drain}" in listing and "The drain by unit 2 is blocked" in listing
    assert "waiting to be accepted" in listing, "its status, in the resident's language"
    assert "Zhang Secret" not in listing and str(REPORTER) not in listing, "nobody's identity is shown"

    answer = await joiner.tap(answer, f"#{drain}")
    assert f"joined ticket #{drain}" in texts(answer) and "2 households" in texts(answer)
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 4, "no new ticket was filed"
    assert (await event_kinds(harness, drain))[-1] == EventKind.JOINED

    # The worker's card counts the affected households.
    assignee = (await ticket(harness, drain)).assignee_id
    assert assignee == LI_JUAN
    card = await harness.person(LI_JUAN).press(TicketCb(action=TicketAction.OPEN, ticket_id=drain).pack())
    assert "Affected households: 2" in texts(card)

    # The joined household hears every step, and is asked "Is it fixed?" like the reporter.
    await harness.person(LI_JUAN).press(TicketCb(action=TicketAction.ACCEPT, ticket_id=drain).pack())
    delivered = await harness.deliver()
    assert sent_to(delivered, REPORTER) and sent_to(delivered, JOINER)
    await work_and_resolve(harness, LI_JUAN, drain, "Drain cleared")
    delivered = await harness.deliver()
    for household in (REPORTER, JOINER):
        told = sent_to(delivered, household)
        assert "Drain cleared" in texts(told) and "Is it fixed?" in texts(told)
    # The joined household answers; the reporter hears that it was confirmed, and the old buttons are stale.
    await joiner.tap(sent_to(delivered, JOINER), "Yes")
    assert (await ticket(harness, drain)).status == TicketStatus.CLOSED
    told = sent_to(await harness.deliver(), REPORTER)
    assert "confirmed it is fixed" in texts(told)
    assert alerted(await reporter.tap(sent_to(delivered, REPORTER), "No"))

    # /my lists the joined ticket; its history reads as a resident's (no routing reasons).
    answer = await joiner.send("/my")
    assert f"#{drain}" in texts(answer)
    history = await joiner.press(TicketCb(action=TicketAction.HISTORY, ticket_id=drain).pack())
    assert "Drain cleared" in texts(history) and "fewest open tickets" not in texts(history)


async def test_mine_is_different_goes_on_with_the_wizard(harness: Harness) -> None:
    reporter = harness.person(REPORTER, language="en")
    await bind(reporter)
    first = await report(reporter)
    joiner = harness.person(JOINER, language="en")
    await bind_verified(joiner)
    answer = await joiner.send("/report")
    answer = await joiner.tap(answer, "Blocked drain")
    assert me_too(first) in callbacks(answer)
    answer = await joiner.tap(answer, "different")
    assert not alerted(answer)
    await joiner.send("My own drain problem, in the basement")
    summary = await joiner.send("✅ Done")
    done = await joiner.tap(summary, "Submit")
    assert "#2" in texts(done)
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(TicketFollower)) == 0

    # A resident who typed first sees the list too, and the report goes on with photos.
    answer = await harness.person(OTHER_CATEGORY, language="en").send("/start jsx_yinba_1")
    other = harness.person(OTHER_CATEGORY, language="en")
    await other.tap(answer, "2")
    await verify(other)
    answer = await other.send("the drain is blocked and smells")
    answer = await other.tap(answer, "Blocked drain")
    assert me_too(first) in callbacks(answer) and me_too(2) in callbacks(answer)
    assert "photos" in texts(answer)


async def test_joining_is_refused_for_own_tickets_twice_other_buildings_and_closed_tickets(harness: Harness) -> None:
    reporter = harness.person(REPORTER, language="en")
    await bind_verified(reporter)
    number = await report(reporter)
    joiner = harness.person(JOINER, language="en")
    await bind_verified(joiner)
    answer = await joiner.send("/report")
    answer = await joiner.tap(answer, "Blocked drain")
    await joiner.tap(answer, f"#{number}")

    # The reporter forges "me too" on their own ticket, the joiner presses it again: both refused.
    await reporter.send("/report")
    answer = await reporter.press(me_too(number))
    assert alerted(answer) and "your own report" in texts(answer)
    await joiner.send("/report")
    answer = await joiner.press(me_too(number))
    assert alerted(answer) and "already joined" in texts(answer)
    # A resident of another building forges the button.
    stranger = harness.person(OTHER_BUILDING, language="en")
    await bind(stranger, link="jsx_yinba_11")
    await stranger.send("/report")
    assert alerted(await stranger.press(me_too(number)))
    assert alerted(await stranger.press(me_too(9999)))
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(TicketFollower)) == 1
    # Outside a wizard the button is simply out of date.
    await stranger.send("/cancel")
    assert alerted(await stranger.press(me_too(number)))


async def test_join_rules_in_the_domain(session_factory: SessionFactory, clock: FakeClock, community: None) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    await resident_in(session_factory, clock, 2, "yinba/1")
    await resident_in(session_factory, clock, 3, "yinba/11")
    for resident in (1, 2, 3):
        await verify_household(session_factory, resident, clock(), room=f"10{resident}")
    filed = await domain_report(session_factory, clock, 1, "drain")
    number = filed.ticket.id
    async with session_factory() as session:
        with pytest.raises(followers.OwnTicket):
            await followers.join(session, user_id=1, ticket_id=number, now=clock())
        with pytest.raises(AccessDenied):
            await followers.join(session, user_id=3, ticket_id=number, now=clock())
        similar = await followers.similar_open_tickets(
            session, user_id=2, building_id=filed.ticket.building_id, category_id=filed.ticket.category_id
        )
        assert [t.id for t in similar] == [number]
        _ticket, households = await followers.join(session, user_id=2, ticket_id=number, now=clock())
        assert households == 2
        with pytest.raises(followers.AlreadyJoined):
            await followers.join(session, user_id=2, ticket_id=number, now=clock())
        similar = await followers.similar_open_tickets(
            session, user_id=2, building_id=filed.ticket.building_id, category_id=filed.ticket.category_id
        )
        assert similar == [], "a ticket already joined is not offered again"

    async with session_factory() as session, session.begin():
        saved = await session.get(Ticket, number)
        assert saved is not None
        saved.status = TicketStatus.UNCONFIRMED
    await resident_in(session_factory, clock, 4, "yinba/1")
    await verify_household(session_factory, 4, clock(), room="104")
    async with session_factory() as session:
        with pytest.raises(InvalidTransition):
            await followers.join(session, user_id=4, ticket_id=number, now=clock())
