"""What the deliberation looks like: topic lists, the topic with its history, the survey, and the notices.

Everything user-written (titles, options, decisions, notes) is escaped; long texts keep inside Telegram's limit.
"""

from __future__ import annotations

from datetime import tzinfo
from html import escape

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _

from bot import views
from bot.callbacks import SurveyCb, TopicAction, TopicCb
from domain.deliberation import (
    MAX_OPTIONS,
    MIN_OPTIONS,
    AlreadyRaised,
    BadNumber,
    BadOptions,
    SurveyResults,
    SurveyView,
    TopicView,
)
from domain.errors import DomainError, InvalidTransition
from storage.models import Topic, TopicEvent, TopicEventKind, TopicSource, TopicStatus, TopicTask

NEW_TOPICS_SHOWN = 10  # in one notice to staff, a button each; /topics lists them all


def status_label(status: str) -> str:
    return {
        TopicStatus.CANDIDATE: _("proposed by the bot"),
        TopicStatus.DISMISSED: _("set aside"),
        TopicStatus.COLLECTED: _("1 collected"),
        TopicStatus.DRAFTED: _("2 drafted"),
        TopicStatus.SURVEYED: _("3 survey open"),
        TopicStatus.VOTED: _("4 voted"),
        TopicStatus.APPLIED: _("5 being applied"),
        TopicStatus.FEEDBACK: _("6 execution feedback"),
        TopicStatus.NOTICED: _("7 publicly noticed"),
    }.get(TopicStatus(status), status)


def source_label(source: str) -> str:
    return {
        TopicSource.TICKET: _("a ticket that needs deliberation"),
        TopicSource.SUGGESTION: _("a resident's suggestion"),
        TopicSource.STAFF: _("community staff"),
        TopicSource.CANDIDATE: _("repeated reports of one kind in one compound"),
    }.get(TopicSource(source), source)


def topic_name(topic: Topic) -> str:
    """The title once drafted; before that the first words of what was raised."""
    if topic.title:
        return topic.title
    words = topic.origin_note or source_label(topic.source)
    return words if len(words) <= 30 else words[:30] + "…"


def topic_heading(topic: Topic) -> str:
    return _("Topic #{number} · {name}").format(number=topic.id, name=escape(topic_name(topic)))


def topics_text(topics: list[Topic]) -> str:
    if not topics:
        return _("No topics yet. /newtopic writes one; tickets and suggestions bring more.")
    lines = [_("<b>Deliberation topics</b> by step. Tap one to open it:")]
    lines += [f"{topic_heading(t)} — {status_label(t.status)}" for t in topics]
    return _fit(lines)


def topics_keyboard(topics: list[Topic]) -> InlineKeyboardMarkup:
    return views.inline_keyboard(
        [(f"#{t.id} {topic_name(t)}", TopicCb(action=TopicAction.OPEN, topic_id=t.id)) for t in topics], width=1
    )


def _fit(lines: list[str], keep: int = 0) -> str:
    """Drop lines after the first ``keep`` (oldest history first) until the text fits one message."""
    while len(lines) > keep + 1 and views.visible_length("\n".join(lines)) > views.MESSAGE_LIMIT - 2:
        del lines[keep]
        lines[keep] = "…"
    return "\n".join(lines)


def _options(topic: Topic) -> list[str]:
    return [f"{i + 1}. {escape(option)}" for i, option in enumerate(topic.options)]


def _decision_lines(topic: Topic) -> list[str]:
    if topic.votes_for is None:
        return []
    return [
        _("Decision: {decision}").format(decision=escape(topic.decision)),
        _("Vote: {yes} for, {no} against, {abstain} abstaining").format(
            yes=topic.votes_for, no=topic.votes_against, abstain=topic.votes_abstain
        ),
    ]


def task_line(task: TopicTask) -> str:
    return _("• {title} — {responsible}, due {due}: {percent}%").format(
        title=escape(task.title),
        responsible=escape(task.responsible),
        due=task.due_on.isoformat(),
        percent=task.progress,
    )


def event_text(event: TopicEvent, names: dict[int, str], tasks: dict[int, TopicTask]) -> str:
    actor = escape(names.get(event.actor_id, "?")) if event.actor_id is not None else _("the bot")
    note = escape(event.note)
    task = tasks.get(event.data.get("task_id", 0))
    task_title = escape(task.title) if task is not None else "?"
    match TopicEventKind(event.kind):
        case TopicEventKind.PROPOSED:
            return _("Proposed by the bot from {count} reports this month").format(
                count=len(event.data.get("ticket_ids") or [])
            )
        case TopicEventKind.COLLECTED:
            return _("Collected by {name} ({source}) {note}").format(
                name=actor, source=source_label(str(event.data.get("source", ""))), note=note
            )
        case TopicEventKind.TICKET_LINKED:
            return _("Ticket #{number} taken to deliberation").format(number=event.data.get("ticket_id"))
        case TopicEventKind.DRAFTED:
            return _("Drafted by {name}").format(name=actor)
        case TopicEventKind.SURVEY_OPENED:
            return _("Survey opened by {name}").format(name=actor)
        case TopicEventKind.VOTED:
            return _("Vote recorded: {decision} ({yes} for, {no} against, {abstain} abstaining)").format(
                decision=note,
                yes=event.data.get("votes_for"),
                no=event.data.get("votes_against"),
                abstain=event.data.get("votes_abstain"),
            )
        case TopicEventKind.TASK_ADDED:
            return _("Task added: {task}").format(task=task_title)
        case TopicEventKind.PROGRESS:
            return _("{task}: {percent}% — {note}").format(
                task=task_title, percent=event.data.get("percent"), note=note
            )
        case TopicEventKind.FEEDBACK:
            return _("Execution feedback started")
        case TopicEventKind.NOTICED:
            return _("Publicly noticed; finished")
        case TopicEventKind.DISMISSED:
            return _("Set aside by {name}: {reason}").format(name=actor, reason=note)
    return event.kind


