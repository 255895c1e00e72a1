"""The escalation ladder, reminders and the ledger through the real dispatcher.

Tickets are filed through the domain (the wizard is covered in test_report_flow / test_wizard); everything a
worker, staff member, street office or department does goes through buttons and messages. New texts are asserted
in English only, for people whose language is set to English.
"""

from __future__ import annotations

from typing import Any

from aiogram.methods import SendMessage, TelegramMethod
from sqlalchemy import select, update

from bot.callbacks import EscalateCb, TicketAction, TicketCb
from domain.sweep import sweep
from storage.models import EventKind, Level, Ticket, TicketEvent, TicketStatus, User
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, sent_to, text_of
from tests.harness import Harness
from tests.test_routing import report, resident_in

LI_JUAN, MA_LI, ZHANG_WEI = 200001, 200002, 200003
YANG_MIN = 200011
STAFF_WANG, STAFF_LIU = 100001, 100002
STREET_CHEN = 500001
HOUSING_HAN, PROPERTY_WU = 600001, 600031
RESIDENT = 900200


def texts(requests: list[TelegramMethod[Any]]) -> str:
    return "\n".join(text_of(r) for r in requests)


def alerted(requests: list[TelegramMethod[Any]]) -> bool:
    return any(getattr(r, "show_alert", False) for r in requests)


def callbacks(request: TelegramMethod[Any]) -> list[str]:
    return [data for _, data in buttons_of(request)]


def keyboard(requests: list[TelegramMethod[Any]]) -> list[str]:
    """The callback data of the latest message with inline buttons."""
    return next(callbacks(r) for r in reversed(requests) if buttons_of(r))


def button(action: TicketAction, ticket_id: int) -> str:
    return TicketCb(action=action, ticket_id=ticket_id).pack()


async def speak_english(harness: Harness, *user_ids: int) -> None:
    async with harness.sessions() as session, session.begin():
        await session.execute(update(User).where(User.id.in_(user_ids)).values(language="en"))


async def file(harness: Harness, clock: FakeClock, resident: int = RESIDENT, code: str = "light") -> int:
    async with harness.sessions() as session:
        known = await session.get(User, resident)
    if known is None:
        await resident_in(harness.sessions, clock, resident, "yinba/1")
    filed = await report(harness.sessions, clock, resident, code=code)
    await speak_english(harness, resident)
    return filed.ticket.id


async def load(harness: Harness, ticket_id: int) -> Ticket:
    async with harness.sessions() as session:
        found = await session.get(Ticket, ticket_id)
        assert found is not None
        return found


async def history_kinds(harness: Harness, ticket_id: int) -> list[str]:
    async with harness.sessions() as session:
        return list(
            await session.scalars(
                select(TicketEvent.kind).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
            )
        )


def card_to(delivered: list[TelegramMethod[Any]], chat_id: int) -> SendMessage:
    return next(r for r in sent_to(delivered, chat_id) if isinstance(r, SendMessage) and buttons_of(r))


