"""The ticket lifecycle: filed → routed → accepted → progress notes → resolved, with hand-backs.

Every change appends an event to the ticket's history and queues the notices it causes in the same
transaction. Access is checked here, for every action, because button data can be forged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from domain.cards import refresh_copies
from domain.deadlines import start_window, wake_after_change
from domain.errors import AccessDenied, DomainError, HandledElsewhere, InvalidTransition, NotBound, NotFound
from domain.followers import households, is_household, tell_households
from domain.households import SPEAKS_FOR
from domain.month_summary import mark_filed
from domain.outbox import Notice, enqueue_with_next
from domain.people import Duties, Person, display_names, load_duties
from domain.routing import RoutingDecision, add_load, choose_assignee, record_assignment
from domain.text import TextTooLong, clean, is_blank, required_text
from domain.ticket_counts import count_filed
from domain.ticket_counts import know as know_counted
from storage.db import execute_pipelined, hold_writes, read_pipelined
from storage.models import (
    Building,
    Category,
    Community,
    EventKind,
    Level,
    PhotoStage,
    Ticket,
    TicketEvent,
    TicketFollower,
    TicketPhoto,
    TicketStatus,
)

MAX_DESCRIPTION = 800  # leaves room for the card's header inside Telegram's 1024-character caption
MAX_NOTE = 800
MAX_PHOTOS = 3
MAX_CAPTION = 960  # a photo's caption, shown under the ticket's title within Telegram's 1024 characters


class NobodyToHandTo(DomainError):
    """Everyone who could take the ticket has already handed it back."""


@dataclass
class ReportDraft:
    category_id: int
    description: str
    photos: list[str] = field(default_factory=list)
    latitude: float | None = None
    longitude: float | None = None
    captions: dict[str, str] = field(default_factory=dict)  # by photo: what the resident wrote on it


@dataclass(frozen=True)
class FiledTicket:
    ticket: Ticket
    decision: RoutingDecision


@dataclass(frozen=True)
class TicketView:
    """A ticket with its history and the names of the workers in it."""

    ticket: Ticket
    events: list[TicketEvent]
    names: dict[int, str]
    for_resident: bool = False  # a household that is no worker of it: no internal reasons (see TicketAccess)


@dataclass(frozen=True)
class TicketCard:
    """What a worker's card shows: the ticket, who has it, and the latest hand-back with its reason.

    ``handed_back`` is the latest hand-back, escalation or send-down (see its ``kind``). ``can_act`` is False
    for a viewer who may see the ticket but not work it now (a grid worker once it is above the grid).
    """

    ticket: Ticket
    names: dict[int, str]
    handed_back: TicketEvent | None
    can_act: bool = True
    households: int = 1  # the reporter and every household that joined ("me too")
    reopened: TicketEvent | None = None  # the latest "not fixed" from a resident, with the reason


@dataclass(frozen=True)
class TicketAccess:
    """What someone gets of a ticket, decided from their duties, never from the button they pressed."""

    duties: Duties
    as_worker: bool  # the worker's card and history (Duties.sees_as_worker); else the resident's view
    can_act: bool  # may work it at its current level (Duties.can_handle)


async def ticket_access(session: AsyncSession, user_id: int, ticket: Ticket) -> TicketAccess:
    """Inside the caller's transaction. Anyone who is neither a worker of the ticket nor one of its households
    (the reporter, or one who joined) is refused, as for a ticket that does not exist."""
    duties = await load_duties(session, user_id)
    as_worker = duties.sees_as_worker(ticket, user_id)
    if not as_worker and not await is_household(session, ticket, user_id):
        raise AccessDenied(ticket.id)
    return TicketAccess(duties, as_worker, as_worker and duties.can_handle(ticket, user_id))


def check_description(text: str) -> str:
    """A report's description, cleaned; checked as it is typed, and again when the report is filed."""
    return required_text(text, MAX_DESCRIPTION)


def check_caption(text: str | None) -> str:
    """A photo's caption, cleaned; none at all is fine (TextTooLong past MAX_CAPTION)."""
    cleaned = clean(text or "")
    if len(cleaned) > MAX_CAPTION:
        raise TextTooLong(MAX_CAPTION)
    return "" if is_blank(cleaned) else cleaned


# A plain table statement: a new ticket's first two history events, in one go.
_INSERT_EVENTS = insert(cast(Table, TicketEvent.__table__))

