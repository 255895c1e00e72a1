"""The monthly deliberation (每月一议事) by the seven-step method (七步议事法).

A topic (议题) belongs to one community, optionally narrowed to compounds or buildings. It is raised from a
ticket that needs deliberation, a resident's suggestion (金点子), by staff, or proposed by the bot when one
category keeps being reported in one compound within a month (a candidate, which staff accept or dismiss).
It then moves collected → drafted → surveyed → voted → applied → feedback → noticed (see ``TopicStatus``).

Only staff of the topic's community move it, each step only from the step before, and every step is an event
in the topic's history. Residents behind a topic (reporters and joined households of its tickets, and the
suggester) are told of its decision and progress through the outbox, in the transaction of the change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from domain.broadcasts import create_survey_invitation, queue_recipients
from domain.cards import refresh_copies
from domain.errors import AccessDenied, DomainError, HandledElsewhere, InvalidTransition, NotBound, NotFound
from domain.followers import household_ids
from domain.households import require_verified, verified_household
from domain.outbox import Notice, enqueue, enqueue_joined
from domain.people import display_names, load_duties
from domain.public_notices import post_publicly, private_copies
from domain.text import clean, is_blank, required_text
from domain.ticket_counts import month_key, months_now
from domain.tickets import MAX_NOTE, ticket_access
from storage.db import read_alone
from storage.models import (
    Building,
    Community,
    EventKind,
    Household,
    Membership,
    Role,
    SurveyVote,
    Ticket,
    TicketCount,
    TicketEvent,
    Topic,
    TopicEvent,
    TopicEventKind,
    TopicSource,
    TopicStatus,
    TopicTask,
    User,
)

MAX_SUGGESTION = 800
MAX_TITLE = 100
MAX_BACKGROUND = 1500
MAX_OPTION = 40  # an option is a button label
MIN_OPTIONS, MAX_OPTIONS = 2, 6
MAX_RESPONSIBLE = 100
MAX_VOTES = 100_000  # a meeting's head count, with room to spare; stops typos like 1e9

# Steps in which staff may still set a topic aside: before the meeting has decided anything.
DISMISSABLE = (TopicStatus.CANDIDATE, TopicStatus.COLLECTED, TopicStatus.DRAFTED)
# Residents may look at a topic once it has a title; before that there is nothing to show them.
VISIBLE = TopicStatus.steps()[1:]


class BadOptions(DomainError):
    """A survey needs between MIN_OPTIONS and MAX_OPTIONS options, each short enough for a button."""


class BadNumber(DomainError):
    """A vote count or a percentage out of its range."""


class AlreadyRaised(DomainError):
    """The ticket is on a topic already."""


@dataclass
class CandidateReport:
    """What one run of :func:`propose_candidates` did."""

    proposed: list[int] = field(default_factory=list)  # topic ids

    @property
    def changed(self) -> bool:
        return bool(self.proposed)


@dataclass(frozen=True)
class TopicView:
    """A topic for staff: its history, its tasks, and the names of the people in the history."""

    topic: Topic
    events: list[TopicEvent]
    tasks: list[TopicTask]
    names: dict[int, str]


@dataclass(frozen=True)
class SurveyView:
    """A topic as a resident in its scope sees it, with their household's vote (None: not voted).

    Only a verified household votes (``can_vote``), once: ``by_other_member`` says the household's vote was
    cast by another of its members, whose vote a new one replaces; ``replaced`` says this vote just did.
    """

    topic: Topic
    my_vote: int | None
    can_vote: bool = True
    by_other_member: bool = False
    replaced: bool = False


@dataclass(frozen=True)
class SurveyResults:
    topic: Topic
    counts: list[int]  # per option
    households_voted: int = 0  # verified households that voted
    households_in_scope: int = 0  # households on record (register, or confirmed by a grid worker) in scope

    @property
    def total(self) -> int:
        return sum(self.counts)


def check_options(lines: Iterable[str]) -> list[str]:
    options = [option for option in map(clean, lines) if not is_blank(option)]
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS or any(len(o) > MAX_OPTION for o in options):
        raise BadOptions()
    return options


def check_percent(percent: int) -> int:
    if not 0 <= percent <= 100:
        raise BadNumber()
    return percent


# --- who may do what ---------------------------------------------------------------------------------


async def _require_staff(session: AsyncSession, actor_id: int, community_id: int) -> None:
    if community_id not in (await load_duties(session, actor_id)).staff_community_ids:
        raise AccessDenied(community_id)


async def _staff_communities(session: AsyncSession, actor_id: int) -> list[int]:
    communities = sorted((await load_duties(session, actor_id)).staff_community_ids)
    if not communities:
        raise AccessDenied(actor_id)
    return communities


async def check_staff(session: AsyncSession, *, actor_id: int) -> None:
    """Refuse /newtopic to anyone but staff before they type."""
    async with session.begin():
        await _staff_communities(session, actor_id)


async def _staff_topic(
    session: AsyncSession, actor_id: int, topic_id: int, *steps: TopicStatus, lock: bool = True
) -> Topic:
    """The topic for staff of its community, in one of ``steps`` (any step if none are given).

    Locked unless ``lock`` is False (reading only), so two staff moving it at once go one after the other.
    """
    topic = await session.get(Topic, topic_id, with_for_update=lock)
    if topic is None:
        raise NotFound(topic_id)
    await _require_staff(session, actor_id, topic.community_id)
    if steps and topic.status not in steps:
        raise InvalidTransition(topic.status)
    return topic


async def _in_scope(session: AsyncSession, topic: Topic, user_id: int) -> bool:
    """Whether a resident lives where the topic applies: its buildings, else its compounds, else its community."""
    user = await session.get(User, user_id)
    if user is None or user.building_id is None:
        return False
    building = await session.get(Building, user.building_id)
    if building is None or not building.active:
        return False
    if topic.building_ids:
        return building.id in topic.building_ids
    if topic.compound_ids:
        return building.compound_id in topic.compound_ids
    return building.compound.community_id == topic.community_id


async def _households_in_scope(session: AsyncSession, topic: Topic) -> int:
    """Households on record where the topic applies: the denominator of the survey's turnout."""
    query = select(func.count()).select_from(Household).where(Household.active.is_(True))
    if topic.building_ids:
        query = query.where(Household.building_id.in_(topic.building_ids))
    elif topic.compound_ids:
        query = query.join(Building, Building.id == Household.building_id).where(
            Building.compound_id.in_(topic.compound_ids)
        )
    else:
        query = query.where(Household.community_id == topic.community_id)
    return int(await session.scalar(query) or 0)


