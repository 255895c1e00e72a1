"""What people see of deadlines, escalation and the three-colour ledger. Everything user-written is escaped."""

from __future__ import annotations

from datetime import datetime, tzinfo
from html import escape

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import get_i18n
from aiogram.utils.i18n import gettext as _

from bot.callbacks import EscalateCb, TicketAction, TicketCb
from bot.i18n import localized
from bot.views import inline_keyboard, level_name, local_time, ticket_title
from domain.deadlines import Colour
from domain.escalation import Target
from domain.ledger import Ledger, Undelivered
from domain.outbox import Notice
from storage.models import EventKind, Level, Ticket, TicketEvent

COLOUR_MARKS = {Colour.GREEN: "🟢", Colour.YELLOW: "🟡", Colour.RED: "🔴"}


def deadline_reminder(ticket: Ticket, event: TicketEvent, tz: tzinfo) -> str:
    """To the assignee: a deadline is close (yellow) or has passed with nobody else to take the ticket (red)."""
    due = datetime.fromisoformat(str(event.data.get("due")))
    when = local_time(due, tz)
    title = f"<b>{escape(ticket_title(ticket))}</b>"
    if event.kind == EventKind.OVERDUE:
        text = _("🔴 Overdue: it was due {time}. Please deal with it now.").format(time=when)
    elif event.data.get("deadline") == "respond":
        text = _("⏰ Please accept it by {time}.").format(time=when)
    else:
        text = _("⏰ Please resolve it by {time}.").format(time=when)
    return f"{title}\n{text}"


def target_label(target: Target) -> str:
    if target.level == Level.DEPARTMENT:
        name = target.name_en if get_i18n().current_locale == "en" and target.name_en else target.name
        return "🏛 " + name
    return "⬆️ " + level_name(target.level)


def targets_keyboard(ticket_id: int, targets: list[Target]) -> InlineKeyboardMarkup:
    return inline_keyboard(
        [
            (target_label(t), EscalateCb(ticket_id=ticket_id, level=t.level, department=t.department or ""))
            for t in targets
        ],
        width=1,
    )


def choose_target(ticket_id: int) -> str:
    return _("Where should ticket #{number} go?").format(number=ticket_id)


def escalate_prompt(ticket_id: int, target: str) -> str:
    return _("Why does ticket #{number} need {target}? They will see your reason.").format(
        number=ticket_id, target=target
    )


def send_down_prompt(ticket_id: int) -> str:
    return _("What should be done with ticket #{number}? Write the instruction for the level below.").format(
        number=ticket_id
    )


def ledger_text(ledger: Ledger) -> str:
    lines = [_("<b>Three-colour ledger</b> (open tickets: 🟢 on time, 🟡 due soon, 🔴 overdue)")]
    for line in ledger.lines:
        counts = " ".join(f"{COLOUR_MARKS[c]} {line.counts[c]}" for c in Colour)
        lines.append(f"{escape(localized(line.grid))}: {counts}")
    totals = " ".join(f"{COLOUR_MARKS[c]} {ledger.total(c)}" for c in Colour)
    lines.append(_("Total: {counts}").format(counts=totals))
    if ledger.red:
        lines += ["", _("<b>Overdue</b> (most overdue first). Tap one to open its card:")]
        if ledger.red_total > len(ledger.red):
            lines.append(_("Showing {shown} of {total}.").format(shown=len(ledger.red), total=ledger.red_total))
    else:
        lines += ["", _("Nothing is overdue.")]
    if ledger.unreachable_staff:
        lines += [
            "",
            _("⚠️ Telegram cannot reach: {names}. They blocked the bot or never started it; tickets skip them.").format(
                names=escape("、".join(ledger.unreachable_staff))
            ),
        ]
    if ledger.unreachable_residents:
        lines.append(_("⚠️ Residents who blocked the bot: {count}.").format(count=ledger.unreachable_residents))
    if ledger.undelivered:
        lines += ["", _("📭 <b>Not delivered</b> in the last 7 days (the bot gave up on these):")]
        lines += ["• " + undelivered_line(item) for item in ledger.undelivered]
        if ledger.undelivered_total > len(ledger.undelivered):
            lines.append(_("… and {count} more").format(count=ledger.undelivered_total - len(ledger.undelivered)))
    return "\n".join(lines)


def undelivered_line(item: Undelivered) -> str:
    """ "Card of #12 → 李娟: blocked the bot": what it was, for whom, and why it did not arrive."""
    subject = f"#{item.ticket_id}" if item.ticket_id is not None else _("topic {number}").format(number=item.topic_id)
    what = {
        Notice.TICKET_CARD: _("card of {subject}"),
        Notice.CARD_EDIT: _("card of {subject}"),
        Notice.TICKET_PHOTOS: _("photos of {subject}"),
        Notice.DEADLINE_REMINDER: _("deadline reminder for {subject}"),
        Notice.CONFIRM_REMINDER: _("“Is it fixed?” reminder for {subject}"),
        Notice.RESIDENT_FEEDBACK: _("resident's answer on {subject}"),
        Notice.TOPIC_CANDIDATE: _("new {subject}"),
    }.get(Notice(item.kind), _("update on {subject}"))
    if item.error.startswith("403") or "blocked" in item.error:
        why = _("they blocked the bot")
    elif item.error.startswith("400"):
        why = _("Telegram refused it ({answer})").format(answer=item.error.removeprefix("400: "))
    elif item.error.startswith("gave up"):
        why = _("Telegram could not be reached for too long")
    else:
        why = _("an error in the bot")
    return escape(f"{what.format(subject=subject)} → {item.recipient or '?'}: {why}")


def ledger_keyboard(ledger: Ledger) -> InlineKeyboardMarkup | None:
    if not ledger.red:
        return None
    return inline_keyboard(
        [
            (
                f"🔴 #{t.id} {localized(t.category)} · {localized(t.building)}",
                TicketCb(action=TicketAction.OPEN, ticket_id=t.id),
            )
            for t in ledger.red
        ],
        width=1,
    )