# What a new ticket's row needs before its INSERT, in one read: its id, and whether the reporter speaks for a
# household of the building. With both known the INSERT needs nothing back, so on SQLite the read goes with the
# routing's query and the INSERT with the COMMIT: two trips to SQLite's thread in all (storage/db.py). Under
# BEGIN IMMEDIATE nobody else adds a ticket before the COMMIT, and one more than the largest id is the id SQLite
# itself gives a new row; PostgreSQL takes it from the table's sequence, as its INSERT would.
# The community's time zone rides along: the ticket's count (domain/ticket_counts.py) is kept by its month there.
_TIMEZONE = select(Community.timezone).where(Community.id == bindparam("community")).scalar_subquery()
_NEW_TICKET = {
    "sqlite": select(func.coalesce(func.max(Ticket.id), 0) + 1, SPEAKS_FOR, _TIMEZONE),
    "postgresql": select(func.nextval(func.pg_get_serial_sequence("tickets", "id")), SPEAKS_FOR, _TIMEZONE),
}


async def file_report(
    session: AsyncSession,
    *,
    reporter: Person,
    building: Building,
    category: Category,
    draft: ReportDraft,
    now: datetime,
) -> FiledTicket:
    """Turn a confirmed wizard into a ticket and hand it to the right person at once.

    ``building`` and ``category`` come from the server's own records (the resident's home, the category the
    wizard checked); here they are checked against each other and the reporter, never taken on trust.
    """
    description = check_description(draft.description)
    if len(draft.photos) > MAX_PHOTOS:
        raise ValueError("too many photos")
    if reporter.building_id != building.id or not building.active:
        raise NotBound()
    community_id = building.compound.community_id
    if category.id != draft.category_id or not category.active or category.community_id != community_id:
        raise NotFound(draft.category_id)
    async with session.begin():
        new_ticket = _NEW_TICKET[session.get_bind().dialect.name]
        params = {"resident": reporter.id, "building": building.id, "community": community_id}
        known = await session.run_sync(_begin_filing, new_ticket, params)
        decision = await choose_assignee(
            session, community_id=community_id, grid_id=building.grid_id, category_level=category.level
        )
        [(ticket_id, verified, timezone)] = known
        know_counted(
            session,
            community_id=community_id,
            timezone=timezone,
            building_id=building.id,
            compound_id=building.compound_id,
        )
        ticket = Ticket(
            id=ticket_id,
            community_id=community_id,
            category_id=category.id,
            building_id=building.id,
            unit=reporter.unit,
            grid_id=building.grid_id,
            reporter_id=reporter.id,
            description=description,
            reporter_verified=bool(verified),
            latitude=draft.latitude,
            longitude=draft.longitude,
            created_at=now,
            photos=[
                TicketPhoto(file_id=f, stage=PhotoStage.REPORT, caption=check_caption(draft.captions.get(f)))
                for f in draft.photos
            ],
        )
        _apply_decision(ticket, decision, now)
        start_window(ticket, category, now)
        ticket.wake_at = wake_after_change(ticket)
        await session.run_sync(_insert_filed, ticket, decision, now, reporter.id)
    return FiledTicket(ticket, decision)


# The columns filing sets; the INSERT gives the others their defaults.
_FILED = (
    "id",
    "community_id",
    "category_id",
    "building_id",
    "unit",
    "grid_id",
    "reporter_id",
    "description",
    "reporter_verified",
    "latitude",
    "longitude",
    "created_at",
    "status",
    "level",
    "accepted_at",
    "updated_at",
    "assignee_id",
    "respond_by",
    "resolve_by",
    "wake_at",
)
_INSERT_TICKET = insert(cast(Table, Ticket.__table__))
_INSERT_PHOTOS = insert(cast(Table, TicketPhoto.__table__))


def _begin_filing(session: Session, new_ticket: Any, params: dict[str, int]) -> list[Any]:
    """The transaction's first read, its writes held for one statement at the commit (storage.db.hold_writes)."""
    hold_writes(session)
    return read_pipelined(session, new_ticket, params)


