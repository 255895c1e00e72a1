"""What people see: message texts and keyboards, in the current locale. Everything user-written is escaped.

This module holds the menus, the report wizard, tickets, their cards and histories, and refusals. The rest has a
module each: ``broadcasts`` (monthly agenda and feedback), ``deliberation`` (topics, surveys), ``feedback``
("Is it fixed?", ratings, "me too") and ``ladder`` (deadlines, escalation, the three-colour ledger).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, tzinfo
from functools import cache, lru_cache
from html import escape, unescape

from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
)
from aiogram.utils.i18n import get_i18n
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import lazy_gettext as __

from bot.callbacks import CategoryCb, TicketAction, TicketCb
from bot.i18n import localized
from domain.errors import AccessDenied, DomainError, HandledElsewhere, InvalidTransition, NotBound, NotFound
from domain.households import NotVerified
from domain.routing import RouteReason
from domain.text import TextEmpty, TextTooLong
from domain.tickets import NobodyToHandTo, ReportDraft, TicketCard, TicketView
from storage.models import Building, Category, EventKind, Level, Ticket, TicketEvent, TicketStatus

# Main-menu buttons; handlers match them with F.text == ... in the user's language.
MENU_REPORT = __("📝 Report a problem")
MENU_MY = __("📋 My reports")
MENU_TICKETS = __("🗂 Tickets to handle")
MENU_LANGUAGE = __("🌐 Language")
# Typed in the middle of a step, each of these ends the step and does what it says (bot/steps.py).
MAIN_MENU_BUTTONS = (MENU_REPORT, MENU_MY, MENU_TICKETS, MENU_LANGUAGE)
WIZARD_DONE = __("✅ Done")
WIZARD_LOCATION = __("📍 Send my location")
WIZARD_SUBMIT = __("📨 Submit")
WIZARD_CANCEL = __("✖️ Cancel")


def inline_keyboard(
    buttons: Sequence[tuple[str, CallbackData]], width: int = 2, alone_first: int = 0
) -> InlineKeyboardMarkup:
    """Buttons ``width`` to a row; the first ``alone_first`` get a row each.

    Built directly: aiogram's InlineKeyboardBuilder costs about ten times as much per keyboard.
    """
    made = [InlineKeyboardButton(text=text, callback_data=data.pack()) for text, data in buttons]
    rows = [[button] for button in made[:alone_first]]
    rest = made[alone_first:]
    rows += [rest[i : i + width] for i in range(0, len(rest), width)]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def main_menu(is_worker: bool) -> ReplyKeyboardMarkup:
    return _main_menu(get_i18n().current_locale, is_worker)


def photos_keyboard() -> ReplyKeyboardMarkup:
    return _photos_keyboard(get_i18n().current_locale)


# Reply keyboards never change within a language, so each is built once (pydantic models are not cheap).
@cache
def _main_menu(locale: str, is_worker: bool) -> ReplyKeyboardMarkup:
    rows = [[KeyboardButton(text=str(MENU_REPORT)), KeyboardButton(text=str(MENU_MY))]]
    if is_worker:
        rows.append([KeyboardButton(text=str(MENU_TICKETS))])
    rows.append([KeyboardButton(text=str(MENU_LANGUAGE))])
    return ReplyKeyboardMarkup(keyboard=rows, resize_keyboard=True, is_persistent=True)


@cache
def _photos_keyboard(locale: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(
        keyboard=[
            [KeyboardButton(text=str(WIZARD_LOCATION), request_location=True)],
            [KeyboardButton(text=str(WIZARD_DONE))],
        ],
        resize_keyboard=True,
    )


def worker_greeting() -> str:
    return _(
        "Hello! You handle residents' reports here. New tickets come to you in this chat as cards; "
        "“🗂 Tickets to handle” (/tickets) lists the open ones. Community staff also have /ledger, /topics and "
        "/broadcasts; /help lists everything."
    )


def local_time(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


# Translated when shown: a list of tickets names a status for each, and translating all five for each cost more
# than the rest of the line.
_STATUS_LABELS = {
    TicketStatus.ASSIGNED: __("waiting to be accepted"),
    TicketStatus.IN_PROGRESS: __("being handled"),
    TicketStatus.RESOLVED: __("resolved, awaiting confirmation"),
    TicketStatus.CLOSED: __("closed, confirmed by the resident"),
    TicketStatus.UNCONFIRMED: __("resolved, unconfirmed"),
}


def status_label(status: str) -> str:
    label = _STATUS_LABELS.get(TicketStatus(status))
    return status if label is None else str(label)


def place_label(building: Building, unit: int | None) -> str:
    label = f"{localized(building.compound)} {localized(building)}"
    if unit:
        label += " " + _("unit {unit}").format(unit=unit)
    return label


def ticket_title(ticket: Ticket) -> str:
    return _("Ticket #{number} · {category}").format(number=ticket.id, category=localized(ticket.category))


# --- the resident's wizard -------------------------------------------------------------------------------


def categories_keyboard(categories: list[Category], suggested: Category | None = None) -> InlineKeyboardMarkup:
    labels = [("✅ " + localized(suggested), suggested.id)] if suggested else []
    labels += [(localized(c), c.id) for c in categories if c is not suggested]
    return _categories_keyboard(tuple(labels), 1 if suggested else 0)


@lru_cache(maxsize=256)  # the same dozen buttons open every report
def _categories_keyboard(labels: tuple[tuple[str, int], ...], alone_first: int) -> InlineKeyboardMarkup:
    return inline_keyboard([(text, CategoryCb(category_id=id_)) for text, id_ in labels], alone_first=alone_first)


def report_summary(draft: ReportDraft, category: Category, building: Building, unit: int | None) -> str:
    lines = [
        _("<b>Please check your report</b>"),
        _("Category: {category}").format(category=escape(localized(category))),
        _("Place: {place}").format(place=escape(place_label(building, unit))),
        _("Description: {text}").format(text=escape(draft.description)),
        _("Photos: {count}").format(count=len(draft.photos)),
    ]
    if draft.latitude is not None:
        lines.append(_("Location: attached"))
    return "\n".join(lines)


def confirm_keyboard() -> ReplyKeyboardMarkup:
    return _confirm_keyboard(get_i18n().current_locale)


# Big reply-keyboard buttons rather than inline ones: sending the report then takes one message from the bot
# (the answer with the main menu) instead of three (answer the press, remove the buttons, the answer).
@cache
def _confirm_keyboard(locale: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(
        keyboard=[[KeyboardButton(text=str(WIZARD_SUBMIT)), KeyboardButton(text=str(WIZARD_CANCEL))]],
        resize_keyboard=True,
    )


# --- tickets -------------------------------------------------------------------------------------------


def ticket_line(ticket: Ticket, tz: tzinfo) -> str:
    return _("#{number} {category} — {status} ({date})").format(
        number=ticket.id,
        category=escape(localized(ticket.category)),
        status=status_label(ticket.status),
        date=local_time(ticket.created_at, tz)[:10],
    )


def tickets_keyboard(tickets: list[Ticket], action: TicketAction) -> InlineKeyboardMarkup:
    return inline_keyboard(
        [
            (
                f"#{t.id} {localized(t.category)} · {localized(t.building)}",
                TicketCb(action=action, ticket_id=t.id),
            )
            for t in tickets
        ],
        width=1,
    )


def ticket_card(card: TicketCard, tz: tzinfo) -> str:
    """The worker's view of a ticket: what, where, when, who has it, and the resident's words."""
    ticket, names, handed_back = card.ticket, card.names, card.handed_back
    lines = [
        f"<b>{escape(ticket_title(ticket))}</b>",
        "📍 " + escape(place_label(ticket.building, ticket.unit)),
        "🕒 " + local_time(ticket.created_at, tz),
        _("Status: {status}").format(status=status_label(ticket.status)),
    ]
    lines += deadline_lines(ticket, tz)
    if ticket.assignee_id is not None:
        lines.append(_("Handled by: {name}").format(name=escape(names.get(ticket.assignee_id, "?"))))
    if handed_back is not None and (moved := moved_line(handed_back, names)):
        lines.append(moved)
    lines.append(_("🏠 Affected households: {count}").format(count=card.households))
    if not ticket.reporter_verified:
        lines.append(_("⚠️ Reported by a resident whose household is not verified"))
    if card.reopened is not None:
        lines.append(
            _("🔁 Reopened by a resident ({count}×): {reason}").format(
                count=ticket.reopen_count, reason=escape(card.reopened.note)
            )
        )
    if ticket.latitude is not None and ticket.longitude is not None:
        url = f"https://uri.amap.com/marker?position={ticket.longitude:.6f},{ticket.latitude:.6f}"
        label = _("Location on the map")
        lines.append(f'📌 <a href="{url}">{label}</a>')
    report_photos = [p for p in ticket.photos if p.stage == "report"]
    if report_photos:
        lines.append(_("📷 Photos: {count} (sent with the ticket)").format(count=len(report_photos)))
    lines += ["", escape(ticket.description)]
    return "\n".join(lines)


def deadline_lines(ticket: Ticket, tz: tzinfo) -> list[str]:
    """The deadline the ticket is measured against now, and the level when it is above the grid."""
    lines = []
    if ticket.status == TicketStatus.ASSIGNED and ticket.respond_by is not None:
        lines.append(_("⏳ Accept by {time}").format(time=local_time(ticket.respond_by, tz)))
    elif ticket.status == TicketStatus.IN_PROGRESS and ticket.resolve_by is not None:
        lines.append(_("⏳ Resolve by {time}").format(time=local_time(ticket.resolve_by, tz)))
    if ticket.level != Level.GRID:
        lines.append(level_line(ticket.level))
    return lines


def level_line(level: str) -> str:
    """On the card: the rung of the ladder the ticket is on, named as an office (never as a person)."""
    return {
        Level.COMMUNITY: _("Level: community"),
        Level.STREET: _("Level: street office"),
        Level.DEPARTMENT: _("Level: department"),
    }.get(Level(level), _("Level: grid"))


def level_name(level: str, data: dict[str, object] | None = None) -> str:
    """A level of the ladder in words; for a department its name, taken from an event's data."""
    if level == Level.DEPARTMENT:
        data = data or {}
        name = data.get("department_name_en") if get_i18n().current_locale == "en" else None
        name = name or data.get("department_name")
        return escape(str(name)) if name else _("a department")
    return {
        Level.GRID: _("the grid worker"),
        Level.COMMUNITY: _("the community office"),
        Level.STREET: _("the street office"),
    }.get(Level(level), level)


