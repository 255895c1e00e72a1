"""The seven-step deliberation on the domain directly, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from domain import deliberation as delib
from domain.errors import AccessDenied, InvalidTransition, NotBound, NotFound
from domain.followers import join
from domain.outbox import Notice
from domain.text import TextEmpty
from storage.db import SessionFactory
from storage.models import EventKind, OutboxMessage, SurveyVote, Ticket, TicketEvent, Topic, TopicEvent, TopicStatus
from tests.conftest import FakeClock
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
    # As the scheduler runs it: after its first run, the job counts only the categories reported since.
    job = delib.CandidateWatch()
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
        # A fresh process (a restart) counts the whole month and finds it proposed already.
        assert not (await delib.CandidateWatch()(session, clock())).changed