def _insert_filed(session: Session, ticket: Ticket, decision: RoutingDecision, now: datetime, reported_by: int) -> None:
    """The new ticket's row and photos, by plain statements sent with the transaction's next trip: nothing is read
    back (its id was read before), where the session's flush of the object cost a quarter of filing. The ticket
    stays out of the session, so this does what the flush's hooks would for a new ticket: its wake (set by the
    caller), its assignee's load, the ended month it may count in, its month's count (its durations are None until
    it is accepted).
    Then its history and card (_routing_writes), in the same call into the session's sync layer. On PostgreSQL all of
    it, with the commit hooks' writes, is one statement at the commit (storage.db.hold_writes)."""
    execute_pipelined(session, _INSERT_TICKET, {name: getattr(ticket, name) for name in _FILED})
    if ticket.photos:
        photos = [
            {"ticket_id": ticket.id, "file_id": p.file_id, "stage": p.stage, "caption": p.caption}
            for p in ticket.photos
        ]
        execute_pipelined(session, _INSERT_PHOTOS, photos)
    if ticket.assignee_id is not None:
        add_load(session, {ticket.assignee_id: 1})
    mark_filed(session, ticket.community_id, ticket.created_at)
    count_filed(session, ticket)
    _routing_writes(session, ticket, decision, now, reported_by)


def _apply_decision(ticket: Ticket, decision: RoutingDecision, now: datetime) -> None:
    ticket.status = TicketStatus.ASSIGNED
    ticket.level = decision.level
    ticket.accepted_at = None
    ticket.updated_at = now
    ticket.assignee_id = decision.assignee.user_id if decision.assignee else None


async def _record_routing(session: AsyncSession, ticket: Ticket, decision: RoutingDecision, now: datetime) -> None:
    """The routing event with its reason, and the new assignee's card."""
    await session.run_sync(_routing_writes, ticket, decision, now)


def _routing_writes(
    session: Session, ticket: Ticket, decision: RoutingDecision, now: datetime, reported_by: int | None = None
) -> None:
    """_record_routing's writes. ``reported_by``: a new ticket, whose "created" event comes first; both go in one
    statement that nothing waits for (execute_pipelined)."""
    routed = {"ticket_id": ticket.id, "at": now, "actor_id": None, "kind": EventKind.ROUTED, "note": ""}
    if reported_by is None:
        session.add(TicketEvent(**routed, data=decision.as_event_data()))
    else:
        created = {"ticket_id": ticket.id, "at": now, "actor_id": reported_by, "kind": EventKind.CREATED, "note": ""}
        rows = [{**created, "data": {}}, {**routed, "data": decision.as_event_data()}]
        execute_pipelined(session, _INSERT_EVENTS, rows)
    if decision.assignee is None:
        return
    record_assignment(session, community_id=ticket.community_id, user_id=decision.assignee.user_id, now=now)
    notices = [(decision.assignee.user_id, Notice.TICKET_CARD, {"ticket_id": ticket.id})]
    if any(photo.stage == PhotoStage.REPORT for photo in ticket.photos):
        notices.append((decision.assignee.user_id, Notice.TICKET_PHOTOS, {"ticket_id": ticket.id}))
    enqueue_with_next(session, notices, now)


async def _ticket_for_worker(session: AsyncSession, actor_id: int, ticket_id: int) -> Ticket:
    """The ticket, locked, for someone who may work it now: its assignee, or a colleague of its level who may
    step in (Duties.can_handle). Who may only follow it is told someone else handles it, before its status is
    looked at: "out of date" is for the one whose button it was."""
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        raise NotFound(ticket_id)
    if not (await ticket_access(session, actor_id, ticket)).can_act:
        raise HandledElsewhere(ticket_id)
    return ticket


async def check_in_progress(session: AsyncSession, *, actor_id: int, ticket_id: int) -> None:
    """Refuse a progress note or resolution, as the action would, before anyone types the text it asks for."""
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        if ticket.status != TicketStatus.IN_PROGRESS:
            raise InvalidTransition(ticket.status)


async def check_can_hand_back(session: AsyncSession, *, actor_id: int, ticket_id: int) -> None:
    """Refuse a hand-back, as the action would, before anyone types the reason."""
    async with session.begin():
        _check_hand_back(await _ticket_for_worker(session, actor_id, ticket_id), actor_id)


def _check_hand_back(ticket: Ticket, actor_id: int) -> None:
    if ticket.assignee_id != actor_id:
        raise HandledElsewhere(ticket.id)  # colleagues step in, but only the assignee passes it on
    if not ticket.is_open:
        raise InvalidTransition(ticket.status)
    if ticket.level not in (Level.GRID, Level.COMMUNITY):
        raise InvalidTransition(ticket.level)  # above the community, a ticket is sent down instead