async def staff_ids(session: AsyncSession, community_id: int) -> list[int]:
    return list(
        await session.scalars(
            select(Membership.user_id)
            .where(
                Membership.community_id == community_id,
                Membership.role == Role.STAFF,
                Membership.active.is_(True),
            )
            .order_by(Membership.id)
        )
    )


# --- history and notices -----------------------------------------------------------------------------


async def _record(
    session: AsyncSession,
    topic: Topic,
    kind: TopicEventKind,
    actor_id: int | None,
    now: datetime,
    note: str = "",
    **data: object,
) -> TopicEvent:
    event = TopicEvent(topic_id=topic.id, at=now, actor_id=actor_id, kind=kind, note=note, data=data)
    session.add(event)
    topic.updated_at = now
    await session.flush()
    return event


async def residents_behind(session: AsyncSession, topic: Topic) -> list[int]:
    """The suggester, then the reporters and joined households of the topic's tickets, each once."""
    found: list[int] = []
    if topic.source == TopicSource.SUGGESTION and topic.raised_by is not None:
        found.append(topic.raised_by)
    for ticket in await session.scalars(select(Ticket).where(Ticket.topic_id == topic.id).order_by(Ticket.id)):
        found += await household_ids(session, ticket)
    return list(dict.fromkeys(found))


