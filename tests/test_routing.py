"""Routing rules, tested on the domain directly: building → grid → least-loaded worker → staff."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import func, select, update

from domain import tickets
from domain.categories import list_categories, suggest_category
from domain.directory import Directory
from domain.errors import AccessDenied, HandledElsewhere, InvalidTransition, NotBound
from domain.outbox import Notice
from domain.people import touch_user
from domain.routing import RouteReason
from domain.text import TextTooLong
from storage.db import SessionFactory
from storage.models import (
    Building,
    Category,
    Compound,
    Membership,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    Ticket,
    TicketStatus,
    User,
    Verification,
    VerificationStatus,
)
from tests.conftest import FakeClock

LI_JUAN, MA_LI, ZHANG_WEI = 200001, 200002, 200003
STAFF_WANG = 100001


async def resident_in(session_factory: SessionFactory, clock: FakeClock, user_id: int, building: str) -> None:
    compound_code, building_code = building.split("/")
    async with session_factory() as session, session.begin():
        found = await session.scalar(
            select(Building).join(Compound).where(Compound.code == compound_code, Building.code == building_code)
        )
        assert found is not None
        session.add(User(id=user_id, full_name="resident", building_id=found.id, unit=1, created_at=clock()))


async def category(session_factory: SessionFactory, code: str) -> Category:
    async with session_factory() as session:
        found = await session.scalar(select(Category).where(Category.code == code))
        assert found is not None
        return found


async def report(
    session_factory: SessionFactory, clock: FakeClock, user_id: int, code: str = "light"
) -> tickets.FiledTicket:
    cat = await category(session_factory, code)
    async with session_factory() as session:
        reporter = await touch_user(session, user_id, "resident", "zh-hans", clock())
        home = await Directory().home(session, reporter)
        if home is None:
            raise NotBound()
        return await tickets.file_report(
            session,
            reporter=reporter,
            building=home,
            category=cat,
            draft=tickets.ReportDraft(category_id=cat.id, description="路灯不亮"),
            now=clock(),
        )


async def test_least_loaded_primary_then_idle_longest(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    first = await report(session_factory, clock, 1)
    assert first.decision.assignee and first.decision.assignee.user_id == LI_JUAN
    assert first.decision.reason == RouteReason.GRID_WORKER
    clock.advance(minutes=1)
    second = await report(session_factory, clock, 1)
    assert second.decision.assignee and second.decision.assignee.user_id == MA_LI
    # Both now have one open ticket: the tie goes to the one idle longest (Li Juan, assigned first).
    clock.advance(minutes=1)
    third = await report(session_factory, clock, 1)
    assert third.decision.assignee and third.decision.assignee.user_id == LI_JUAN
    # Now Li Juan has two open tickets and Ma Li one: the fewest open wins.
    clock.advance(minutes=1)
    fourth = await report(session_factory, clock, 1)
    assert fourth.decision.assignee and fourth.decision.assignee.user_id == MA_LI
    # The backup is never chosen while a primary can take it.
    considered = {c.user_id for c in fourth.decision.considered}
    assert ZHANG_WEI in considered


async def test_filing_queues_the_card_and_photos_in_its_own_transaction_in_few_trips(
    session_factory: SessionFactory, clock: FakeClock, community: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    cat = await category(session_factory, "light")
    trips = 0
    hand_over = aiosqlite.Connection._execute

    async def counted(connection: aiosqlite.Connection, fn: Any, *args: Any, **kw: Any) -> Any:
        nonlocal trips
        trips += 1
        return await hand_over(connection, fn, *args, **kw)

    filed, counted_trips = [], []
    for photos in ([], ["photo-1"]):
        async with session_factory() as session:
            reporter = await touch_user(session, 1, "resident", "zh-hans", clock())
            home = await Directory().home(session, reporter)
            assert home is not None
            trips = 0
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            draft = tickets.ReportDraft(category_id=cat.id, description="路灯不亮", photos=photos)
            filed.append(
                await tickets.file_report(
                    session, reporter=reporter, building=home, category=cat, draft=draft, now=clock()
                )
            )
            monkeypatch.undo()
            counted_trips.append(trips)
    if session_factory.kw["bind"].dialect.name == "sqlite":
        # The new ticket's id and the candidates (with BEGIN), then the COMMIT with everything nobody reads back:
        # the ticket and its photos, the counters, the history, the card.
        assert counted_trips == [2, 2]
    async with session_factory() as session:
        queued = list(await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    worker = filed[0].decision.assignee
    assert worker is not None and filed[1].decision.assignee is not None
    assert [(m.chat_id, m.kind, m.payload) for m in queued] == [
        (worker.user_id, Notice.TICKET_CARD, {"ticket_id": filed[0].ticket.id}),
        (filed[1].decision.assignee.user_id, Notice.TICKET_CARD, {"ticket_id": filed[1].ticket.id}),
        (filed[1].decision.assignee.user_id, Notice.TICKET_PHOTOS, {"ticket_id": filed[1].ticket.id}),
    ]
    at = clock()
    assert {(m.status, m.priority, m.attempts, m.broadcast_id, m.not_before, m.created_at) for m in queued} == {
        (OutboxStatus.PENDING, OutboxPriority.NOTICE, 0, None, at, at)
    }


async def test_a_filed_ticket_is_the_row_written_and_knows_whether_its_reporter_is_verified(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    """Its id and reporter_verified are read before the INSERT (domain/tickets.py): they must be the row's."""
    for user_id, building in ((1, "yinba/1"), (2, "yinba/1"), (3, "yinba/2")):
        await resident_in(session_factory, clock, user_id, building)
    async with session_factory() as session, session.begin():
        first = await session.scalar(
            select(Building).join(Compound).where(Building.code == "1", Compound.code == "yinba")
        )
        assert first is not None
        # 1 speaks for a household of their building; 3 was verified for another building, and 2 not at all.
        for user_id in (1, 3):
            session.add(
                Verification(
                    user_id=user_id,
                    building_id=first.id,
                    unit=1,
                    room="101",
                    method="phone",
                    status=VerificationStatus.VERIFIED,
                    created_at=clock(),
                )
            )
    filed = {user_id: (await report(session_factory, clock, user_id)).ticket for user_id in (1, 2, 3, 1)}
    async with session_factory() as session:
        rows = {t.id: t for t in await session.scalars(select(Ticket).where(Ticket.reporter_id.in_([1, 2, 3])))}
    assert len(rows) == 4, "each filing wrote a row of its own"
    for user_id, verified in ((1, True), (2, False), (3, False)):
        ticket = filed[user_id]
        assert ticket.reporter_verified is verified
        assert rows[ticket.id].reporter_id == user_id and rows[ticket.id].reporter_verified is verified