async def _record(
    session: AsyncSession,
    ticket: Ticket,
    kind: EventKind,
    actor_id: int,
    now: datetime,
    note: str = "",
    photo: str | None = None,
    stage: PhotoStage = PhotoStage.PROGRESS,
) -> TicketEvent:
    event = TicketEvent(ticket_id=ticket.id, at=now, actor_id=actor_id, kind=kind, note=note)
    session.add(event)
    ticket.updated_at = now
    await session.flush()
    if photo is not None:
        ticket.photos.append(TicketPhoto(file_id=photo, stage=stage, event_id=event.id))
    return event


async def _tell_reporter(session: AsyncSession, ticket: Ticket, event: TicketEvent, now: datetime) -> None:
    """Tell the reporter and every household that joined ("me too"). Async: it reads who joined."""
    await tell_households(session, ticket, event, now)


async def accept(session: AsyncSession, *, actor_id: int, ticket_id: int, now: datetime) -> Ticket:
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        if ticket.status != TicketStatus.ASSIGNED:
            raise InvalidTransition(ticket.status)
        ticket.status = TicketStatus.IN_PROGRESS
        ticket.assignee_id = actor_id
        ticket.accepted_at = now
        if ticket.first_accepted_at is None:
            ticket.first_accepted_at = now
        event = await _record(session, ticket, EventKind.ACCEPTED, actor_id, now)
        await _tell_reporter(session, ticket, event, now)
        await refresh_copies(session, ticket, now)
    return ticket


async def hand_back(session: AsyncSession, *, actor_id: int, ticket_id: int, reason: str, now: datetime) -> FiledTicket:
    """Give the ticket to the next person: a backup worker, else community staff."""
    reason = required_text(reason, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        _check_hand_back(ticket, actor_id)
        handed_back_before = set(
            await session.scalars(
                select(TicketEvent.actor_id).where(
                    TicketEvent.ticket_id == ticket.id, TicketEvent.kind == EventKind.HANDED_BACK
                )
            )
        )
        decision = await choose_assignee(
            session,
            community_id=ticket.community_id,
            grid_id=ticket.grid_id,
            category_level=ticket.level,
            exclude={actor_id, *(u for u in handed_back_before if u is not None)},
        )
        if decision.assignee is None:
            raise NobodyToHandTo(ticket_id)
        await _record(session, ticket, EventKind.HANDED_BACK, actor_id, now, note=reason)
        _apply_decision(ticket, decision, now)
        await _record_routing(session, ticket, decision, now)
        await refresh_copies(session, ticket, now)
    return FiledTicket(ticket, decision)


async def add_note(
    session: AsyncSession, *, actor_id: int, ticket_id: int, text: str, photo: str | None, now: datetime
) -> Ticket:
    text = required_text(text, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        if ticket.status != TicketStatus.IN_PROGRESS:
            raise InvalidTransition(ticket.status)
        event = await _record(session, ticket, EventKind.NOTE, actor_id, now, note=text, photo=photo)
        await _tell_reporter(session, ticket, event, now)
    return ticket


async def resolve(
    session: AsyncSession, *, actor_id: int, ticket_id: int, note: str, photo: str | None, now: datetime
) -> Ticket:
    note = required_text(note, MAX_NOTE)
    async with session.begin():
        ticket = await _ticket_for_worker(session, actor_id, ticket_id)
        if ticket.status != TicketStatus.IN_PROGRESS:
            raise InvalidTransition(ticket.status)
        ticket.status = TicketStatus.RESOLVED
        ticket.resolved_at = now
        event = await _record(
            session,
            ticket,
            EventKind.RESOLVED,
            actor_id,
            now,
            note=note,
            photo=photo,
            stage=PhotoStage.RESOLUTION,
        )
        await _tell_reporter(session, ticket, event, now)
        await refresh_copies(session, ticket, now)
    return ticket


# --- reading -------------------------------------------------------------------------------------------


async def tickets_of_resident(session: AsyncSession, user_id: int, limit: int = 20) -> list[Ticket]:
    """The resident's own reports and the neighbours' tickets they joined ("me too"), newest first."""
    joined = select(TicketFollower.ticket_id).where(TicketFollower.user_id == user_id)
    async with session.begin():
        return list(
            await session.scalars(
                select(Ticket)
                .where(or_(Ticket.reporter_id == user_id, Ticket.id.in_(joined)))
                .order_by(Ticket.id.desc())
                .limit(limit)
            )
        )


async def open_tickets_for_worker(session: AsyncSession, user_id: int, limit: int = 30) -> list[Ticket]:
    """Open tickets of the worker's grids, of the communities they staff, and any assigned to them."""
    async with session.begin():
        duties = await load_duties(session, user_id)
        scope = [Ticket.assignee_id == user_id]
        if duties.grid_ids:
            scope.append(Ticket.grid_id.in_(duties.grid_ids))
        if duties.staff_community_ids:
            scope.append(Ticket.community_id.in_(duties.staff_community_ids))
        if duties.street_community_ids:
            scope.append(
                and_(
                    Ticket.community_id.in_(duties.street_community_ids),
                    Ticket.level.in_([Level.STREET, Level.DEPARTMENT]),
                )
            )
        for community_id, department in duties.departments:
            scope.append(
                and_(
                    Ticket.community_id == community_id,
                    Ticket.level == Level.DEPARTMENT,
                    Ticket.department == department,
                )
            )
        return list(
            await session.scalars(
                select(Ticket)
                .where(Ticket.status.in_(TicketStatus.open_statuses()), or_(*scope))
                .order_by(Ticket.created_at, Ticket.id)
                .limit(limit)
            )
        )


async def _ticket(session: AsyncSession, ticket_id: int) -> Ticket:
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        raise NotFound(ticket_id)
    return ticket


async def _history(session: AsyncSession, ticket: Ticket, for_resident: bool) -> TicketView:
    events = list(
        await session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id).order_by(TicketEvent.id))
    )
    people = {ticket.assignee_id} | {e.actor_id for e in events} | {e.data.get("assignee") for e in events}
    names = await display_names(session, ticket.community_id, people - {ticket.reporter_id})
    return TicketView(ticket, events, names, for_resident)