async def _tell_residents(
    session: AsyncSession, topic: Topic, event: TopicEvent, now: datetime, also: Iterable[int] = ()
) -> None:
    """The residents behind the topic, and ``also`` these, each once."""
    for user_id in dict.fromkeys([*await residents_behind(session, topic), *also]):
        enqueue(session, user_id, Notice.TOPIC_UPDATE, now, topic_id=topic.id, event_id=event.id)


async def _tell_staff(session: AsyncSession, topic: Topic, now: datetime, skip: int | None = None) -> None:
    """A new topic waits for staff: a candidate to accept or dismiss, or one raised by a resident or worker. Topics
    not yet told go in one message."""
    for user_id in await staff_ids(session, topic.community_id):
        if user_id != skip:
            await enqueue_joined(session, user_id, Notice.TOPIC_CANDIDATE, now, "topic_ids", topic.id)


# --- step 1: collecting ------------------------------------------------------------------------------


async def _ticket_to_raise(session: AsyncSession, actor_id: int, ticket_id: int) -> Ticket:
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        raise NotFound(ticket_id)
    if not (await ticket_access(session, actor_id, ticket)).duties.can_take_to_deliberation(ticket):
        raise HandledElsewhere(ticket_id)  # its households, and its workers once it is above their level
    if not ticket.is_open:
        raise InvalidTransition(ticket.status)
    if ticket.topic_id is not None:
        raise AlreadyRaised(ticket.topic_id)
    return ticket


async def check_ticket(session: AsyncSession, *, actor_id: int, ticket_id: int) -> None:
    """Refuse the "needs deliberation" button before anyone types a reason."""
    async with session.begin():
        await _ticket_to_raise(session, actor_id, ticket_id)


async def raise_from_ticket(
    session: AsyncSession, *, actor_id: int, ticket_id: int, reason: str, now: datetime
) -> Topic:
    """A grid worker of the ticket's grid, or staff of its community, says an open ticket at their level needs
    deliberation (Duties.can_take_to_deliberation).

    The new topic is narrowed to the ticket's compound and linked to the ticket, so its households hear
    what the meeting decides. Staff are told (but the one who raised it).
    """
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_to_raise(session, actor_id, ticket_id)
        topic = Topic(
            community_id=ticket.community_id,
            source=TopicSource.TICKET,
            raised_by=actor_id,
            origin_note=reason,
            compound_ids=[ticket.building.compound_id],
            category_id=ticket.category_id,
            created_at=now,
            updated_at=now,
        )
        session.add(topic)
        await session.flush()
        ticket.topic_id = topic.id
        await _record(session, topic, TopicEventKind.COLLECTED, actor_id, now, reason, source=TopicSource.TICKET)
        await _record(session, topic, TopicEventKind.TICKET_LINKED, actor_id, now, ticket_id=ticket.id)
        session.add(
            TicketEvent(
                ticket_id=ticket.id,
                at=now,
                actor_id=actor_id,
                kind=EventKind.DELIBERATION,
                note=reason,
                data={"topic_id": topic.id},
            )
        )
        await refresh_copies(session, ticket, now)  # its cards lose "needs deliberation"
        await _tell_staff(session, topic, now, skip=actor_id)
    return topic


async def suggest(session: AsyncSession, *, user_id: int, text: str, now: datetime) -> Topic:
    """A resident's suggestion (金点子): a topic of their compound, collected; staff are told."""
    text = required_text(text, MAX_SUGGESTION)
    async with session.begin():
        user = await session.get(User, user_id)
        building = None if user is None or user.building_id is None else await session.get(Building, user.building_id)
        if building is None or not building.active:
            raise NotBound()
        topic = Topic(
            community_id=building.compound.community_id,
            source=TopicSource.SUGGESTION,
            raised_by=user_id,
            origin_note=text,
            compound_ids=[building.compound_id],
            created_at=now,
            updated_at=now,
        )
        session.add(topic)
        await session.flush()
        await _record(session, topic, TopicEventKind.COLLECTED, user_id, now, text, source=TopicSource.SUGGESTION)
        await _tell_staff(session, topic, now)
    return topic