async def test_escalation_up_the_ladder_and_back_down(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, LI_JUAN, STAFF_WANG, STAFF_LIU, STREET_CHEN, HOUSING_HAN)
    number = await file(harness, clock)
    await harness.deliver()
    worker = harness.person(LI_JUAN, language="en")
    await worker.press(button(TicketAction.ACCEPT, number))
    await harness.deliver()

    # The grid worker escalates with a reason: there is one way up, so straight to the reason.
    answer = await worker.press(button(TicketAction.ESCALATE, number))
    assert "Why does ticket" in texts(answer)
    answer = await worker.send("需要更换整条线路 <电缆>")
    assert "escalated" in texts(answer)
    ticket = await load(harness, number)
    assert ticket.level == Level.COMMUNITY and ticket.status == TicketStatus.ASSIGNED
    assert ticket.assignee_id in {STAFF_WANG, STAFF_LIU}
    staff_id = ticket.assignee_id
    delivered = await harness.deliver()
    card = card_to(delivered, staff_id)
    assert "Escalated by 李娟: 需要更换整条线路 &lt;电缆&gt;" in card.text
    assert button(TicketAction.ESCALATE, number) in callbacks(card)
    assert button(TicketAction.SEND_DOWN, number) in callbacks(card)
    told = texts(sent_to(delivered, RESIDENT))
    assert f"#{number}" in told and "passed to the community office" in told
    assert "电缆" not in told, "the resident is not shown the worker's reason"

    # The original worker still sees it in /tickets and its history, but cannot act on it any more.
    listing = await worker.send("/tickets")
    assert f"#{number}" in texts(listing)
    opened = await worker.press(button(TicketAction.OPEN, number))
    assert callbacks(card_to(opened, LI_JUAN)) == [button(TicketAction.HISTORY, number)]
    refused = await worker.press(button(TicketAction.ESCALATE, number))
    assert alerted(refused)
    refused = await worker.press(button(TicketAction.NOTE, number))
    assert alerted(refused)

    # Staff escalate to the street office, chosen from a list that also offers the departments.
    staff = harness.person(staff_id, language="en")
    answer = await staff.press(button(TicketAction.ESCALATE, number))
    offered = keyboard(answer)
    assert EscalateCb(ticket_id=number, level="street").pack() in offered
    assert EscalateCb(ticket_id=number, level="department", department="housing").pack() in offered
    await staff.tap(answer, "street office")
    await staff.send("涉及多个部门，请街道协调")
    ticket = await load(harness, number)
    assert ticket.level == Level.STREET and ticket.assignee_id == STREET_CHEN
    delivered = await harness.deliver()
    assert "passed to the street office" in texts(sent_to(delivered, RESIDENT))
    street_card = card_to(delivered, STREET_CHEN)
    assert button(TicketAction.HAND_BACK, number) not in callbacks(street_card)

    # The street office blows the whistle: the housing bureau reports.
    street = harness.person(STREET_CHEN, language="en")
    answer = await street.press(button(TicketAction.ACCEPT, number))
    answer = await street.press(button(TicketAction.ESCALATE, number))
    offered = keyboard(answer)
    assert EscalateCb(ticket_id=number, level="street").pack() not in offered
    await street.tap(answer, "Housing and Construction Bureau")
    await street.send("请住建局派人查看")
    ticket = await load(harness, number)
    assert (ticket.level, ticket.department, ticket.assignee_id) == (Level.DEPARTMENT, "housing", HOUSING_HAN)
    delivered = await harness.deliver()
    assert "passed to Housing and Construction Bureau" in texts(sent_to(delivered, RESIDENT))
    department_card = card_to(delivered, HOUSING_HAN)
    assert button(TicketAction.ESCALATE, number) not in callbacks(department_card)

    # The department sends it back to the street office, which sends it down to staff, who send it to the grid.
    department = harness.person(HOUSING_HAN, language="en")
    await department.press(button(TicketAction.SEND_DOWN, number))
    answer = await department.send("属于物业维修范围")
    assert "sent down" in texts(answer)
    assert (await load(harness, number)).assignee_id == STREET_CHEN
    await street.press(button(TicketAction.SEND_DOWN, number))
    await street.send("请社区督促物业")
    ticket = await load(harness, number)
    assert ticket.level == Level.COMMUNITY and ticket.assignee_id in {STAFF_WANG, STAFF_LIU}
    staff = harness.person(ticket.assignee_id, language="en")
    await staff.press(button(TicketAction.SEND_DOWN, number))
    await staff.send("请网格员跟进物业维修")
    ticket = await load(harness, number)
    assert ticket.level == Level.GRID and ticket.assignee_id == LI_JUAN, "back to the worker who escalated it"
    delivered = await harness.deliver()
    assert "请网格员跟进物业维修" in texts(sent_to(delivered, LI_JUAN))
    assert "passed back to the grid worker" in texts(sent_to(delivered, RESIDENT))

    # The whole path is in the history.
    kinds = await history_kinds(harness, number)
    assert kinds.count(EventKind.ESCALATED) == 3 and kinds.count(EventKind.SENT_DOWN) == 3
    history = await worker.press(button(TicketAction.HISTORY, number))
    for expected in ("escalated it to the street office", "Housing and Construction Bureau", "sent it back"):
        assert expected in texts(history)


async def test_staff_can_send_a_ticket_straight_to_a_department_which_resolves_it(
    harness: Harness, clock: FakeClock
) -> None:
    await speak_english(harness, STAFF_WANG, STAFF_LIU, PROPERTY_WU)
    number = await file(harness, clock, code="property")  # handled by community staff first
    ticket = await load(harness, number)
    assert ticket.level == Level.COMMUNITY and ticket.assignee_id is not None
    staff = harness.person(ticket.assignee_id, language="en")
    answer = await staff.press(button(TicketAction.ESCALATE, number))
    await staff.tap(answer, "Xinsheng Property")
    await staff.send("电梯故障，请物业公司维修")
    ticket = await load(harness, number)
    assert (ticket.level, ticket.department, ticket.assignee_id) == (Level.DEPARTMENT, "property", PROPERTY_WU)
    company = harness.person(PROPERTY_WU, language="en")
    await company.press(button(TicketAction.ACCEPT, number))
    await company.press(button(TicketAction.RESOLVE, number))
    await company.send("电梯已修复")
    assert (await load(harness, number)).status == TicketStatus.RESOLVED
    # Another department's people cannot even open it.
    answer = await harness.person(HOUSING_HAN).press(button(TicketAction.HISTORY, number))
    assert alerted(answer)