def moved_line(event: TicketEvent, names: dict[int, str]) -> str:
    """On the card: why the ticket came to its new holder (hand-back, escalation or send-down)."""
    name = escape(names.get(event.actor_id, "?")) if event.actor_id is not None else ""
    note = escape(event.note)
    match event.kind:
        case EventKind.HANDED_BACK if event.actor_id is not None:
            return _("↩️ Handed back by {name}: {reason}").format(name=name, reason=note)
        case EventKind.ESCALATED if event.actor_id is None:
            return _("⬆️ Escalated automatically: not resolved in time")
        case EventKind.ESCALATED:
            return _("⬆️ Escalated by {name}: {reason}").format(name=name, reason=note)
        case EventKind.SENT_DOWN:
            return _("⬇️ Sent down by {name}: {instruction}").format(name=name, instruction=note)
    return ""


def ticket_actions(ticket: Ticket, can_act: bool = True) -> InlineKeyboardMarkup:
    """The card's buttons: what fits the ticket's status and level; only History for someone who cannot act."""
    actions: list[tuple[str, TicketAction]] = []
    if can_act and ticket.status == TicketStatus.ASSIGNED:
        actions = [(_("✅ Accept"), TicketAction.ACCEPT)]
    elif can_act and ticket.status == TicketStatus.IN_PROGRESS:
        actions = [(_("📝 Progress note"), TicketAction.NOTE), (_("✔️ Resolve"), TicketAction.RESOLVE)]
    if actions:
        if ticket.level in (Level.GRID, Level.COMMUNITY):
            actions.append((_("↩️ Hand back"), TicketAction.HAND_BACK))
        if ticket.level != Level.DEPARTMENT:
            actions.append((_("⬆️ Escalate"), TicketAction.ESCALATE))
        if ticket.level != Level.GRID:
            actions.append((_("⬇️ Send down"), TicketAction.SEND_DOWN))
    if can_act and ticket.is_open and ticket.topic_id is None and ticket.level in (Level.GRID, Level.COMMUNITY):
        actions.append((_("🗳 Needs deliberation"), TicketAction.DELIBERATE))
    actions.append((_("📜 History"), TicketAction.HISTORY))
    return inline_keyboard([(text, TicketCb(action=action, ticket_id=ticket.id)) for text, action in actions])


