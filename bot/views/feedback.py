"""Texts and keyboards for closing the loop with the resident ("Is it fixed?", ratings) and "me too"."""

from __future__ import annotations

from datetime import datetime, tzinfo
from html import escape

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _

from bot import views
from bot.callbacks import FeedbackAction, FeedbackCb, MeTooAction, MeTooCb, TicketAction, TicketCb
from domain.confirmation import MAX_STARS, MIN_STARS
from domain.errors import DomainError, InvalidTransition
from domain.followers import AlreadyJoined, OwnTicket, SimilarTicket
from storage.models import EventKind, Ticket, TicketEvent

SHORT_DESCRIPTION = 60


def _button(text: str, data: FeedbackCb | MeTooCb | TicketCb) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text, callback_data=data.pack())


# --- "Is it fixed?" -------------------------------------------------------------------------------------


def is_it_fixed() -> str:
    return _("<b>Is it fixed?</b> Please tell us with the buttons below.")


def fixed_keyboard(ticket_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                _button(_("✅ Yes, it is fixed"), FeedbackCb(action=FeedbackAction.FIXED, ticket_id=ticket_id)),
                _button(_("❌ No, not fixed"), FeedbackCb(action=FeedbackAction.NOT_FIXED, ticket_id=ticket_id)),
            ],
            [_button(_("📜 History"), TicketCb(action=TicketAction.HISTORY, ticket_id=ticket_id))],
        ]
    )


def settled(kind: str) -> str:
    """What came of "Is it fixed?", written under the question once it is settled (its buttons are gone)."""
    match kind:
        case EventKind.CONFIRMED:
            return _("Answered: it is fixed, and the ticket is closed.")
        case EventKind.REOPENED:
            return _("Answered: it is not fixed, and the ticket is back with the worker.")
    return _("Nobody answered in time: the ticket is closed as resolved, unconfirmed.")


def reminder(ticket: Ticket, close_at: datetime, tz: tzinfo) -> str:
    return "\n".join(
        [
            f"<b>{escape(views.ticket_title(ticket))}</b>",
            _(
                "This was marked as resolved, and we have not heard from you yet. Is it fixed? Without an answer "
                "by {date} the ticket will be closed as resolved, unconfirmed."
            ).format(date=views.local_time(close_at, tz)),
        ]
    )


def rating_prompt(ticket_id: int) -> str:
    return _("Thank you! Ticket #{number} is closed. How satisfied are you with how it was handled?").format(
        number=ticket_id
    )


def rating_keyboard(ticket_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[_button(f"{stars}⭐", _rate(ticket_id, stars)) for stars in range(MIN_STARS, MAX_STARS + 1)]]
    )


def _rate(ticket_id: int, stars: int) -> FeedbackCb:
    return FeedbackCb(action=FeedbackAction.RATE, ticket_id=ticket_id, stars=stars)


def rated(stars: int) -> str:
    return _("Thank you: you gave {stars} of 5. If you like, add a comment for the worker.").format(stars=stars)


def comment_keyboard(ticket_id: int) -> InlineKeyboardMarkup:
    """The comment is optional: a button opens it, so nothing typed later is taken for it."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [_button(_("💬 Add a comment"), FeedbackCb(action=FeedbackAction.COMMENT, ticket_id=ticket_id))]
        ]
    )


def comment_prompt(ticket_id: int) -> str:
    return _("Your comment on how ticket #{number} was handled; it goes to the worker.").format(number=ticket_id)


def reason_prompt(ticket_id: int) -> str:
    return _(
        "Sorry to hear that. What is still wrong with ticket #{number}? Your answer goes to the worker, and the "
        "ticket is reopened.\n/cancel to stop."
    ).format(number=ticket_id)


def worker_feedback(ticket: Ticket, answers: list[TicketEvent]) -> str:
    """What the worker hears when a resident confirms, rates and comments: one message for all of it."""
    lines = [f"<b>{escape(views.ticket_title(ticket))}</b>"]
    lines += [views.event_text(answer, {}, for_worker=True) for answer in answers]
    return "\n".join(lines)


# --- "me too" -------------------------------------------------------------------------------------------


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORT_DESCRIPTION else text[: SHORT_DESCRIPTION - 1] + "…"


def similar_tickets(found: list[SimilarTicket], tz: tzinfo) -> str:
    """The neighbours' open reports; a resident who is not a verified household sees neither words nor buttons."""
    lines = [_("Neighbours in your building have already reported this, and it is being handled:")]
    for t in found:
        status, day = views.status_label(t.status), views.local_time(t.created_at, tz)[:10]
        if t.description is None:
            lines.append(_("#{number} — {status} ({date})").format(number=t.id, status=status, date=day))
        else:
            lines.append(
                _("#{number} {text} — {status} ({date})").format(
                    number=t.id, text=escape(_short(t.description)), status=status, date=day
                )
            )
    if any(t.description is None for t in found):
        lines.append(
            _("Verified households see what neighbours wrote and can join their report: verify yours in /home.")
        )
    else:
        lines.append(
            _("If it is the same problem, press “Me too”: you will be told about every step, like the reporter.")
        )
    return "\n".join(lines)


def me_too_keyboard(found: list[SimilarTicket]) -> InlineKeyboardMarkup:
    rows = [
        [_button(_("🙋 Me too: #{number}").format(number=t.id), MeTooCb(action=MeTooAction.JOIN, ticket_id=t.id))]
        for t in found
        if t.description is not None
    ]
    rows.append([_button(_("➡️ No, mine is different"), MeTooCb(action=MeTooAction.DIFFERENT))])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def joined(ticket_id: int, households: int) -> str:
    return _(
        "Thank you. You have joined ticket #{number}: {count} households are now affected, and I will tell you "
        "here about every step. /my lists it with your reports."
    ).format(number=ticket_id, count=households)


def refusal(error: DomainError) -> str:
    if isinstance(error, OwnTicket):
        return _("This is your own report.")
    if isinstance(error, AlreadyJoined):
        return _("You have already joined this ticket.")
    if isinstance(error, InvalidTransition):  # a resident's button: /tickets is not theirs
        return _("This button is out of date: the ticket has moved on. /my shows where it stands.")
    return views.refusal(error)