async def view_ticket(session: AsyncSession, *, viewer_id: int, ticket_id: int) -> TicketView:
    """A ticket with its history: as a worker sees it, or as a resident does (TicketAccess.as_worker)."""
    async with session.begin():
        ticket = await _ticket(session, ticket_id)
        access = await ticket_access(session, viewer_id, ticket)
        return await _history(session, ticket, for_resident=not access.as_worker)


async def open_ticket(session: AsyncSession, *, viewer_id: int, ticket_id: int) -> TicketCard | TicketView:
    """What opening the ticket shows the viewer, decided by their duties: the worker's card with the actions
    they may take now, or for a household that is no worker of it, the resident's view of its history (a
    forged "open card" button must not show a resident the hand-back and escalation reasons)."""
    async with session.begin():
        ticket = await _ticket(session, ticket_id)
        access = await ticket_access(session, viewer_id, ticket)
        if not access.as_worker:
            return await _history(session, ticket, for_resident=True)
        return replace(await load_card(session, ticket), can_act=access.can_act)


async def load_card(session: AsyncSession, ticket: Ticket) -> TicketCard:
    """The card's facts, inside the caller's transaction (the sender has already chosen the recipient)."""
    handed_back = await session.scalar(
        select(TicketEvent)
        .where(
            TicketEvent.ticket_id == ticket.id,
            TicketEvent.kind.in_([EventKind.HANDED_BACK, EventKind.ESCALATED, EventKind.SENT_DOWN]),
        )
        .order_by(TicketEvent.id.desc())
        .limit(1)
    )
    names = await display_names(
        session, ticket.community_id, [ticket.assignee_id, handed_back.actor_id if handed_back else None]
    )
    reopened = None
    if ticket.reopen_count:
        reopened = await session.scalar(
            select(TicketEvent)
            .where(TicketEvent.ticket_id == ticket.id, TicketEvent.kind == EventKind.REOPENED)
            .order_by(TicketEvent.id.desc())
            .limit(1)
        )
    return TicketCard(ticket, names, handed_back, households=await households(session, ticket.id), reopened=reopened)


def photos_of_event(ticket: Ticket, event_id: int) -> Sequence[TicketPhoto]:
    return [p for p in ticket.photos if p.event_id == event_id]