async def raise_by_staff(session: AsyncSession, *, actor_id: int, text: str, now: datetime) -> Topic:
    """Staff write a topic directly, for the whole community they staff (the first, if several)."""
    text = required_text(text, MAX_SUGGESTION)
    async with session.begin():
        communities = await _staff_communities(session, actor_id)
        topic = Topic(
            community_id=communities[0],
            source=TopicSource.STAFF,
            raised_by=actor_id,
            origin_note=text,
            created_at=now,
            updated_at=now,
        )
        session.add(topic)
        await session.flush()
        await _record(session, topic, TopicEventKind.COLLECTED, actor_id, now, text, source=TopicSource.STAFF)
    return topic


async def propose_candidates(session: AsyncSession, now: datetime) -> CandidateReport:
    """Propose a topic for every category reported ``candidate_threshold`` times in one compound this month.

    It reads the month's counts (``ticket_counts``, kept as tickets are written: domain/ticket_counts.py) that
    have reached their community's threshold and have no topic yet, for every community in one query, and no
    ticket but those it links to a new topic. The candidate's key (category, compound, month) is unique per
    community, so whatever runs twice, in two processes or after a restart, proposes it once; the count names
    its topic from then on, also once dismissed, so a dismissed candidate is not proposed again that month.
    The month's tickets not on a topic yet are linked to it, and staff are told.
    """
    report = CandidateReport()
    lowest = select(func.min(Community.candidate_threshold)).scalar_subquery()
    own = Community.id == TicketCount.community_id
    found = await read_alone(  # one statement that only reads
        session,
        select(
            TicketCount.community_id,
            TicketCount.month,
            TicketCount.category_id,
            TicketCount.compound_id,
            select(Community.timezone).where(own).scalar_subquery().label("timezone"),
        )
        .where(
            # The range of ix_ticket_counts_unproposed: no count that has its topic, none below every
            # community's threshold; then each community's own threshold, by its primary key.
            TicketCount.month.in_(months_now(now)),
            TicketCount.tickets >= lowest,
            TicketCount.topic_id.is_(None),
            TicketCount.tickets >= select(Community.candidate_threshold).where(own).scalar_subquery(),
        )
        .order_by(TicketCount.community_id, TicketCount.month, TicketCount.category_id, TicketCount.compound_id),
    )
    for count in found:
        key, start = month_key(now, count.timezone)
        if key != count.month:
            continue  # the month is current in other time zones, not in this community's
        async with session.begin():
            topic = await _propose(session, count.community_id, key, start, count.category_id, count.compound_id, now)
        if topic is not None:
            report.proposed.append(topic.id)
    return report


async def _propose(
    session: AsyncSession,
    community_id: int,
    month: str,
    start: datetime,
    category_id: int,
    compound_id: int,
    now: datetime,
) -> Topic | None:
    key = f"{category_id}:{compound_id}:{month}"
    counted = (
        update(TicketCount)
        .where(
            TicketCount.community_id == community_id,
            TicketCount.month == month,
            TicketCount.category_id == category_id,
            TicketCount.compound_id == compound_id,
        )
        .execution_options(synchronize_session=False)
    )
    topic = Topic(
        community_id=community_id,
        status=TopicStatus.CANDIDATE,
        source=TopicSource.CANDIDATE,
        compound_ids=[compound_id],
        candidate_key=key,
        category_id=category_id,
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(topic)
            await session.flush()
    except IntegrityError:
        # Proposed already: by another process a moment ago (which named it on the count too), or before the
        # count named its topic. Named now, so that no later run reads the count again.
        known = select(Topic.id).where(Topic.community_id == community_id, Topic.candidate_key == key)
        await session.execute(counted.values(topic_id=known.scalar_subquery()))
        return None
    await session.execute(counted.values(topic_id=topic.id))
    ticket_ids = list(
        await session.scalars(
            select(Ticket.id)
            .join(Building, Building.id == Ticket.building_id)
            .where(
                Ticket.community_id == community_id,
                Ticket.category_id == category_id,
                Building.compound_id == compound_id,
                Ticket.created_at >= start,
                Ticket.topic_id.is_(None),
            )
            .order_by(Ticket.id)
        )
    )
    await session.execute(update(Ticket).where(Ticket.id.in_(ticket_ids)).values(topic_id=topic.id))
    await _record(
        session,
        topic,
        TopicEventKind.PROPOSED,
        None,
        now,
        category_id=category_id,
        compound_id=compound_id,
        ticket_ids=ticket_ids,
    )
    await _tell_staff(session, topic, now)
    return topic


async def accept_candidate(session: AsyncSession, *, actor_id: int, topic_id: int, now: datetime) -> Topic:
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.CANDIDATE)
        topic.status = TopicStatus.COLLECTED
        await _record(session, topic, TopicEventKind.COLLECTED, actor_id, now, source=TopicSource.CANDIDATE)
    return topic


