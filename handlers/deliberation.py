"""The monthly deliberation: staff's /topics and /newtopic, residents' /suggest and survey buttons,
and "needs deliberation" on the ticket card. Every step the staff type goes through one FSM state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, tzinfo

from aiogram import F, Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot.callbacks import SurveyCb, TicketAction, TicketCb, TopicAction, TopicCb
from bot.filters import Command, Typed
from bot.views import deliberation as dv
from domain import deliberation
from domain.clock import Clock
from domain.deliberation import BadNumber, BadOptions
from domain.errors import DomainError, NotBound
from domain.people import Person
from domain.text import TextEmpty, TextTooLong, required_text
from domain.tickets import MAX_NOTE
from handlers.common import Screen, chat_of, finish_text_step, replace, start_text_step
from storage.models import TopicStatus

router = Router(name="deliberation")

# Refusals someone fixes by typing again: they stay in the step.
RETRY = (TextTooLong, TextEmpty, BadOptions, BadNumber)


class TopicInput(StatesGroup):
    ticket_reason = State()
    suggestion = State()
    new_topic = State()
    dismiss_reason = State()
    title = State()
    background = State()
    options = State()
    decision = State()
    votes = State()
    task_title = State()
    task_responsible = State()
    task_due = State()
    percent = State()
    progress_note = State()


async def _finish(message: Message, state: FSMContext, user: Person, step: Awaitable[object], done: str) -> None:
    await finish_text_step(message, state, user, step, done, refusal=dv.refusal, retry_on=RETRY)


async def _prompt(message: Message, text: str) -> None:
    await message.answer(text + "\n" + _("/cancel to stop."))


# --- staff: the list and the topic ---------------------------------------------------------------------


@router.message(Command("topics"))
async def list_topics(message: Message, session: AsyncSession, user: Person) -> None:
    try:
        topics = await deliberation.topics_for_staff(session, actor_id=user.id)
    except DomainError:
        await message.answer(_("Sorry, the deliberation topics are only for community staff."))
        return
    await message.answer(dv.topics_text(topics), reply_markup=dv.topics_keyboard(topics))


async def _show_topic(screen: Screen, session: AsyncSession, user: Person, topic_id: int, tz: tzinfo) -> None:
    view = await deliberation.view_topic(session, actor_id=user.id, topic_id=topic_id)
    await screen.answer(dv.topic_text(view, tz), reply_markup=dv.topic_actions(view))


@router.callback_query(TopicCb.filter(F.action == TopicAction.OPEN))
async def open_topic(
    query: CallbackQuery, callback_data: TopicCb, session: AsyncSession, user: Person, tz: tzinfo
) -> None:
    try:
        await _show_topic(chat_of(query), session, user, callback_data.topic_id, tz)
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    await query.answer()


@router.callback_query(TopicCb.filter(F.action == TopicAction.RESULTS))
async def results(query: CallbackQuery, callback_data: TopicCb, session: AsyncSession, user: Person) -> None:
    try:
        found = await deliberation.survey_results(session, actor_id=user.id, topic_id=callback_data.topic_id)
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    await query.answer()
    await chat_of(query).answer(dv.results_text(found))


# Steps that need no typing: the button does it, then the topic is shown at its new step.
ONE_TAP = {
    TopicAction.ACCEPT: (deliberation.accept_candidate, lambda: _("Accepted as a topic.")),
    TopicAction.OPEN_SURVEY: (deliberation.open_survey, lambda: _("The survey is open.")),
    TopicAction.FEEDBACK: (deliberation.start_feedback, lambda: _("Execution feedback started.")),
    TopicAction.NOTICE: (deliberation.publish_notice, lambda: _("Publicly noticed; the residents have been told.")),
}


@router.callback_query(TopicCb.filter(F.action.in_(ONE_TAP)))
async def one_tap(
    query: CallbackQuery, callback_data: TopicCb, session: AsyncSession, user: Person, clock: Clock, tz: tzinfo
) -> None:
    step, done = ONE_TAP[callback_data.action]
    try:
        await step(session, actor_id=user.id, topic_id=callback_data.topic_id, now=clock())
        await _show_topic(chat_of(query), session, user, callback_data.topic_id, tz)
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    await query.answer(done())


# Steps that start with typing: the state to enter, the steps they may start from, and the prompt.
TYPED: dict[TopicAction, tuple[State, tuple[TopicStatus, ...], Callable[[], str]]] = {
    TopicAction.DISMISS: (
        TopicInput.dismiss_reason,
        deliberation.DISMISSABLE,
        lambda: _("Why is this topic set aside? Staff will see your reason in its history."),
    ),
    TopicAction.DRAFT: (
        TopicInput.title,
        (TopicStatus.COLLECTED, TopicStatus.DRAFTED),
        lambda: _("Draft, 1 of 3: the topic's title."),
    ),
    TopicAction.RECORD_VOTE: (
        TopicInput.decision,
        (TopicStatus.SURVEYED,),
        lambda: _("The meeting's decision, in words (this closes the survey):"),
    ),
    TopicAction.ADD_TASK: (
        TopicInput.task_title,
        (TopicStatus.VOTED, TopicStatus.APPLIED),
        lambda: _("Task, 1 of 3: what is to be done?"),
    ),
}


@router.callback_query(TopicCb.filter(F.action.in_(TYPED)))
async def ask_for_text(
    query: CallbackQuery, callback_data: TopicCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    next_state, steps, prompt = TYPED[callback_data.action]
    # Checked now, so a forged or stale button is refused before anyone types.
    try:
        await deliberation.check_step(session, actor_id=user.id, topic_id=callback_data.topic_id, steps=steps)
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    await start_text_step(query, state, next_state, prompt(), topic_id=callback_data.topic_id)


@router.callback_query(TopicCb.filter(F.action == TopicAction.PROGRESS))
async def ask_for_progress(
    query: CallbackQuery, callback_data: TopicCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        task = await deliberation.check_task(
            session, actor_id=user.id, topic_id=callback_data.topic_id, task_id=callback_data.task_id
        )
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    prompt = _("How far is “{task}”? A percentage, 0 to 100.").format(task=task.title)
    await start_text_step(query, state, TopicInput.percent, prompt, topic_id=callback_data.topic_id, task_id=task.id)


async def _next(message: Message, state: FSMContext, next_state: State, prompt: str, **data: object) -> None:
    """An intermediate typed step: keep what was typed and ask for the next part."""
    await state.update_data(data)
    await state.set_state(next_state)
    await _prompt(message, prompt)


async def _checked(message: Message, limit: int) -> str | None:
    """The typed text, or None after telling them why it cannot be used (they stay in the step)."""
    try:
        return required_text(message.text or "", limit)
    except DomainError as error:
        await message.answer(dv.refusal(error))
        return None


@router.message(StateFilter(TopicInput.dismiss_reason), Typed())
async def dismiss_reason(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    topic_id = (await state.get_data())["topic_id"]
    step = deliberation.dismiss(session, actor_id=user.id, topic_id=topic_id, reason=message.text or "", now=clock())
    await _finish(message, state, user, step, _("Topic #{number} is set aside.").format(number=topic_id))


@router.message(StateFilter(TopicInput.title), Typed())
async def draft_title(message: Message, state: FSMContext) -> None:
    if (title := await _checked(message, deliberation.MAX_TITLE)) is None:
        return
    await _next(
        message, state, TopicInput.background, _("Draft, 2 of 3: the background residents should know."), title=title
    )


@router.message(StateFilter(TopicInput.background), Typed())
async def draft_background(message: Message, state: FSMContext) -> None:
    if (background := await _checked(message, deliberation.MAX_BACKGROUND)) is None:
        return
    prompt = _("Draft, 3 of 3: the options residents choose from, one per line ({low} to {high}).").format(
        low=deliberation.MIN_OPTIONS, high=deliberation.MAX_OPTIONS
    )
    await _next(message, state, TopicInput.options, prompt, background=background)


@router.message(StateFilter(TopicInput.options), Typed())
async def draft_options(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    data = await state.get_data()
    step = deliberation.draft(
        session,
        actor_id=user.id,
        topic_id=data["topic_id"],
        title=data["title"],
        background=data["background"],
        options=(message.text or "").splitlines(),
        now=clock(),
    )
    done = _("Topic #{number} is drafted. Open it from /topics to start the survey.").format(number=data["topic_id"])
    await _finish(message, state, user, step, done)


@router.message(StateFilter(TopicInput.decision), Typed())
async def decision(message: Message, state: FSMContext) -> None:
    if (text := await _checked(message, MAX_NOTE)) is None:
        return
    prompt = _("The vote: three numbers, for, against and abstaining (e.g. 23 2 1).")
    await _next(message, state, TopicInput.votes, prompt, decision=text)


def _numbers(text: str, count: int) -> list[int] | None:
    parts = text.split()
    if len(parts) != count or not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


@router.message(StateFilter(TopicInput.votes), Typed())
async def votes(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    numbers = _numbers(message.text or "", 3)
    if numbers is None:
        await message.answer(_("Please send three whole numbers: for, against, abstaining."))
        return
    data = await state.get_data()
    step = deliberation.record_decision(
        session,
        actor_id=user.id,
        topic_id=data["topic_id"],
        decision=data["decision"],
        votes=(numbers[0], numbers[1], numbers[2]),
        now=clock(),
    )
    done = _("The decision on topic #{number} is recorded; the residents have been told.").format(
        number=data["topic_id"]
    )
    await _finish(message, state, user, step, done)


@router.message(StateFilter(TopicInput.task_title), Typed())
async def task_title(message: Message, state: FSMContext) -> None:
    if (title := await _checked(message, deliberation.MAX_TITLE)) is None:
        return
    prompt = _("Task, 2 of 3: who is responsible (e.g. the property company)?")
    await _next(message, state, TopicInput.task_responsible, prompt, task_title=title)


@router.message(StateFilter(TopicInput.task_responsible), Typed())
async def task_responsible(message: Message, state: FSMContext) -> None:
    if (responsible := await _checked(message, deliberation.MAX_RESPONSIBLE)) is None:
        return
    prompt = _("Task, 3 of 3: the due date, as YYYY-MM-DD.")
    await _next(message, state, TopicInput.task_due, prompt, responsible=responsible)


@router.message(StateFilter(TopicInput.task_due), Typed())
async def task_due(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    try:
        due_on = date.fromisoformat((message.text or "").strip())
    except ValueError:
        await message.answer(_("Please write the date as YYYY-MM-DD, e.g. 2026-12-20."))
        return
    data = await state.get_data()
    step = deliberation.add_task(
        session,
        actor_id=user.id,
        topic_id=data["topic_id"],
        title=data["task_title"],
        responsible=data["responsible"],
        due_on=due_on,
        now=clock(),
    )
    done = _("Task added to topic #{number}; the residents have been told.").format(number=data["topic_id"])
    await _finish(message, state, user, step, done)


@router.message(StateFilter(TopicInput.percent), Typed())
async def percent(message: Message, state: FSMContext) -> None:
    numbers = _numbers((message.text or "").rstrip("%"), 1)
    try:
        value = deliberation.check_percent(numbers[0] if numbers else -1)
    except DomainError:
        await message.answer(_("Please send a whole number from 0 to 100."))
        return
    await _next(message, state, TopicInput.progress_note, _("What was done? A short note."), percent=value)


@router.message(StateFilter(TopicInput.progress_note), Typed())
async def progress_note(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    data = await state.get_data()
    step = deliberation.task_progress(
        session,
        actor_id=user.id,
        topic_id=data["topic_id"],
        task_id=data["task_id"],
        percent=data["percent"],
        note=message.text or "",
        now=clock(),
    )
    done = _("Progress recorded on topic #{number}; the residents have been told.").format(number=data["topic_id"])
    await _finish(message, state, user, step, done)


# --- raising a topic: staff directly, a resident's suggestion, a ticket ------------------------------------


@router.message(Command("newtopic"))
async def new_topic(message: Message, state: FSMContext, session: AsyncSession, user: Person) -> None:
    try:
        await deliberation.check_staff(session, actor_id=user.id)
    except DomainError:
        await message.answer(_("Sorry, only community staff write topics directly. Residents can send /suggest."))
        return
    await state.set_state(TopicInput.new_topic)
    await _prompt(message, _("What should the community deliberate? Describe the matter."))


@router.message(StateFilter(TopicInput.new_topic), Typed())
async def new_topic_text(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    step = deliberation.raise_by_staff(session, actor_id=user.id, text=message.text or "", now=clock())
    await _finish(message, state, user, step, _("The topic is collected. Draft it from /topics."))


@router.message(Command("suggest"))
async def suggest(message: Message, state: FSMContext, user: Person) -> None:
    if user.building_id is None:  # refused before they type; the domain checks again when it is sent
        await message.answer(dv.refusal(NotBound()))
        return
    await state.set_state(TopicInput.suggestion)
    await _prompt(
        message,
        _("Your suggestion (金点子) for your compound: what could be better, and how? It goes to the community staff."),
    )


@router.message(StateFilter(TopicInput.suggestion), Typed())
async def suggestion_text(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    step = deliberation.suggest(session, user_id=user.id, text=message.text or "", now=clock())
    done = _("Thank you! Your suggestion went to the community staff; you will hear what the meeting decides.")
    await _finish(message, state, user, step, done)


@router.callback_query(TicketCb.filter(F.action == TicketAction.DELIBERATE))
async def deliberate_pressed(
    query: CallbackQuery, callback_data: TicketCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        await deliberation.check_ticket(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(dv.refusal(error), show_alert=True)
        return
    prompt = _("Why does ticket #{number} need the monthly deliberation? Staff will see your reason.").format(
        number=callback_data.ticket_id
    )
    await start_text_step(query, state, TopicInput.ticket_reason, prompt, ticket_id=callback_data.ticket_id)


@router.message(StateFilter(TopicInput.ticket_reason), Typed())
async def ticket_reason(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    ticket_id = (await state.get_data())["ticket_id"]
    step = deliberation.raise_from_ticket(
        session, actor_id=user.id, ticket_id=ticket_id, reason=message.text or "", now=clock()
    )
    done = _("Ticket #{number} is taken to the monthly deliberation; staff have been told.").format(number=ticket_id)
    await _finish(message, state, user, step, done)


@router.message(StateFilter(*TopicInput.__states__))
async def not_text(message: Message) -> None:
    await message.answer(_("Please send text, or /cancel."))


# --- residents: the survey ---------------------------------------------------------------------------------


@router.callback_query(SurveyCb.filter())
async def survey(
    query: CallbackQuery, callback_data: SurveyCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    try:
        if callback_data.option < 0:
            view = await deliberation.survey_view(session, user_id=user.id, topic_id=callback_data.topic_id)
        else:
            view = await deliberation.vote(
                session, user_id=user.id, topic_id=callback_data.topic_id, option=callback_data.option, now=clock()
            )
    except DomainError as error:
        await query.answer(dv.refusal(error, for_resident=True), show_alert=True)
        return
    if callback_data.option < 0:
        await query.answer()
        await chat_of(query).answer(dv.survey_text(view), reply_markup=dv.survey_keyboard(view))
        return
    if view.replaced:
        await query.answer(_("Thank you. One vote per household: yours replaces the one another member cast."))
    else:
        await query.answer(_("Thank you, your vote is counted."))
    await replace(chat_of(query), dv.survey_text(view), dv.survey_keyboard(view))