def history_keyboard(ticket_id: int) -> InlineKeyboardMarkup:
    return inline_keyboard([(_("📜 History"), TicketCb(action=TicketAction.HISTORY, ticket_id=ticket_id))])


def _route_text(event: TicketEvent, names: dict[int, str], for_worker: bool) -> str:
    assignee = event.data.get("assignee")
    if assignee is None:
        return _("Waiting for the community office to assign it")
    name = escape(names.get(assignee, "?"))
    if not for_worker:
        return _("Assigned to {name}").format(name=name)
    reason = {
        RouteReason.GRID_WORKER: _("the grid's worker with the fewest open tickets"),
        RouteReason.CATEGORY_LEVEL: _("this category is handled by the community office"),
        RouteReason.NO_GRID_WORKER: _("no grid worker left for this grid"),
        RouteReason.UNROUTED: _("nobody to assign"),
        RouteReason.OVERDUE: _("the previous person did not accept it in time"),
        RouteReason.ESCALATED: _("escalated to this level"),
        RouteReason.SENT_DOWN: _("sent back down to this level"),
    }[RouteReason(event.data.get("reason", RouteReason.UNROUTED))]
    return _("Assigned to {name} ({reason})").format(name=name, reason=reason)


def event_text(event: TicketEvent, names: dict[int, str], for_worker: bool) -> str:
    actor = escape(names.get(event.actor_id, "?")) if event.actor_id is not None else ""
    note = escape(event.note)
    match EventKind(event.kind):
        case EventKind.CREATED:
            return _("Reported")
        case EventKind.ROUTED:
            return _route_text(event, names, for_worker)
        case EventKind.ACCEPTED:
            return _("{name} accepted it").format(name=actor)
        case EventKind.HANDED_BACK:
            return (
                _("{name} handed it back: {reason}").format(name=actor, reason=note)
                if for_worker
                else _("Passed on to a colleague")
            )
        case EventKind.NOTE:
            return _("Progress from {name}: {note}").format(name=actor, note=note)
        case EventKind.RESOLVED:
            return _("{name} resolved it: {note}").format(name=actor, note=note)
        case EventKind.ESCALATED | EventKind.SENT_DOWN:
            return _moved_text(event, actor, note, for_worker)
        case EventKind.REMINDED:
            return _("⏰ Reminder sent: the deadline is close") if for_worker else ""
        case EventKind.OVERDUE:
            if not for_worker:
                return ""
            if event.data.get("stuck"):
                return _("🔴 Overdue, and there is nobody else to pass it to")
            return _("🔴 Not accepted in time: passed on")
    return _resident_loop_text(event) or event.kind


