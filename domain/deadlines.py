"""Deadlines and the three-colour ledger (三色台账): pure functions of a ticket's deadlines and ``now``.

A ticket has two deadlines, set when it is filed and set afresh whenever it moves to another level of the
ladder: accept by (``respond_by``, the category's ``response_hours``) and resolve by (``resolve_by``, its
``resolve_hours``). A ticket waiting to be accepted is measured against ``respond_by``; an accepted one against
``resolve_by``. Calendar time, no working hours.

- green: on time;
- yellow: less than ``yellow_share`` of the window left (the window is the category's hours for that deadline);
- red: past the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from storage.models import Category, Ticket, TicketStatus

DEFAULT_YELLOW_SHARE = 0.25
# The colour changes just after these moments (``colour_at`` compares strictly): a sweep woken then sees it.
JUST_AFTER = timedelta(microseconds=1)
# A periodic job has something to do with tickets in these states: the deadline sweep, the confirmation sweep.
SWEPT = (TicketStatus.ASSIGNED, TicketStatus.IN_PROGRESS, TicketStatus.RESOLVED)


class Colour(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class Deadline(StrEnum):
    RESPOND = "respond"  # accept by
    RESOLVE = "resolve"  # resolve by


@dataclass(frozen=True)
class Due:
    """The deadline a ticket is measured against now, and the length of its window."""

    deadline: Deadline
    at: datetime
    window: timedelta


def colour_at(due: datetime, window: timedelta, now: datetime, yellow_share: float = DEFAULT_YELLOW_SHARE) -> Colour:
    """Red once ``now`` is past ``due``; yellow when less than ``yellow_share`` of ``window`` is left."""
    if now > due:
        return Colour.RED
    if due - now < window * yellow_share:
        return Colour.YELLOW
    return Colour.GREEN


class Timed(Protocol):
    """What a ticket's colour depends on: a Ticket, or the few columns of one that the ledger reads."""

    @property
    def status(self) -> str: ...
    @property
    def respond_by(self) -> datetime | None: ...
    @property
    def resolve_by(self) -> datetime | None: ...
    @property
    def category(self) -> Category: ...


def current_due(ticket: Timed) -> Due | None:
    """What an open ticket is measured against; None for a closed ticket or one without deadlines."""
    category = ticket.category
    if ticket.status == TicketStatus.ASSIGNED and ticket.respond_by is not None:
        return Due(Deadline.RESPOND, ticket.respond_by, timedelta(hours=category.response_hours))
    if ticket.status == TicketStatus.IN_PROGRESS and ticket.resolve_by is not None:
        return Due(Deadline.RESOLVE, ticket.resolve_by, timedelta(hours=category.resolve_hours))
    return None


def ticket_colour(ticket: Timed, now: datetime, yellow_share: float = DEFAULT_YELLOW_SHARE) -> Colour | None:
    due = current_due(ticket)
    return None if due is None else colour_at(due.at, due.window, now, yellow_share)


def start_window(ticket: Ticket, category: Category, now: datetime) -> None:
    """Fresh deadlines from ``now``: at filing, and whenever the ticket moves to another level."""
    ticket.respond_by = now + timedelta(hours=category.response_hours)
    ticket.resolve_by = now + timedelta(hours=category.resolve_hours)


def restart_response(ticket: Ticket, category: Category, now: datetime) -> None:
    """A new person must accept it: a fresh accept-by deadline; the resolve-by deadline keeps running."""
    ticket.respond_by = now + timedelta(hours=category.response_hours)
    if ticket.resolve_by is None or ticket.resolve_by < ticket.respond_by:
        ticket.resolve_by = ticket.respond_by


def next_wake(
    ticket: Ticket, now: datetime, yellow_share: float, reminded: bool, marked_overdue: bool
) -> datetime | None:
    """When the deadline sweep must look at an open ticket again: when its colour next changes, or never (None)
    once it is red and marked. ``reminded`` and ``marked_overdue`` say what its history holds for the current
    deadline. Always later than ``now`` or None, so a sweep that reschedules never finds the ticket again."""
    due = current_due(ticket)
    if due is None:
        return None
    colour = colour_at(due.at, due.window, now, yellow_share)
    if colour == Colour.GREEN:
        return due.at - due.window * yellow_share + JUST_AFTER
    if colour == Colour.YELLOW:
        return due.at + JUST_AFTER if reminded or ticket.assignee_id is None else now
    return None if marked_overdue else now


_WAKING = ("status", "respond_by", "resolve_by")


@event.listens_for(Session, "before_flush")
def _wake_on_change(session: Session, flush_context: Any, instances: Any) -> None:
    """Whatever changes a ticket's status or deadlines wakes the periodic jobs for it, in the same transaction.

    Any path that writes a ticket through the session (accepting, escalating, a test moving a deadline) goes
    through here, so no path can forget it; filing, which does not, calls ``wake_after_change`` itself. The
    change's time is early enough for any yellow share: the sweep that looks then writes the exact moment
    (``next_wake``). A sweep that sets ``wake_at`` itself is left alone.
    """
    for ticket in (*session.new, *session.dirty):
        if not isinstance(ticket, Ticket):
            continue
        state = inspect(ticket)
        if state.attrs.wake_at.history.has_changes():
            continue
        if state.pending or any(state.attrs[name].history.has_changes() for name in _WAKING):
            ticket.wake_at = wake_after_change(ticket)


def wake_after_change(ticket: Ticket) -> datetime | None:
    """``wake_at`` for a ticket whose status or deadlines just changed (the hook above, and filing, which inserts
    the new ticket with a plain statement: domain/tickets.py). A new ticket's status may still be the column
    default (assigned)."""
    return ticket.updated_at if (ticket.status or TicketStatus.ASSIGNED) in SWEPT else None
