"""What the monthly broadcasts look like, rendered from a broadcast's content snapshot in the current locale.

Titles, decisions and places are user-written and escaped. A long month is cut to Telegram's 4096 characters
with "… and N more", never split or refused.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _

from bot import views
from bot.callbacks import BroadcastAction, BroadcastCb, SettingsAction, SettingsCb, SurveyCb
from bot.i18n import localized
from domain.broadcasts import Preview, Progress, ResidentSettings, Started
from storage.models import Broadcast, BroadcastKind, Community

# Room left under the limit for the closing lines after a cut list.
TEXT_BUDGET = views.MESSAGE_LIMIT - 300
SURVEY_BUTTON_TITLE = 30
MAX_SURVEY_BUTTONS = 20


def kind_label(kind: str) -> str:
    return {
        BroadcastKind.AGENDA: _("monthly agenda"),
        BroadcastKind.FEEDBACK: _("execution feedback"),
        BroadcastKind.SURVEY: _("survey invitation"),
    }.get(BroadcastKind(kind), kind)


def _meeting(content: dict[str, Any]) -> str:
    return datetime.fromisoformat(content["meeting"]).strftime("%Y-%m-%d %H:%M")


def _fit(head: list[str], items: list[str], tail: list[str]) -> str:
    """``head`` + as many ``items`` as fit + "… and N more" + ``tail``."""
    budget = TEXT_BUDGET - sum(views.visible_length(line) + 1 for line in head + tail)
    shown = []
    for item in items:
        budget -= views.visible_length(item) + 1
        if budget < 0:
            break
        shown.append(item)
    if len(shown) < len(items):
        shown.append(_("… and {count} more").format(count=len(items) - len(shown)))
    return "\n".join([*head, *shown, *tail])


def agenda_text(community: Community, content: dict[str, Any]) -> str:
    head = [
        _("🗓 <b>Monthly deliberation · {community}</b>").format(community=escape(localized(community))),
        _("The meeting: {when}").format(when=_meeting(content)),
    ]
    if content.get("place"):
        head.append(_("Place: {place}").format(place=escape(content["place"])))
    head.append("")
    topics = content["topics"]
    if not topics:
        head.append(_("No topics have been drafted for this meeting yet. Send /suggest to propose one."))
        return "\n".join(head)
    head.append(_("Topics:"))
    items = []
    for number, topic in enumerate(topics, 1):
        line = f"{number}. <b>{escape(topic['title'])}</b>"
        if topic["background"]:
            line += "\n   " + escape(topic["background"])
        items.append(line)
    tail = ["", _("Tap a topic below to read it and give your view before the meeting."), _settings_hint()]
    return _fit(head, items, tail)


def feedback_text(community: Community, period: str, content: dict[str, Any], *, public: bool = False) -> str:
    """The execution feedback; ``public``: the post in the community's public notice chat."""
    head = [
        _("📣 <b>Execution feedback · {community}</b>").format(community=escape(localized(community))),
        _("About the meeting of {when}").format(when=_meeting(content)),
        "",
    ]
    items = []
    if content["decisions"]:
        items.append(_("<b>Decisions</b>"))
    for decision in content["decisions"]:
        line = f"• <b>{escape(decision['title'])}</b>: {escape(decision['decision'])}"
        if decision["for"] is not None:
            line += " " + _("({yes} for, {no} against, {abstain} abstaining)").format(
                yes=decision["for"], no=decision["against"], abstain=decision["abstain"]
            )
        items.append(line)
    if content["tasks"]:
        items.append(_("<b>How far the work is</b>"))
    for task in content["tasks"]:
        items.append(
            _("• {topic}: {title} — {responsible}, due {due}: {percent}%").format(
                topic=escape(task["topic"]),
                title=escape(task["title"]),
                responsible=escape(task["responsible"]),
                due=task["due"],
                percent=task["progress"],
            )
        )
    if not items:
        items.append(_("No decisions or open work to report this time."))
    tickets = content["tickets"]
    tail = [
        "",
        _("<b>Reports in {period}</b>: {received} received, {resolved} resolved.").format(
            period=period, received=tickets["received"], resolved=tickets["resolved"]
        ),
    ]
    if tickets["satisfaction"] is not None:
        tail.append(
            _("Satisfaction: {score} of 5 from {count} ratings.").format(
                score=tickets["satisfaction"], count=tickets["rated"]
            )
        )
    tail.append(_public_copy_hint() if public else _settings_hint())
    return _fit(head, items, tail)