def _moved_text(event: TicketEvent, actor: str, note: str, for_worker: bool) -> str:
    """Escalations and send-downs; the resident is told who now handles the report, never the reason."""
    target = level_name(str(event.data.get("to", "")), event.data)
    if event.kind == EventKind.SENT_DOWN:
        if for_worker:
            return _("{name} sent it back to {target}: {instruction}").format(
                name=actor, target=target, instruction=note
            )
        return _("Your report has been passed back to {target}, who now handle it.").format(target=target)
    if not for_worker:
        return _("Your report has been passed to {target}, who now handle it.").format(target=target)
    if event.actor_id is None:
        return _("🔴 Not resolved in time: escalated to {target}").format(target=target)
    return _("{name} escalated it to {target}: {reason}").format(name=actor, target=target, reason=note)


def _resident_loop_text(event: TicketEvent) -> str | None:
    """Confirmation, rating, reopening and "me too" (domain/confirmation.py, followers.py). Never names a resident."""
    note = escape(event.note)
    match EventKind(event.kind):
        case EventKind.CONFIRMED:
            return _("A resident confirmed it is fixed; the ticket is closed")
        case EventKind.REOPENED:
            return _("A resident says it is not fixed: {reason}. Reopened to the same worker").format(reason=note)
        case EventKind.RATED:
            return _("Satisfaction rating: {stars} of 5").format(stars=int(event.data.get("stars", 0)))
        case EventKind.RATING_COMMENT:
            return _("Comment on the rating: {note}").format(note=note)
        case EventKind.CONFIRM_REMINDED:
            return _("The residents were asked again whether it is fixed")
        case EventKind.AUTO_CLOSED:
            return _("Nobody answered whether it is fixed within {days} days: closed as resolved, unconfirmed").format(
                days=f"{float(event.data.get('days', 0)):g}"
            )
        case EventKind.DELIBERATION:
            return _("Taken to the monthly deliberation (topic #{number})").format(number=event.data.get("topic_id"))
        case EventKind.JOINED:
            return _("Another household has the same problem ({count} affected households)").format(
                count=int(event.data.get("households", 0))
            )
    return None


