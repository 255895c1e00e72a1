"""The seven-step deliberation on the domain directly, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import delete, func, select, update

from domain import deliberation as delib
from domain import ticket_counts, tickets
from domain.community_file import import_community, load_community_file
from domain.errors import AccessDenied, InvalidTransition, NotBound, NotFound
from domain.followers import join
from domain.outbox import Notice
from domain.text import TextEmpty
from storage.db import SessionFactory
from storage.models import (
    Building,
    Category,
    Community,
    Compound,
    EventKind,
    OutboxMessage,
    SurveyVote,
    Ticket,
    TicketCount,
    TicketEvent,
    Topic,
    TopicEvent,
    TopicStatus,
)
from tests.conftest import SAMPLE_COMMUNITY, FakeClock
from tests.households import verify_household
from tests.test_routing import report, resident_in

STAFF_WANG, STAFF_LIU = 100001, 100002
LI_JUAN, YANG_MIN, ZHAO_HONG = 200001, 200011, 200021
RESIDENT, NEIGHBOUR, FAR_AWAY, NEXT_DOOR = 900301, 900302, 900303, 900304


async def notices(sessions: SessionFactory, kind: Notice) -> list[tuple[int, dict[str, object]]]:
    async with sessions() as session:
        rows = await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == kind).order_by(OutboxMessage.id))
        return [(r.chat_id, r.payload) for r in rows]


async def kinds(sessions: SessionFactory, topic_id: int) -> list[str]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(TopicEvent.kind).where(TopicEvent.topic_id == topic_id).order_by(TopicEvent.id)
            )
        )


async def drafted(sessions: SessionFactory, clock: FakeClock, topic_id: int) -> None:
    async with sessions() as session:
        await delib.draft(
            session,
            actor_id=STAFF_WANG,
            topic_id=topic_id,
            title="银巴小区充电桩选址",
            background="飞线充电反复出现",
            options=["3号楼东侧", "小区南门", "不建"],
            now=clock(),
        )


async def test_ticket_to_topic_through_all_seven_steps(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = await report(session_factory, clock, RESIDENT, code="flying-lead")
    await resident_in(session_factory, clock, NEXT_DOOR, "yinba/1")
    await verify_household(session_factory, RESIDENT, clock(), room="101")
    await verify_household(session_factory, NEXT_DOOR, clock(), room="102")
    async with session_factory() as session:
        await join(session, user_id=NEXT_DOOR, ticket_id=filed.ticket.id, now=clock())
    async with session_factory() as session:
        topic = await delib.raise_from_ticket(
            session, actor_id=LI_JUAN, ticket_id=filed.ticket.id, reason="需要全体居民商量", now=clock()
        )
    async with session_factory() as session:
        ticket = await session.get(Ticket, filed.ticket.id)
        assert ticket is not None and ticket.topic_id == topic.id
        ticket_kinds = await session.scalars(select(TicketEvent.kind).where(TicketEvent.ticket_id == ticket.id))
        assert EventKind.DELIBERATION in list(ticket_kinds)
    # Both staff members hear of the new topic (the worker raised it, not staff).
    assert [chat for chat, _ in await notices(session_factory, Notice.TOPIC_CANDIDATE)] == [STAFF_WANG, STAFF_LIU]
    async with session_factory() as session:
        with pytest.raises(delib.AlreadyRaised):
            await delib.raise_from_ticket(session, actor_id=LI_JUAN, ticket_id=filed.ticket.id, reason="x", now=clock())
        with pytest.raises(AccessDenied):  # another grid's worker
            await delib.raise_from_ticket(
                session, actor_id=ZHAO_HONG, ticket_id=filed.ticket.id, reason="x", now=clock()
            )
        with pytest.raises(InvalidTransition):  # not drafted yet
            await delib.open_survey(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
        with pytest.raises(AccessDenied):  # a worker does not move steps
            await delib.draft(
                session, actor_id=LI_JUAN, topic_id=topic.id, title="t", background="b", options=["a", "b"], now=clock()
            )
        with pytest.raises(delib.BadOptions):
            await delib.draft(
                session, actor_id=STAFF_WANG, topic_id=topic.id, title="t", background="b", options=["a"], now=clock()
            )
    await drafted(session_factory, clock, topic.id)
    async with session_factory() as session:
        await delib.open_survey(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
    await resident_in(session_factory, clock, NEIGHBOUR, "yinba/9")  # same compound, another grid
    await resident_in(session_factory, clock, FAR_AWAY, "chaoyang/1")
    await verify_household(session_factory, NEIGHBOUR, clock())
    await verify_household(session_factory, FAR_AWAY, clock())
    async with session_factory() as session:
        await delib.vote(session, user_id=RESIDENT, topic_id=topic.id, option=0, now=clock())
        await delib.vote(session, user_id=RESIDENT, topic_id=topic.id, option=1, now=clock())  # changed
        await delib.vote(session, user_id=NEIGHBOUR, topic_id=topic.id, option=1, now=clock())
        with pytest.raises(AccessDenied):
            await delib.vote(session, user_id=FAR_AWAY, topic_id=topic.id, option=0, now=clock())
        with pytest.raises(NotFound):
            await delib.vote(session, user_id=RESIDENT, topic_id=topic.id, option=3, now=clock())
        results = await delib.survey_results(session, actor_id=STAFF_LIU, topic_id=topic.id)
        assert results.counts == [0, 2, 0]
        with pytest.raises(AccessDenied):
            await delib.survey_results(session, actor_id=LI_JUAN, topic_id=topic.id)
        clock.advance(days=1)
        await delib.record_decision(
            session,
            actor_id=STAFF_WANG,
            topic_id=topic.id,
            decision="在小区南门建充电棚",
            votes=(23, 2, 1),
            now=clock(),
        )
        with pytest.raises(InvalidTransition):  # the survey closed with the decision
            await delib.vote(session, user_id=RESIDENT, topic_id=topic.id, option=0, now=clock())
        task = await delib.add_task(
            session,
            actor_id=STAFF_WANG,
            topic_id=topic.id,
            title="建充电棚",
            responsible="鑫盛物业",
            due_on=date(2026, 12, 20),
            now=clock(),
        )
        with pytest.raises(delib.BadNumber):
            await delib.task_progress(
                session, actor_id=STAFF_WANG, topic_id=topic.id, task_id=task.id, percent=101, note="x", now=clock()
            )
        await delib.task_progress(
            session, actor_id=STAFF_WANG, topic_id=topic.id, task_id=task.id, percent=60, note="地基完成", now=clock()
        )
        with pytest.raises(InvalidTransition):  # public notice only after the feedback step
            await delib.publish_notice(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
        await delib.start_feedback(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
        await delib.publish_notice(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
    async with session_factory() as session:
        done = await session.get(Topic, topic.id)
        assert done is not None and done.status == TopicStatus.NOTICED
        assert (done.votes_for, done.votes_against, done.votes_abstain) == (23, 2, 1)
        assert await session.scalar(select(SurveyVote.option).where(SurveyVote.user_id == RESIDENT)) == 1
    steps = "collected ticket_linked drafted survey_opened voted task_added progress feedback noticed"
    assert await kinds(session_factory, topic.id) == steps.split()
    # The reporter and the household that joined heard the decision, the task, the progress and the notice;
    # the neighbour who only voted did not.
    updates = await notices(session_factory, Notice.TOPIC_UPDATE)
    assert [chat for chat, _ in updates] == [RESIDENT, NEXT_DOOR] * 4


async def test_suggestion_needs_a_building_and_is_narrowed_to_the_compound(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    async with session_factory() as session:
        with pytest.raises(NotBound):
            await delib.suggest(session, user_id=RESIDENT, text="建个充电棚", now=clock())
    await resident_in(session_factory, clock, RESIDENT, "xingfu/1")
    async with session_factory() as session:
        with pytest.raises(TextEmpty):
            await delib.suggest(session, user_id=RESIDENT, text="  ", now=clock())
        topic = await delib.suggest(session, user_id=RESIDENT, text="在幸福小区建个充电棚", now=clock())
    assert topic.status == TopicStatus.COLLECTED and len(topic.compound_ids) == 1
    assert len(await notices(session_factory, Notice.TOPIC_CANDIDATE)) == 2
    async with session_factory() as session:
        with pytest.raises(TextEmpty):
            await delib.dismiss(session, actor_id=STAFF_WANG, topic_id=topic.id, reason="", now=clock())
        await delib.dismiss(session, actor_id=STAFF_WANG, topic_id=topic.id, reason="已有规划", now=clock())
        with pytest.raises(InvalidTransition):
            await delib.dismiss(session, actor_id=STAFF_WANG, topic_id=topic.id, reason="again", now=clock())
        with pytest.raises(AccessDenied):
            await delib.raise_by_staff(session, actor_id=RESIDENT, text="x", now=clock())
        staff_topic = await delib.raise_by_staff(session, actor_id=STAFF_LIU, text="屋顶垃圾清运费用", now=clock())
    assert staff_topic.compound_ids == [] and staff_topic.status == TopicStatus.COLLECTED


async def test_candidates_proposed_once_per_category_compound_and_month(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    await resident_in(session_factory, clock, NEIGHBOUR, "yinba/10")
    await report(session_factory, clock, RESIDENT, code="flying-lead")
    await report(session_factory, clock, NEIGHBOUR, code="flying-lead")
    job = delib.propose_candidates
    async with session_factory() as session:
        assert not (await job(session, clock())).changed
    clock.advance(minutes=5)
    third = await report(session_factory, clock, RESIDENT, code="flying-lead")
    async with session_factory() as session:
        first = await job(session, clock())
        again = await job(session, clock())
    assert len(first.proposed) == 1 and not again.changed
    topic_id = first.proposed[0]
    async with session_factory() as session:
        linked = list(await session.scalars(select(Ticket.id).where(Ticket.topic_id == topic_id)))
        topic = await session.get(Topic, topic_id)
    assert third.ticket.id in linked and len(linked) == 3
    assert topic is not None and topic.status == TopicStatus.CANDIDATE
    assert [chat for chat, _ in await notices(session_factory, Notice.TOPIC_CANDIDATE)] == [STAFF_WANG, STAFF_LIU]
    async with session_factory() as session:
        with pytest.raises(InvalidTransition):
            await delib.open_survey(session, actor_id=STAFF_WANG, topic_id=topic_id, now=clock())
        accepted = await delib.accept_candidate(session, actor_id=STAFF_WANG, topic_id=topic_id, now=clock())
    assert accepted.status == TopicStatus.COLLECTED
    # Next month the same pattern is a new candidate.
    clock.advance(days=31)
    for _ in range(3):
        await report(session_factory, clock, RESIDENT, code="flying-lead")
    async with session_factory() as session:
        assert len((await job(session, clock())).proposed) == 1
        # Another process, or the same after a restart, finds it proposed already.
        assert not (await job(session, clock())).changed


# --- the counts the candidates job reads (domain/ticket_counts.py) ---------------------------------------------


async def counts(sessions: SessionFactory) -> dict[tuple[str, str, str], tuple[int, int | None]]:
    """Every count, as (month, category code, compound code): (tickets, topic id)."""
    async with sessions() as session:
        rows = await session.execute(
            select(TicketCount.month, Category.code, Compound.code, TicketCount.tickets, TicketCount.topic_id)
            .join(Category, Category.id == TicketCount.category_id)
            .join(Compound, Compound.id == TicketCount.compound_id)
        )
        return {(month, category, compound): (n, topic) for month, category, compound, n, topic in rows}


async def test_tickets_are_counted_by_month_of_the_communitys_time_zone_category_and_compound(
    session_factory: SessionFactory, community: None
) -> None:
    """Shanghai is UTC+8: 15:59 UTC on 30 November is still November there, 16:00 UTC is 1 December, though it
    is November in UTC. The count agrees with the tickets counted again from scratch."""
    clock = FakeClock(datetime(2026, 11, 30, 15, 59, tzinfo=UTC))
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    await resident_in(session_factory, clock, NEIGHBOUR, "yinba/10")  # the same compound, another building
    await resident_in(session_factory, clock, FAR_AWAY, "xingfu/1")
    await report(session_factory, clock, RESIDENT, code="flying-lead")
    await report(session_factory, clock, FAR_AWAY, code="flying-lead")
    clock.advance(minutes=1)
    await report(session_factory, clock, RESIDENT, code="flying-lead")
    await report(session_factory, clock, NEIGHBOUR, code="flying-lead")
    await report(session_factory, clock, NEIGHBOUR, code="light")
    expected = {
        ("2026-11", "flying-lead", "yinba"): (1, None),
        ("2026-11", "flying-lead", "xingfu"): (1, None),
        ("2026-12", "flying-lead", "yinba"): (2, None),
        ("2026-12", "light", "yinba"): (1, None),
    }
    assert await counts(session_factory) == expected
    async with session_factory() as session, session.begin():
        community_id = await session.scalar(select(Community.id))
        assert community_id is not None
        assert await ticket_counts.recount(session, community_id) == 4
    assert await counts(session_factory) == expected


async def test_the_job_proposes_from_the_counts_not_the_tickets(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    """It reads the counts alone: a count at the threshold is proposed without a ticket behind it, and tickets
    no count knows of propose nothing, nor does a count below the threshold. The month is the community's: at
    16:30 UTC on 30 November it is December in Shanghai."""
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    for _ in range(3):
        await report(session_factory, clock, RESIDENT, code="flying-lead")
    async with session_factory() as session, session.begin():
        await session.execute(delete(TicketCount))
        community_id = await session.scalar(select(Community.id))
        light = await session.scalar(select(Category.id).where(Category.code == "light"))
        xingfu = await session.scalar(select(Compound.id).where(Compound.code == "xingfu"))
        assert community_id is not None and light is not None and xingfu is not None
        for month, n in (("2026-11", 2), ("2026-12", 3)):
            session.add(
                TicketCount(community_id=community_id, month=month, category_id=light, compound_id=xingfu, tickets=n)
            )
    async with session_factory() as session:
        assert not (await delib.propose_candidates(session, clock())).changed  # November: below the threshold
    clock.now = datetime(2026, 11, 30, 16, 30, tzinfo=UTC)
    async with session_factory() as session:
        [topic_id] = (await delib.propose_candidates(session, clock())).proposed
        topic = await session.get(Topic, topic_id)
    assert topic is not None and topic.candidate_key == f"{light}:{xingfu}:2026-12"
    assert (await counts(session_factory))[("2026-12", "light", "xingfu")] == (3, topic_id)


async def test_a_filing_rolled_back_is_not_counted(
    session_factory: SessionFactory, clock: FakeClock, community: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    await report(session_factory, clock, RESIDENT, code="flying-lead")

    def refused(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the card could not be queued")

    monkeypatch.setattr(tickets, "enqueue_with_next", refused)
    with pytest.raises(RuntimeError):
        await report(session_factory, clock, RESIDENT, code="flying-lead")
    monkeypatch.undo()
    assert await counts(session_factory) == {("2026-11", "flying-lead", "yinba"): (1, None)}
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 1
    # A ticket written inside a savepoint that is rolled back is not counted either; the transaction's own is.
    async with session_factory() as session, session.begin():
        kept = await session.scalar(select(Ticket))
        assert kept is not None
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                session.add(copy_of(kept, clock()))
                await session.flush()
                raise RuntimeError("the savepoint is rolled back")
        session.add(copy_of(kept, clock()))
    assert await counts(session_factory) == {("2026-11", "flying-lead", "yinba"): (2, None)}


def copy_of(ticket: Ticket, now: datetime) -> Ticket:
    names = ("community_id", "category_id", "building_id", "grid_id", "reporter_id", "description")
    return Ticket(**{name: getattr(ticket, name) for name in names}, created_at=now, updated_at=now)


async def test_a_ticket_moved_or_deleted_moves_its_count(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    """Nothing in the bot moves a filed ticket to another category, building or community, or deletes one; were
    anything to, through the session, the counts would follow."""
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    filed = [await report(session_factory, clock, RESIDENT, code="flying-lead") for _ in range(2)]
    async with session_factory() as session, session.begin():
        ticket = await session.get(Ticket, filed[0].ticket.id)
        light = await session.scalar(select(Category.id).where(Category.code == "light"))
        far = await session.scalar(select(Building.id).join(Compound).where(Compound.code == "xingfu"))
        assert ticket is not None and light is not None and far is not None
        ticket.category_id, ticket.building_id = light, far
    assert await counts(session_factory) == {
        ("2026-11", "flying-lead", "yinba"): (1, None),
        ("2026-11", "light", "xingfu"): (1, None),
    }
    async with session_factory() as session, session.begin():
        await session.execute(delete(TicketEvent))
        await session.execute(delete(OutboxMessage))
        gone = await session.get(Ticket, filed[1].ticket.id)
        assert gone is not None
        await session.delete(gone)
    assert await counts(session_factory) == {
        ("2026-11", "flying-lead", "yinba"): (0, None),
        ("2026-11", "light", "xingfu"): (1, None),
    }


async def test_a_dismissed_candidate_or_one_proposed_elsewhere_is_not_proposed_again(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    for _ in range(3):
        await report(session_factory, clock, RESIDENT, code="flying-lead")
    async with session_factory() as session:
        [topic_id] = (await delib.propose_candidates(session, clock())).proposed
        await delib.dismiss(session, actor_id=STAFF_WANG, topic_id=topic_id, reason="已处理", now=clock())
    await report(session_factory, clock, RESIDENT, code="flying-lead")
    async with session_factory() as session:
        assert not (await delib.propose_candidates(session, clock())).changed
    # A count that does not name its topic (proposed by a process whose count was lost, or before the upgrade):
    # the topic's unique key stops a second one, and the count names it from then on.
    async with session_factory() as session, session.begin():
        await session.execute(update(TicketCount).values(topic_id=None))
    async with session_factory() as session:
        assert not (await delib.propose_candidates(session, clock())).changed
    assert await counts(session_factory) == {("2026-11", "flying-lead", "yinba"): (4, topic_id)}
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Topic)) == 1


async def test_a_new_time_zone_counts_the_months_again(session_factory: SessionFactory, community: None) -> None:
    clock = FakeClock(datetime(2026, 11, 30, 17, 0, tzinfo=UTC))  # December in Shanghai, November in UTC
    await resident_in(session_factory, clock, RESIDENT, "yinba/1")
    await report(session_factory, clock, RESIDENT, code="flying-lead")
    assert set(await counts(session_factory)) == {("2026-12", "flying-lead", "yinba")}
    spec = load_community_file(SAMPLE_COMMUNITY)
    async with session_factory() as session:
        await import_community(session, replace(spec, community=replace(spec.community, timezone="UTC")), clock())
    assert await counts(session_factory) == {("2026-11", "flying-lead", "yinba"): (1, None)}