async def dismiss(session: AsyncSession, *, actor_id: int, topic_id: int, reason: str, now: datetime) -> Topic:
    """Set a topic aside, with a reason, before the meeting has decided it."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, *DISMISSABLE)
        topic.status = TopicStatus.DISMISSED
        await _record(session, topic, TopicEventKind.DISMISSED, actor_id, now, reason)
    return topic


async def check_step(session: AsyncSession, *, actor_id: int, topic_id: int, steps: Iterable[TopicStatus]) -> Topic:
    """Refuse a button before anyone types: the topic must be staff's own and in one of ``steps``."""
    async with session.begin():
        return await _staff_topic(session, actor_id, topic_id, *steps, lock=False)


# --- steps 2-4: draft, survey, meeting -----------------------------------------------------------------


async def draft(
    session: AsyncSession,
    *,
    actor_id: int,
    topic_id: int,
    title: str,
    background: str,
    options: Iterable[str],
    now: datetime,
) -> Topic:
    """Write (or rewrite, until the survey opens) the title, background and the survey's options."""
    title, background, choices = (
        required_text(title, MAX_TITLE),
        required_text(background, MAX_BACKGROUND),
        check_options(options),
    )
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.COLLECTED, TopicStatus.DRAFTED)
        topic.title, topic.background, topic.options = title, background, choices
        topic.status = TopicStatus.DRAFTED
        await _record(session, topic, TopicEventKind.DRAFTED, actor_id, now, options=choices)
    return topic


async def open_survey(session: AsyncSession, *, actor_id: int, topic_id: int, now: datetime) -> Topic:
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.DRAFTED)
        topic.status = TopicStatus.SURVEYED
        invitation = await create_survey_invitation(session, topic, actor_id, now)
        await _record(session, topic, TopicEventKind.SURVEY_OPENED, actor_id, now, broadcast_id=invitation.id)
    await queue_recipients(session, invitation.id, now)
    return topic


async def _resident_topic(session: AsyncSession, user_id: int, topic_id: int) -> Topic:
    topic = await session.get(Topic, topic_id)
    if topic is None or not await _in_scope(session, topic, user_id):
        raise AccessDenied(topic_id)
    if topic.status not in VISIBLE:
        raise InvalidTransition(topic.status)
    return topic


async def _household_vote(session: AsyncSession, topic_id: int, household_id: int) -> SurveyVote | None:
    return await session.scalar(
        select(SurveyVote).where(SurveyVote.topic_id == topic_id, SurveyVote.household_id == household_id)
    )


async def survey_view(session: AsyncSession, *, user_id: int, topic_id: int) -> SurveyView:
    """The topic for a resident in its scope, once it is drafted, with their household's vote; refused for
    anyone else. A resident who is not verified sees it too, without a vote."""
    async with session.begin():
        topic = await _resident_topic(session, user_id, topic_id)
        household = await verified_household(session, user_id)
        if household is None or household.household_id is None:
            return SurveyView(topic, None, can_vote=False)
        vote = await _household_vote(session, topic_id, household.household_id)
        if vote is None:
            return SurveyView(topic, None)
        return SurveyView(topic, vote.option, by_other_member=vote.user_id != user_id)