def topic_text(view: TopicView, tz: tzinfo) -> str:
    """Staff's view: what, from where, which step, the draft, the decision, the tasks, and the history."""
    topic = view.topic
    lines = [
        f"<b>{topic_heading(topic)}</b>",
        _("Step: {status}").format(status=status_label(topic.status)),
        _("From: {source}").format(source=source_label(topic.source)),
    ]
    if topic.origin_note:
        lines.append(_("Raised as: {text}").format(text=escape(topic.origin_note)))
    if topic.background:
        lines.append(_("Background: {text}").format(text=escape(topic.background)))
    lines += _options(topic)
    lines += _decision_lines(topic)
    lines += [task_line(task) for task in view.tasks]
    lines.append("")
    keep = len(lines)
    tasks = {task.id: task for task in view.tasks}
    lines += [f"{views.local_time(e.at, tz)} · {event_text(e, view.names, tasks)}" for e in view.events]
    return _fit(lines, keep)


STEP_ACTIONS: dict[TopicStatus, list[TopicAction]] = {
    TopicStatus.CANDIDATE: [TopicAction.ACCEPT, TopicAction.DISMISS],
    TopicStatus.COLLECTED: [TopicAction.DRAFT, TopicAction.DISMISS],
    TopicStatus.DRAFTED: [TopicAction.DRAFT, TopicAction.OPEN_SURVEY, TopicAction.DISMISS],
    TopicStatus.SURVEYED: [TopicAction.RESULTS, TopicAction.RECORD_VOTE],
    TopicStatus.VOTED: [TopicAction.RESULTS, TopicAction.ADD_TASK],
    TopicStatus.APPLIED: [TopicAction.ADD_TASK, TopicAction.FEEDBACK],
    TopicStatus.FEEDBACK: [TopicAction.NOTICE],
}


def action_label(action: TopicAction) -> str:
    return {
        TopicAction.ACCEPT: _("✅ Accept as a topic"),
        TopicAction.DISMISS: _("🗑 Set aside"),
        TopicAction.DRAFT: _("✍️ Write the draft"),
        TopicAction.OPEN_SURVEY: _("📊 Open the survey"),
        TopicAction.RESULTS: _("📈 Survey results"),
        TopicAction.RECORD_VOTE: _("🗳 Record the decision"),
        TopicAction.ADD_TASK: _("➕ Add a task"),
        TopicAction.FEEDBACK: _("📣 Start execution feedback"),
        TopicAction.NOTICE: _("📌 Publicly notice"),
    }[action]


def topic_actions(view: TopicView) -> InlineKeyboardMarkup:
    """The buttons of the topic's current step, one per task for progress once tasks exist."""
    topic = view.topic
    buttons = [
        (action_label(a), TopicCb(action=a, topic_id=topic.id)) for a in STEP_ACTIONS.get(TopicStatus(topic.status), [])
    ]
    if topic.status in (TopicStatus.APPLIED, TopicStatus.FEEDBACK):
        buttons += [
            (
                _("📝 Progress: {task}").format(task=task.title[:30]),
                TopicCb(action=TopicAction.PROGRESS, topic_id=topic.id, task_id=task.id),
            )
            for task in view.tasks
        ]
    return views.inline_keyboard(buttons, width=1)


def results_text(results: SurveyResults) -> str:
    topic = results.topic
    lines = [f"<b>{topic_heading(topic)}</b>", _("Survey: {total} votes").format(total=results.total)]
    lines.append(
        _("Turnout: {voted} of {households} households on record voted (one vote per verified household)").format(
            voted=results.households_voted, households=results.households_in_scope
        )
    )
    lines += [f"{i + 1}. {escape(o)}: {n}" for i, (o, n) in enumerate(zip(topic.options, results.counts, strict=True))]
    return _fit(lines)


# --- residents -----------------------------------------------------------------------------------------