def _public_copy_hint() -> str:
    return _("<i>Residents who want a private copy: /settings in a private chat with the bot.</i>")


def _settings_hint() -> str:
    return _("<i>You get this once a month. /settings turns it off.</i>")


def survey_invitation_text(community: Community, content: dict[str, Any]) -> str:
    head = [
        _("🗳 <b>Your view before the meeting · {community}</b>").format(community=escape(localized(community))),
        "",
        f"<b>{escape(content['title'])}</b>",
    ]
    if content["background"]:
        head.append(escape(content["background"]))
    head += ["", _("Options:")]
    items = [f"{number}. {escape(option)}" for number, option in enumerate(content["options"], 1)]
    tail = ["", _("Tap below to vote. You can change your vote until the meeting."), _settings_hint()]
    return _fit(head, items, tail)


def broadcast_text(community: Community, kind: str, period: str, content: dict[str, Any]) -> str:
    if kind == BroadcastKind.AGENDA:
        return agenda_text(community, content)
    if kind == BroadcastKind.SURVEY:
        return survey_invitation_text(community, content)
    return feedback_text(community, period, content)


def survey_topics(content: dict[str, Any], building_id: int | None) -> list[dict[str, Any]]:
    """The agenda's topics whose survey a resident of ``building_id`` may take (None: all, for staff's preview)."""
    return [
        topic
        for topic in content["topics"]
        if building_id is None or topic.get("buildings") is None or building_id in topic["buildings"]
    ]


def broadcast_keyboard(kind: str, content: dict[str, Any], building_id: int | None = None) -> InlineKeyboardMarkup:
    """Everyone reads the whole agenda; the survey buttons are the ones the reader may use."""
    buttons: list[tuple[str, SurveyCb | SettingsCb]] = []
    if kind == BroadcastKind.SURVEY:
        buttons.append((_("🗳 Vote"), SurveyCb(topic_id=content["topic_id"])))
    if kind == BroadcastKind.AGENDA:
        for topic in survey_topics(content, building_id)[:MAX_SURVEY_BUTTONS]:
            title = topic["title"]
            short = title if len(title) <= SURVEY_BUTTON_TITLE else title[:SURVEY_BUTTON_TITLE] + "…"
            buttons.append(("🗳 " + short, SurveyCb(topic_id=topic["id"])))
    buttons.append((_("🔕 Turn these off"), SettingsCb(action=SettingsAction.BROADCASTS_OFF)))
    return views.inline_keyboard(buttons, width=1)


# --- staff -----------------------------------------------------------------------------------------


def staff_menu(latest: list[Broadcast]) -> str:
    lines = [
        _("📣 <b>Broadcasts to residents</b>"),
        _("Each goes out once a month on the community's schedule. Preview one, or send it now."),
    ]
    if latest:
        lines += ["", _("Latest:")]
        lines += [
            _("• {kind} {period}: {count} residents").format(
                kind=kind_label(b.kind), period=b.period, count=b.recipients
            )
            for b in latest
        ]
    return "\n".join(lines)


def staff_menu_keyboard(latest: list[Broadcast]) -> InlineKeyboardMarkup:
    buttons = [
        (_("👁 Preview the agenda"), BroadcastCb(action=BroadcastAction.PREVIEW, kind=BroadcastKind.AGENDA)),
        (_("👁 Preview the feedback"), BroadcastCb(action=BroadcastAction.PREVIEW, kind=BroadcastKind.FEEDBACK)),
    ]
    buttons += [
        (
            _("📊 {kind} {period}").format(kind=kind_label(b.kind), period=b.period),
            BroadcastCb(action=BroadcastAction.PROGRESS, kind=b.kind, broadcast_id=b.id),
        )
        for b in latest
    ]
    return views.inline_keyboard(buttons, width=2)


