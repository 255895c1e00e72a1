"""The resident closes the loop: "Is it fixed?" (Yes / No with a reason), the 1-5 rating and its comment.

The rules (who may answer, in which state) are in domain/confirmation.py; this only reads the buttons and text.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import FeedbackAction, FeedbackCb
from bot.filters import Typed
from bot.views import feedback as feedback_views
from domain import confirmation
from domain.clock import Clock
from domain.errors import DomainError
from domain.people import Person
from handlers.common import chat_of, drop_buttons, finish_text_step, start_text_step

router = Router(name="confirm")


class FeedbackInput(StatesGroup):
    reason = State()  # why it is not fixed
    comment = State()  # the optional comment on the rating


async def _refuse(query: CallbackQuery, error: DomainError) -> None:
    await query.answer(feedback_views.refusal(error), show_alert=True)


@router.callback_query(FeedbackCb.filter(F.action == FeedbackAction.FIXED))
async def fixed(
    query: CallbackQuery, callback_data: FeedbackCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    try:
        ticket = await confirmation.confirm_fixed(
            session, actor_id=user.id, ticket_id=callback_data.ticket_id, now=clock()
        )
    except DomainError as error:
        await _refuse(query, error)
        return
    await query.answer()
    screen = chat_of(query)
    await drop_buttons(screen, views.history_keyboard(ticket.id))
    await screen.answer(feedback_views.rating_prompt(ticket.id), reply_markup=feedback_views.rating_keyboard(ticket.id))


@router.callback_query(FeedbackCb.filter(F.action == FeedbackAction.NOT_FIXED))
async def not_fixed(
    query: CallbackQuery, callback_data: FeedbackCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:  # refuse a forged or stale button before the resident types anything
        await confirmation.check_can_answer(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await _refuse(query, error)
        return
    await state.set_state(FeedbackInput.reason)
    await state.set_data({"ticket_id": callback_data.ticket_id})
    await query.answer()
    await chat_of(query).answer(feedback_views.reason_prompt(callback_data.ticket_id))


@router.message(StateFilter(FeedbackInput.reason), Typed())
async def reason_given(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    ticket_id = int((await state.get_data())["ticket_id"])
    step = confirmation.reopen(session, actor_id=user.id, ticket_id=ticket_id, reason=message.text or "", now=clock())
    done = _(
        "Ticket #{number} is reopened and back with the worker, with your words. I will tell you about every step."
    ).format(number=ticket_id)
    await finish_text_step(message, state, user, step, done, feedback_views.refusal)


@router.message(StateFilter(FeedbackInput.reason))
async def reason_not_text(message: Message) -> None:
    await message.answer(_("Please write in words what is still wrong, or /cancel."))


@router.callback_query(FeedbackCb.filter(F.action == FeedbackAction.RATE))
async def rated(
    query: CallbackQuery, callback_data: FeedbackCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    try:
        await confirmation.rate(
            session, actor_id=user.id, ticket_id=callback_data.ticket_id, stars=callback_data.stars, now=clock()
        )
    except DomainError as error:
        await _refuse(query, error)
        return
    await query.answer()
    screen = chat_of(query)
    await drop_buttons(screen)
    # No step opens here: the comment is optional, and what the resident types next may be a new problem.
    await screen.answer(
        feedback_views.rated(callback_data.stars), reply_markup=feedback_views.comment_keyboard(callback_data.ticket_id)
    )


@router.callback_query(FeedbackCb.filter(F.action == FeedbackAction.COMMENT))
async def add_comment(
    query: CallbackQuery, callback_data: FeedbackCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        await confirmation.check_can_comment(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await _refuse(query, error)
        return
    prompt = feedback_views.comment_prompt(callback_data.ticket_id)
    await start_text_step(query, state, FeedbackInput.comment, prompt, ticket_id=callback_data.ticket_id)


@router.message(StateFilter(FeedbackInput.comment), Typed())
async def commented(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    ticket_id = int((await state.get_data())["ticket_id"])
    step = confirmation.comment_on_rating(
        session, actor_id=user.id, ticket_id=ticket_id, text=message.text or "", now=clock()
    )
    await finish_text_step(
        message, state, user, step, _("Thank you for your feedback! The worker will read it."), feedback_views.refusal
    )


@router.message(StateFilter(FeedbackInput.comment))
async def comment_not_text(message: Message) -> None:
    await message.answer(_("Please send your comment as text, or /cancel."))