def survey_text(view: SurveyView) -> str:
    """A resident's view: title, background, options, their vote, and the decision once there is one."""
    topic = view.topic
    lines = [f"<b>{escape(topic.title)}</b>", "", escape(topic.background), ""]
    lines += _options(topic)
    if view.my_vote is not None and 0 <= view.my_vote < len(topic.options):
        option = escape(topic.options[view.my_vote])
        if view.by_other_member:
            lines.append(_("Your household's vote, cast by another member: {option}").format(option=option))
        else:
            lines.append(_("Your household's vote: {option}").format(option=option))
    if topic.status == TopicStatus.SURVEYED and not view.can_vote:
        lines.append(
            _("Only verified households vote, one vote each. Verify yours in /home: one tap with your phone number.")
        )
    elif topic.status == TopicStatus.SURVEYED:
        lines.append(
            _(
                "Tap an option to vote; you can change it until the meeting. One vote per household: a vote by "
                "another member of your household replaces yours."
            )
        )
    elif topic.status == TopicStatus.DRAFTED:
        lines.append(
            _(
                "The survey is not open yet: I will send you the invitation here when it opens. Until then, "
                "/suggest sends the community your own view or idea."
            )
        )
    elif topic.votes_for is not None:
        lines.append(
            _("The survey is closed. What is done about the decision is reported here and in the monthly feedback.")
        )
    lines += _decision_lines(topic)
    return _fit(lines)


def survey_keyboard(view: SurveyView) -> InlineKeyboardMarkup | None:
    topic = view.topic
    if topic.status != TopicStatus.SURVEYED or not view.can_vote:
        return None
    return views.inline_keyboard(
        [
            (("✅ " if i == view.my_vote else "") + option, SurveyCb(topic_id=topic.id, option=i))
            for i, option in enumerate(topic.options)
        ],
        width=1,
    )


def topic_update(topic: Topic, event: TopicEvent, task: TopicTask | None) -> str:
    """What a resident behind the topic is told when its decision or progress changes."""
    lines = [_("<b>Community deliberation: {title}</b>").format(title=escape(topic_name(topic)))]
    match TopicEventKind(event.kind):
        case TopicEventKind.VOTED:
            lines.append(_("The meeting has decided."))
            lines += _decision_lines(topic)
        case TopicEventKind.TASK_ADDED if task is not None:
            lines.append(_("A task to carry out the decision:"))
            lines.append(task_line(task))
        case TopicEventKind.PROGRESS if task is not None:
            lines.append(_("Progress: {note}").format(note=escape(event.note)))
            lines.append(task_line(task))
        case TopicEventKind.NOTICED:
            lines.append(_("The outcome has been publicly noticed; this topic is finished."))
            lines += _decision_lines(topic)
    return _fit(lines)


def view_button(topic_id: int) -> InlineKeyboardMarkup:
    return views.inline_keyboard([(_("🗳 Open the topic"), SurveyCb(topic_id=topic_id))])


def staff_new_topics(topics: list[Topic]) -> tuple[str, InlineKeyboardMarkup]:
    """Staff hear of topics waiting for them, in one message: the bot's candidates, or ones raised by a resident
    or worker. One topic is shown whole; several are listed, a button each (at most ``NEW_TOPICS_SHOWN``)."""
    if len(topics) == 1:
        (topic,) = topics
        lines = [f"<b>{topic_heading(topic)}</b>", _new_topic_source(topic)]
        if topic.origin_note:
            lines.append(escape(topic.origin_note))
        button = TopicCb(action=TopicAction.OPEN, topic_id=topic.id)
        return _fit(lines), views.inline_keyboard([(_("📂 Open the topic"), button)])
    shown = topics[:NEW_TOPICS_SHOWN]
    lines = [_("<b>{count} new topics wait for you.</b> Tap one to open it:").format(count=len(topics))]
    lines += [f"{topic_heading(t)}\n{_new_topic_source(t)}" for t in shown]
    if len(topics) > len(shown):
        lines.append(_("…and {count} more in /topics.").format(count=len(topics) - len(shown)))
    return _fit(lines, keep=1), topics_keyboard(shown)


def _new_topic_source(topic: Topic) -> str:
    if topic.status == TopicStatus.CANDIDATE:
        return _("The bot proposes a topic: the same kind of problem keeps being reported in one compound.")
    return _("A new topic was raised: {source}.").format(source=source_label(topic.source))


def refusal(error: DomainError, for_resident: bool = False) -> str:
    if isinstance(error, BadOptions):
        return _("Please send {low} to {high} options, one per line, each short enough for a button.").format(
            low=MIN_OPTIONS, high=MAX_OPTIONS
        )
    if isinstance(error, BadNumber):
        return _("That number is out of range.")
    if isinstance(error, AlreadyRaised):
        return _("This ticket is on topic #{number} already.").format(number=error.args[0])
    if isinstance(error, InvalidTransition) and for_resident:
        return _(
            "This topic has no survey open now. If one opens, the invitation comes here; /suggest sends the "
            "community your own idea."
        )
    if isinstance(error, InvalidTransition):
        return _("This button is out of date: the topic has moved on. Open it again from /topics.")
    return views.refusal(error)