async def vote(session: AsyncSession, *, user_id: int, topic_id: int, option: int, now: datetime) -> SurveyView:
    """One vote per household in scope, changeable while the survey is open: only a verified resident votes,
    and a member's vote replaces the one another member of the household cast before."""
    async with session.begin():
        topic = await _resident_topic(session, user_id, topic_id)
        if topic.status != TopicStatus.SURVEYED:
            raise InvalidTransition(topic.status)
        if not 0 <= option < len(topic.options):
            raise NotFound(option)
        user = await session.get(User, user_id)
        assert user is not None and user.building_id is not None  # in scope
        household = (await require_verified(session, user_id, user.building_id)).household_id
        assert household is not None  # a verified row names its household
        found = await _household_vote(session, topic_id, household)
        replaced = found is not None and found.user_id != user_id
        if found is None:
            session.add(
                SurveyVote(topic_id=topic_id, household_id=household, user_id=user_id, option=option, voted_at=now)
            )
        else:
            found.user_id, found.option, found.voted_at = user_id, option, now
        return SurveyView(topic, option, replaced=replaced)


async def survey_results(session: AsyncSession, *, actor_id: int, topic_id: int) -> SurveyResults:
    """How the survey stands (or ended), for staff of the topic's community."""
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, lock=False)
        rows = await session.execute(
            select(SurveyVote.option, func.count()).where(SurveyVote.topic_id == topic_id).group_by(SurveyVote.option)
        )
        counts = [0] * len(topic.options)
        for option, count in rows:
            if 0 <= option < len(counts):
                counts[option] = count
        # Households still on record: one that moved out of the register after voting keeps its vote in the
        # totals (it was cast by a verified household) but is no longer one of the households in scope.
        voted = await session.scalar(
            select(func.count())
            .select_from(SurveyVote)
            .join(Household, Household.id == SurveyVote.household_id)
            .where(SurveyVote.topic_id == topic_id, Household.active.is_(True))
        )
        return SurveyResults(topic, counts, int(voted or 0), await _households_in_scope(session, topic))


async def record_decision(
    session: AsyncSession,
    *,
    actor_id: int,
    topic_id: int,
    decision: str,
    votes: tuple[int, int, int],
    now: datetime,
) -> Topic:
    """The meeting's decision and its vote (for, against, abstain); closes the survey; residents are told."""
    decision = required_text(decision, MAX_NOTE)
    if any(not 0 <= n <= MAX_VOTES for n in votes):
        raise BadNumber()
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.SURVEYED)
        topic.decision, topic.decided_at = decision, now
        topic.votes_for, topic.votes_against, topic.votes_abstain = votes
        topic.status = TopicStatus.VOTED
        event = await _record(
            session,
            topic,
            TopicEventKind.VOTED,
            actor_id,
            now,
            decision,
            votes_for=votes[0],
            votes_against=votes[1],
            votes_abstain=votes[2],
        )
        await _tell_residents(session, topic, event, now)
    return topic


# --- steps 5-7: applying, feedback, public notice -------------------------------------------------------


async def add_task(
    session: AsyncSession,
    *,
    actor_id: int,
    topic_id: int,
    title: str,
    responsible: str,
    due_on: date,
    now: datetime,
) -> TopicTask:
    """A piece of the decision's execution; the first one moves the topic to "applied"."""
    title, responsible = required_text(title, MAX_TITLE), required_text(responsible, MAX_RESPONSIBLE)
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.VOTED, TopicStatus.APPLIED)
        task = TopicTask(
            topic_id=topic.id, title=title, responsible=responsible, due_on=due_on, created_at=now, updated_at=now
        )
        session.add(task)
        await session.flush()
        topic.status = TopicStatus.APPLIED
        event = await _record(session, topic, TopicEventKind.TASK_ADDED, actor_id, now, task_id=task.id)
        await _tell_residents(session, topic, event, now)
    return task