async def test_grid_without_workers_goes_to_staff_and_says_why(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    async with session_factory() as session, session.begin():
        await session.execute(update(Membership).where(Membership.role == "grid_worker").values(active=False))
    await resident_in(session_factory, clock, 1, "yinba/1")
    filed = await report(session_factory, clock, 1)
    assert filed.decision.reason == RouteReason.NO_GRID_WORKER
    assert filed.decision.assignee and filed.decision.assignee.user_id == STAFF_WANG
    assert filed.ticket.level == "community"


async def test_community_level_category_goes_to_staff(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    filed = await report(session_factory, clock, 1, code="property")
    assert filed.decision.reason == RouteReason.CATEGORY_LEVEL
    assert filed.decision.assignee and filed.decision.assignee.user_id in {100001, 100002}


async def test_unbound_resident_cannot_file(session_factory: SessionFactory, clock: FakeClock, community: None) -> None:
    async with session_factory() as session, session.begin():
        session.add(User(id=5, full_name="x", created_at=clock()))
    with pytest.raises(NotBound):
        await report(session_factory, clock, 5)


async def test_category_of_another_community_or_another_building_is_refused(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    await resident_in(session_factory, clock, 2, "chaoyang/1")
    light = await category(session_factory, "light")
    async with session_factory() as session:
        reporter = await touch_user(session, 1, "resident", "zh-hans", clock())
        home = await Directory().home(session, reporter)
        elsewhere = await Directory().home(session, await touch_user(session, 2, "r", "zh-hans", clock()))
        assert home is not None and elsewhere is not None
        foreign = Category(id=99999, community_id=home.compound.community_id + 1, code="x", name="x", active=True)
        for building, cat in ((home, foreign), (elsewhere, light)):
            with pytest.raises(tickets.DomainError):
                await tickets.file_report(
                    session,
                    reporter=reporter,
                    building=building,
                    category=cat,
                    draft=tickets.ReportDraft(category_id=cat.id, description="x"),
                    now=clock(),
                )


async def test_lifecycle_rules_and_access(session_factory: SessionFactory, clock: FakeClock, community: None) -> None:
    await resident_in(session_factory, clock, 1, "yinba/1")
    filed = await report(session_factory, clock, 1)
    ticket_id = filed.ticket.id
    async with session_factory() as session:
        with pytest.raises(InvalidTransition):  # notes only after accepting
            await tickets.add_note(session, actor_id=LI_JUAN, ticket_id=ticket_id, text="x", photo=None, now=clock())
        with pytest.raises(AccessDenied):  # grid 2's worker
            await tickets.accept(session, actor_id=200011, ticket_id=ticket_id, now=clock())
        with pytest.raises(HandledElsewhere):  # the reporter follows it; its worker handles it
            await tickets.resolve(session, actor_id=1, ticket_id=ticket_id, note="done", photo=None, now=clock())
        clock.advance(hours=1)
        accepted = await tickets.accept(session, actor_id=LI_JUAN, ticket_id=ticket_id, now=clock())
        assert accepted.status == TicketStatus.IN_PROGRESS
        assert accepted.accepted_at is not None and accepted.accepted_at - accepted.created_at == timedelta(hours=1)
        with pytest.raises(TextTooLong):
            await tickets.resolve(
                session, actor_id=LI_JUAN, ticket_id=ticket_id, note="长" * 801, photo=None, now=clock()
            )
        # Staff may step in on any ticket of their community.
        resolved = await tickets.resolve(
            session, actor_id=STAFF_WANG, ticket_id=ticket_id, note="已修好", photo=None, now=clock()
        )
        assert resolved.status == TicketStatus.RESOLVED


async def test_each_persons_load_follows_their_tickets(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    """Routing reads each person's open tickets from a counter kept as tickets change: it must equal the count."""

    async def loads() -> dict[int, tuple[int, int]]:
        async with session_factory() as session:
            counted = dict(
                (
                    await session.execute(
                        select(Ticket.assignee_id, func.count())
                        .where(Ticket.status.in_(TicketStatus.open_statuses()))
                        .group_by(Ticket.assignee_id)
                    )
                ).all()
            )
            kept = dict((await session.execute(select(User.id, User.open_tickets))).all())
        return {person: (kept[person], counted.get(person, 0)) for person in kept if kept[person] or person in counted}

    await resident_in(session_factory, clock, 1, "yinba/1")
    filed = [await report(session_factory, clock, 1) for _ in range(4)]
    first, second, third = (f.ticket.id for f in filed[:3])
    async with session_factory() as session:
        await tickets.accept(session, actor_id=filed[0].ticket.assignee_id or 0, ticket_id=first, now=clock())
        await tickets.resolve(session, actor_id=STAFF_WANG, ticket_id=first, note="已修好", photo=None, now=clock())
        await tickets.hand_back(
            session, actor_id=filed[1].ticket.assignee_id or 0, ticket_id=second, reason="不归我", now=clock()
        )
        await tickets.accept(session, actor_id=filed[2].ticket.assignee_id or 0, ticket_id=third, now=clock())
    found = await loads()
    assert found and all(kept == counted for kept, counted in found.values()), found
    assert sum(kept for kept, _ in found.values()) == 3  # one resolved, three still open


async def test_category_suggestion_from_keywords(session_factory: SessionFactory, community: None) -> None:
    cat = await category(session_factory, "flying-lead")
    async with session_factory() as session:
        categories = await list_categories(session, cat.community_id)
    assert suggest_category(categories, "楼上有人从窗户拉飞线给电动车充电").code == "flying-lead"  # type: ignore[union-attr]
    assert suggest_category(categories, "楼顶堆了好多建筑垃圾，下雨漏水").code == "rooftop-waste"  # type: ignore[union-attr]
    assert suggest_category(categories, "The street light is broken").code == "light"  # type: ignore[union-attr]
    assert suggest_category(categories, "你好") is None


async def test_a_worker_who_blocked_the_bot_is_passed_over(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    async with session_factory() as session, session.begin():
        await session.execute(update(User).where(User.id == LI_JUAN).values(unreachable_at=clock()))
    await resident_in(session_factory, clock, 1, "yinba/1")
    filed = await report(session_factory, clock, 1)
    assert filed.decision.assignee and filed.decision.assignee.user_id == MA_LI
    async with session_factory() as session, session.begin():
        await session.execute(update(User).where(User.id.in_([MA_LI, ZHANG_WEI])).values(unreachable_at=clock()))
    filed = await report(session_factory, clock, 1)
    assert filed.decision.reason == RouteReason.NO_GRID_WORKER
    assert filed.decision.assignee and filed.decision.assignee.user_id == STAFF_WANG