async def test_forged_escalation_buttons_are_refused_and_change_nothing(harness: Harness, clock: FakeClock) -> None:
    number = await file(harness, clock)
    await harness.deliver()
    before = await history_kinds(harness, number)
    attempts = [
        (YANG_MIN, button(TicketAction.ESCALATE, number)),  # another grid's worker
        (MA_LI, button(TicketAction.ESCALATE, number)),  # same grid, not the assignee
        (RESIDENT, button(TicketAction.ESCALATE, number)),  # the reporter
        (LI_JUAN, EscalateCb(ticket_id=number, level="department", department="housing").pack()),  # skipping levels
        (LI_JUAN, EscalateCb(ticket_id=number, level="street").pack()),
        (LI_JUAN, button(TicketAction.SEND_DOWN, number)),  # nothing below the grid
        (STAFF_WANG, EscalateCb(ticket_id=number, level="department", department="nowhere").pack()),
        (STREET_CHEN, button(TicketAction.ESCALATE, number)),  # not at the street office yet
        (HOUSING_HAN, button(TicketAction.RESOLVE, number)),  # not sent to the department
        (HOUSING_HAN, button(TicketAction.SEND_DOWN, number)),
        (LI_JUAN, "e:not-a-number:street:"),
    ]
    for user_id, data in attempts:
        answer = await harness.person(user_id).press(data)
        assert alerted(answer), (user_id, data)
    ticket = await load(harness, number)
    assert (ticket.level, ticket.assignee_id, ticket.status) == (Level.GRID, LI_JUAN, TicketStatus.ASSIGNED)
    assert await history_kinds(harness, number) == before


async def test_reminder_reaches_the_worker_once_even_after_a_restart(
    harness: Harness, clock: FakeClock, session_factory: Any
) -> None:
    await speak_english(harness, LI_JUAN)
    number = await file(harness, clock)
    await harness.deliver()
    clock.advance(hours=20)  # 4 h of 24 left to accept it
    async with harness.sessions() as session:
        await sweep(session, clock())
    delivered = await harness.deliver()
    reminder = card_to(delivered, LI_JUAN)
    assert "Please accept it by" in reminder.text and f"#{number}" in reminder.text
    assert button(TicketAction.ACCEPT, number) in callbacks(reminder)

    clock.advance(minutes=1)
    async with harness.sessions() as session:
        await sweep(session, clock())
    assert not await harness.deliver()

    restarted = Harness(session_factory, clock)  # a new process: only the database remembers
    clock.advance(minutes=1)
    async with restarted.sessions() as session:
        await sweep(session, clock())
    assert not await restarted.deliver()


async def test_ledger_counts_by_colour_and_lists_the_red_ones(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, STAFF_WANG)
    red = await file(harness, clock)  # light: accept within 24 h
    clock.advance(hours=6)
    yellow = await file(harness, clock)
    clock.advance(hours=14)
    green = await file(harness, clock)
    clock.advance(hours=5)  # red 25 h old, yellow 19 h old (5 h left), green 5 h old
    answer = await harness.person(STAFF_WANG, language="en").send("/ledger")
    text = texts(answer)
    assert "Grid 1: 🟢 1 🟡 1 🔴 1" in text
    assert "Grid 2: 🟢 0 🟡 0 🔴 0" in text
    buttons = keyboard(answer)
    assert buttons == [button(TicketAction.OPEN, red)]
    assert yellow != green
    opened = await harness.person(STAFF_WANG, language="en").press(buttons[0])
    assert f"#{red}" in texts(opened)


async def test_ledger_is_refused_politely_to_anyone_but_staff(harness: Harness, clock: FakeClock) -> None:
    await speak_english(harness, LI_JUAN)
    answer = await harness.person(LI_JUAN, language="en").send("/ledger")
    assert "only for community staff" in texts(answer)
    answer = await harness.person(900299, language="en").send("/ledger")
    assert "only for community staff" in texts(answer)