def preview_intro(preview: Preview) -> str:
    if preview.existing is not None:
        return _("This {kind} for {period} went out to {count} residents. This is what they got:").format(
            kind=kind_label(preview.kind), period=preview.period, count=preview.existing.recipients
        )
    return _("Preview of the {kind} for {period}, as residents will get it:").format(
        kind=kind_label(preview.kind), period=preview.period
    )


def preview_keyboard(preview: Preview) -> InlineKeyboardMarkup:
    if preview.existing is not None:
        data = BroadcastCb(action=BroadcastAction.PROGRESS, kind=preview.kind, broadcast_id=preview.existing.id)
        return views.inline_keyboard([(_("📊 Progress"), data)])
    send = BroadcastCb(action=BroadcastAction.SEND_NOW, kind=preview.kind)
    return views.inline_keyboard([(_("📨 Send it now"), send)])


def sent_now(started: Started) -> str:
    count = started.broadcast.recipients
    if started.new:
        text = _("Queued for {count} residents. It goes out at Telegram's pace; press Progress to follow it.").format(
            count=count
        )
    else:
        text = _("This broadcast went out already ({count} residents); it is never sent twice.").format(count=count)
    if started.public_post:
        text += "\n" + _(
            "It is also one post in the community's public notice chat, so only the residents who asked for a "
            "private copy get it as a message."
        )
    return text


def progress_text(progress: Progress) -> str:
    broadcast = progress.broadcast
    lines = [
        _("📊 <b>{kind} {period}</b>").format(kind=kind_label(broadcast.kind), period=broadcast.period),
        _("Sent {sent} · failed {failed} · remaining {remaining} (of {total})").format(
            sent=progress.sent, failed=progress.failed, remaining=progress.remaining, total=broadcast.recipients
        ),
    ]
    if progress.in_doubt:
        lines.append(
            _(
                "In doubt: {count}. The bot stopped while these were on their way; they may have arrived, "
                "and are not sent again."
            ).format(count=progress.in_doubt)
        )
    if progress.unreachable_total:
        lines += [
            "",
            _("Telegram cannot reach {count} residents (they blocked the bot):").format(
                count=progress.unreachable_total
            ),
        ]
        lines += ["• " + escape(name or "?") for name in progress.unreachable]
        if progress.unreachable_total > len(progress.unreachable):
            lines.append(_("… and {count} more").format(count=progress.unreachable_total - len(progress.unreachable)))
    return "\n".join(lines)


def progress_keyboard(broadcast: Broadcast) -> InlineKeyboardMarkup:
    data = BroadcastCb(action=BroadcastAction.PROGRESS, kind=broadcast.kind, broadcast_id=broadcast.id)
    return views.inline_keyboard([(_("🔄 Refresh"), data)])


# --- residents: /settings ----------------------------------------------------------------------------


def settings_text(settings: ResidentSettings) -> str:
    state = _("on") if settings.broadcasts else _("off")
    lines = [
        _(
            "⚙️ <b>Settings</b>\nMonthly agenda and execution feedback: <b>{state}</b>.\n"
            "News about your own reports always comes."
        ).format(state=state)
    ]
    if settings.public_chat and settings.broadcasts:
        copy = _("on") if settings.public_copy else _("off")
        lines.append(
            _(
                "Your community posts the execution feedback and the public notices of its decisions in its public "
                "notice channel, so they do not come here as well (news of topics your own reports or suggestions "
                "led to still does). A private copy: <b>{state}</b>."
            ).format(state=copy)
        )
    return "\n\n".join(lines)


def settings_keyboard(settings: ResidentSettings) -> InlineKeyboardMarkup:
    if not settings.broadcasts:
        return views.inline_keyboard([(_("🔔 Turn on"), SettingsCb(action=SettingsAction.BROADCASTS_ON))])
    buttons = [(_("🔕 Turn off"), SettingsCb(action=SettingsAction.BROADCASTS_OFF))]
    if settings.public_chat and settings.public_copy:
        buttons.append((_("📭 No private copy"), SettingsCb(action=SettingsAction.PUBLIC_COPY_OFF)))
    elif settings.public_chat:
        buttons.append((_("📬 Send me a private copy"), SettingsCb(action=SettingsAction.PUBLIC_COPY_ON)))
    return views.inline_keyboard(buttons, width=1)
