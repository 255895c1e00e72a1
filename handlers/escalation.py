"""Escalation buttons on the ticket card: up the ladder with a reason, back down with an instruction."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import EscalateCb, TicketAction, TicketCb
from bot.filters import Typed
from bot.views import ladder as ladder_views
from domain import escalation
from domain.clock import Clock
from domain.errors import DomainError, InvalidTransition
from domain.people import Person
from handlers.common import chat_of, finish_text_step, start_text_step
from storage.models import Level

router = Router(name="escalation")


class EscalationInput(StatesGroup):
    reason = State()
    instruction = State()


async def _ask_reason(query: CallbackQuery, state: FSMContext, ticket_id: int, target: escalation.Target) -> None:
    prompt = ladder_views.escalate_prompt(ticket_id, ladder_views.target_label(target))
    await start_text_step(
        query,
        state,
        EscalationInput.reason,
        prompt,
        ticket_id=ticket_id,
        level=target.level,
        department=target.department or "",
    )


@router.callback_query(TicketCb.filter(F.action == TicketAction.ESCALATE))
async def escalate_pressed(
    query: CallbackQuery, callback_data: TicketCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    ticket_id = callback_data.ticket_id
    try:
        targets = await escalation.escalation_targets(session, actor_id=user.id, ticket_id=ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    if len(targets) == 1 and targets[0].level == Level.COMMUNITY:
        await _ask_reason(query, state, ticket_id, targets[0])  # from the grid there is one way up
        return
    await query.answer()
    await chat_of(query).answer(
        ladder_views.choose_target(ticket_id), reply_markup=ladder_views.targets_keyboard(ticket_id, targets)
    )


@router.callback_query(EscalateCb.filter())
async def target_chosen(
    query: CallbackQuery, callback_data: EscalateCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        targets = await escalation.escalation_targets(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
        target = next(
            (t for t in targets if t.level == callback_data.level and (t.department or "") == callback_data.department),
            None,
        )
        if target is None:
            raise InvalidTransition(callback_data.level)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    await _ask_reason(query, state, callback_data.ticket_id, target)


@router.callback_query(TicketCb.filter(F.action == TicketAction.SEND_DOWN))
async def send_down_pressed(
    query: CallbackQuery, callback_data: TicketCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        await escalation.check_send_down(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    prompt = ladder_views.send_down_prompt(callback_data.ticket_id)
    await start_text_step(query, state, EscalationInput.instruction, prompt, ticket_id=callback_data.ticket_id)


@router.message(StateFilter(EscalationInput.reason), Typed())
async def escalation_reason(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    data = await state.get_data()
    step = escalation.escalate(
        session,
        actor_id=user.id,
        ticket_id=data["ticket_id"],
        level=Level(data["level"]),
        department=data["department"] or None,
        reason=message.text or "",
        now=clock(),
    )
    done = _("Ticket #{number} has been escalated; the resident has been told.").format(number=data["ticket_id"])
    await finish_text_step(message, state, user, step, done)


@router.message(StateFilter(EscalationInput.instruction), Typed())
async def send_down_instruction(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    ticket_id = (await state.get_data())["ticket_id"]
    step = escalation.send_down(
        session, actor_id=user.id, ticket_id=ticket_id, instruction=message.text or "", now=clock()
    )
    done = _("Ticket #{number} has been sent down with your instruction.").format(number=ticket_id)
    await finish_text_step(message, state, user, step, done)


@router.message(StateFilter(EscalationInput.reason))
@router.message(StateFilter(EscalationInput.instruction))
async def not_text(message: Message) -> None:
    await message.answer(_("Please send text, or /cancel."))
