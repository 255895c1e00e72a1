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

from storage.models import Category, Ticket, TicketStatus

DEFAULT_YELLOW_SHARE = 0.25


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


def current_due(ticket: Ticket) -> Due | None:
    """What an open ticket is measured against; None for a closed ticket or one without deadlines."""
    category = ticket.category
    if ticket.status == TicketStatus.ASSIGNED and ticket.respond_by is not None:
        return Due(Deadline.RESPOND, ticket.respond_by, timedelta(hours=category.response_hours))
    if ticket.status == TicketStatus.IN_PROGRESS and ticket.resolve_by is not None:
        return Due(Deadline.RESOLVE, ticket.resolve_by, timedelta(hours=category.resolve_hours))
    return None


def ticket_colour(ticket: Ticket, now: datetime, yellow_share: float = DEFAULT_YELLOW_SHARE) -> Colour | None:
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
