"""Posts in a community's public notice chat (公示): nothing personal, no buttons (a channel's readers are not
the bot's users). Worker-written notes and names from the community file are escaped."""

from __future__ import annotations

from html import escape

from aiogram.utils.i18n import gettext as _

from bot import views
from bot.i18n import localized
from bot.views.deliberation import task_line, topic_update
from storage.models import Community, Ticket, TicketEvent, Topic, TopicEvent, TopicTask


def topic_notice(community: Community, topic: Topic, event: TopicEvent, tasks: list[TopicTask]) -> str:
    """A topic's public notice: what the meeting decided, with its vote, and how far each task got."""
    lines = [
        _("📌 <b>Public notice · {community}</b>").format(community=escape(localized(community))),
        topic_update(topic, event, None),
    ]
    if tasks:
        lines += [_("How the decision was carried out:"), *(task_line(task) for task in tasks)]
    lines.append(_("<i>Residents who want a private copy: /settings in a private chat with the bot.</i>"))
    return _cut("\n".join(lines))


def closed_ticket_notice(ticket: Ticket, resolution: TicketEvent | None) -> str:
    """A closed ticket, for everyone: what, where, what was done. Never who reported it."""
    lines = [
        _("✅ <b>Done · {category}</b>").format(category=escape(localized(ticket.category))),
        _("Where: {place}").format(place=escape(views.place_label(ticket.building, None))),
    ]
    if resolution is not None and resolution.note:
        lines.append(_("What was done: {note}").format(note=escape(resolution.note)))
    lines.append(_("Ticket #{number}").format(number=ticket.id))
    return "\n".join(lines)


def public_chat_welcome(community: Community) -> str:
    """Said once when the bot is added to a community's public notice group."""
    return _(
        "This is the public notice chat of {community}. I will post the monthly execution feedback and the "
        "public notices of the community's decisions here. To report a problem, write to me privately."
    ).format(community=escape(localized(community)))


def _cut(text: str) -> str:
    if views.visible_length(text) <= views.MESSAGE_LIMIT:
        return text
    return text[: views.MESSAGE_LIMIT - 2] + "…"