async def task_progress(
    session: AsyncSession,
    *,
    actor_id: int,
    topic_id: int,
    task_id: int,
    percent: int,
    note: str,
    now: datetime,
) -> TopicTask:
    """How far a task is (0-100 %) and what was done; residents are told."""
    note, percent = required_text(note, MAX_NOTE), check_percent(percent)
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.APPLIED, TopicStatus.FEEDBACK)
        task = await session.get(TopicTask, task_id, with_for_update=True)
        if task is None or task.topic_id != topic.id:
            raise NotFound(task_id)
        task.progress, task.updated_at = percent, now
        event = await _record(
            session, topic, TopicEventKind.PROGRESS, actor_id, now, note, task_id=task.id, percent=percent
        )
        await _tell_residents(session, topic, event, now)
    return task


async def check_task(session: AsyncSession, *, actor_id: int, topic_id: int, task_id: int) -> TopicTask:
    """Refuse a progress button before anyone types: staff's own topic, the right step, a task of that topic."""
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.APPLIED, TopicStatus.FEEDBACK, lock=False)
        task = await session.get(TopicTask, task_id)
        if task is None or task.topic_id != topic.id:
            raise NotFound(task_id)
        return task


async def start_feedback(session: AsyncSession, *, actor_id: int, topic_id: int, now: datetime) -> Topic:
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.APPLIED)
        topic.status = TopicStatus.FEEDBACK
        await _record(session, topic, TopicEventKind.FEEDBACK, actor_id, now)
    return topic


async def publish_notice(session: AsyncSession, *, actor_id: int, topic_id: int, now: datetime) -> Topic:
    """The last step: the outcome is publicly noticed (公示反馈) and the topic is finished.

    The residents behind the topic are told privately, as of every step before: it is their own matter. If the
    community has a public notice chat, the notice is posted there as one post, and goes privately also to the
    residents who asked for a private copy of the public notices (/settings), like the execution feedback;
    nobody else gets a private message for it.
    """
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, TopicStatus.FEEDBACK)
        topic.status, topic.noticed_at = TopicStatus.NOTICED, now
        event = await _record(session, topic, TopicEventKind.NOTICED, actor_id, now)
        posted = await post_publicly(session, topic.community_id, now, topic_id=topic.id, event_id=event.id)
        copies = await private_copies(session, topic.community_id) if posted else []
        await _tell_residents(session, topic, event, now, also=copies)
    return topic


# --- reading ------------------------------------------------------------------------------------------


STEP_ORDER = {
    status: i for i, status in enumerate((TopicStatus.CANDIDATE, *TopicStatus.steps(), TopicStatus.DISMISSED))
}


async def topics_for_staff(session: AsyncSession, *, actor_id: int, limit: int = 40) -> list[Topic]:
    """Topics of the communities someone staffs, by step (candidates first, finished last), newest first."""
    async with session.begin():
        communities = await _staff_communities(session, actor_id)
        found = list(
            await session.scalars(
                select(Topic)
                .where(Topic.community_id.in_(communities), Topic.status != TopicStatus.DISMISSED)
                .order_by(Topic.id.desc())
            )
        )
    return sorted(found, key=lambda t: STEP_ORDER[TopicStatus(t.status)])[:limit]


async def view_topic(session: AsyncSession, *, actor_id: int, topic_id: int) -> TopicView:
    async with session.begin():
        topic = await _staff_topic(session, actor_id, topic_id, lock=False)
        return await load_view(session, topic)


async def load_view(session: AsyncSession, topic: Topic) -> TopicView:
    """The topic's history, tasks and names, inside the caller's transaction."""
    events = list(
        await session.scalars(select(TopicEvent).where(TopicEvent.topic_id == topic.id).order_by(TopicEvent.id))
    )
    tasks = list(await session.scalars(select(TopicTask).where(TopicTask.topic_id == topic.id).order_by(TopicTask.id)))
    names = await display_names(session, topic.community_id, [e.actor_id for e in events])
    return TopicView(topic, events, tasks, names)