def ticket_screen(opened: TicketCard | TicketView, tz: tzinfo) -> tuple[str, InlineKeyboardMarkup | None]:
    """What opening a ticket shows, as the domain chose it: the worker's card with its buttons, or the history
    as its household reads it."""
    if isinstance(opened, TicketView):
        return ticket_history(opened, tz), None
    return ticket_card(opened, tz), ticket_actions(opened.ticket, opened.can_act)


def ticket_history(view: TicketView, tz: tzinfo) -> str:
    """The history as the domain said the viewer sees it: a household reads no internal reasons."""
    ticket, names, for_worker = view.ticket, view.names, not view.for_resident
    header = [
        f"<b>{escape(ticket_title(ticket))}</b>",
        "📍 " + escape(place_label(ticket.building, ticket.unit)),
        _("Status: {status}").format(status=status_label(ticket.status)),
        "",
        escape(ticket.description),
        "",
    ]
    events = [f"{local_time(e.at, tz)} · {text}" for e in view.events if (text := event_text(e, names, for_worker))]
    # A long history keeps its newest entries; cutting inside the HTML would make Telegram reject it.
    while events and visible_length("\n".join(header + events)) > MESSAGE_LIMIT - 2:
        events = events[1:]
        if events:
            events[0] = "…"
    return "\n".join(header + events)


def resident_update(ticket: Ticket, event: TicketEvent, names: dict[int, str], recipient_id: int) -> str:
    """What a household is told when their ticket moves; an answer from another household says so."""
    text = event_text(event, names, for_worker=False)
    if event.actor_id != recipient_id:
        match event.kind:
            case EventKind.CONFIRMED:
                text = _(
                    "Another household confirmed it is fixed, so the ticket is closed. Thank you for your patience."
                )
            case EventKind.REOPENED:
                text = _("Another household says it is not fixed: {reason}. It is back with the worker.").format(
                    reason=escape(event.note)
                )
    return "\n".join([f"<b>{escape(ticket_title(ticket))}</b>", text])


# --- outside the private chat -----------------------------------------------------------------------------


def private_chat_keyboard(username: str) -> InlineKeyboardMarkup:
    """One button that opens the bot's private chat (for a new user, with its Start button)."""
    button = InlineKeyboardButton(text=_("💬 Open the private chat"), url=f"https://t.me/{username}")
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


def private_chat_only() -> str:
    """The answer to a command in a group."""
    return _("I work only in a private chat, so that nobody else sees your reports. Tap below to open it.")


def added_to_group() -> str:
    return _("Hello! Residents report problems to me in a private chat, where nobody else sees them. Tap below.")


def button_in_group() -> str:
    """A callback answer: at most 200 characters."""
    return _("This works only in a private chat with me.")


MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024


def visible_length(html_text: str) -> int:
    """Characters Telegram counts against its limits: the text after HTML parsing."""
    return len(unescape(re.sub(r"<[^>]+>", "", html_text)))


def refusal(error: DomainError) -> str:
    """A polite answer for an action the domain refused."""
    if isinstance(error, TextTooLong):
        return _("That is too long: please keep it under {limit} characters.").format(limit=error.limit)
    if isinstance(error, TextEmpty):
        return _("There are no words in that message. Please write it out in words.")
    if isinstance(error, NotBound):
        return _("First tell me which building you live in: send /start.")
    if isinstance(error, NotVerified):  # at most 200 characters: also a button's answer
        return _("Only a verified household can do this. Verify yours in /home: one tap with your phone number.")
    if isinstance(error, NobodyToHandTo):
        return _("There is nobody else to hand this ticket to. Please keep working on it or ask the community office.")
    if isinstance(error, HandledElsewhere):
        return _("Someone else handles this ticket now, so this button is not for you. Its history stays open to you.")
    if isinstance(error, InvalidTransition):
        return _("This button is out of date: the ticket has moved on. Open it again from /tickets or /my.")
    if isinstance(error, AccessDenied | NotFound):
        return _("Sorry, you cannot open this.")
    return _("Sorry, that cannot be done.")
