"""Grid workers and staff: /tickets, the ticket card's buttons, and the notes they write."""

from __future__ import annotations

from datetime import tzinfo

from aiogram import F, Router
from aiogram.enums import ContentType
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import TicketAction, TicketCb
from bot.filters import Button, Command, Typed
from domain import cards, tickets
from domain.clock import Clock
from domain.errors import DomainError
from domain.people import Person
from domain.tickets import TicketCard
from handlers.common import chat_of, finish_text_step, replace, start_text_step

router = Router(name="worker")


class WorkerInput(StatesGroup):
    hand_back_reason = State()
    note = State()
    resolution = State()


# A button that asks for text: the step it opens, the domain's check that the action still applies (so a stale
# or forged button is refused before anyone types), and the prompt.
PROMPTS = {
    TicketAction.HAND_BACK: (
        WorkerInput.hand_back_reason,
        tickets.check_can_hand_back,
        lambda n: _("Why are you handing ticket #{number} back? The next person will see your reason.").format(
            number=n
        ),
    ),
    TicketAction.NOTE: (
        WorkerInput.note,
        tickets.check_in_progress,
        lambda n: _("Write the progress note for ticket #{number} (text, or a photo with a caption).").format(number=n),
    ),
    TicketAction.RESOLVE: (
        WorkerInput.resolution,
        tickets.check_in_progress,
        lambda n: _("What was done to resolve ticket #{number}? Send text, or a photo with a caption.").format(
            number=n
        ),
    ),
}


@router.message(Command("tickets"))
@router.message(Button(views.MENU_TICKETS))
async def open_tickets(message: Message, session: AsyncSession, user: Person, tz: tzinfo) -> None:
    found = await tickets.open_tickets_for_worker(session, user.id)
    if not found:
        await message.answer(_("No open tickets for you. Well done!"))
        return
    lines = [_("<b>Open tickets</b> (oldest first). Tap one to open its card:")]
    lines += [views.ticket_line(ticket, tz) for ticket in found]
    await message.answer("\n".join(lines), reply_markup=views.tickets_keyboard(found, TicketAction.OPEN))


@router.callback_query(TicketCb.filter(F.action == TicketAction.OPEN))
async def open_card(
    query: CallbackQuery, callback_data: TicketCb, session: AsyncSession, user: Person, tz: tzinfo, clock: Clock
) -> None:
    try:
        opened = await tickets.open_ticket(session, viewer_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    await query.answer()
    text, markup = views.ticket_screen(opened, tz)
    shown = await chat_of(query).answer(text, reply_markup=markup)
    if isinstance(opened, TicketCard):  # a card with buttons: kept current from now on
        await cards.remember_copy(
            session, ticket_id=opened.ticket.id, chat_id=shown.chat.id, message_id=shown.message_id, now=clock()
        )


@router.callback_query(TicketCb.filter(F.action == TicketAction.ACCEPT))
async def accept(
    query: CallbackQuery,
    callback_data: TicketCb,
    session: AsyncSession,
    user: Person,
    clock: Clock,
    tz: tzinfo,
) -> None:
    try:
        await tickets.accept(session, actor_id=user.id, ticket_id=callback_data.ticket_id, now=clock())
        opened = await tickets.open_ticket(session, viewer_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    await query.answer(_("Accepted. The resident has been told."))
    text, markup = views.ticket_screen(opened, tz)
    await replace(chat_of(query), text, markup)


@router.callback_query(TicketCb.filter(F.action.in_(PROMPTS)))
async def ask_for_text(
    query: CallbackQuery, callback_data: TicketCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    next_state, check, prompt = PROMPTS[callback_data.action]
    try:
        await check(session, actor_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    await start_text_step(query, state, next_state, prompt(callback_data.ticket_id), ticket_id=callback_data.ticket_id)


def _text_and_photo(message: Message) -> tuple[str, str | None]:
    if message.photo:
        return message.caption or "", message.photo[-1].file_id
    return message.text or "", None


@router.message(StateFilter(WorkerInput.hand_back_reason), Typed())
async def hand_back_reason(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    ticket_id = (await state.get_data())["ticket_id"]
    step = tickets.hand_back(session, actor_id=user.id, ticket_id=ticket_id, reason=message.text or "", now=clock())
    await finish_text_step(
        message, state, user, step, _("Ticket #{number} has been handed on.").format(number=ticket_id)
    )


@router.message(StateFilter(WorkerInput.note), Typed(ContentType.PHOTO))
async def progress_note(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    text, photo = _text_and_photo(message)
    ticket_id = (await state.get_data())["ticket_id"]
    step = tickets.add_note(session, actor_id=user.id, ticket_id=ticket_id, text=text, photo=photo, now=clock())
    done = _("Note added to ticket #{number}; the resident has been told.").format(number=ticket_id)
    await finish_text_step(message, state, user, step, done)


@router.message(StateFilter(WorkerInput.resolution), Typed(ContentType.PHOTO))
async def resolution(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    text, photo = _text_and_photo(message)
    ticket_id = (await state.get_data())["ticket_id"]
    step = tickets.resolve(session, actor_id=user.id, ticket_id=ticket_id, note=text, photo=photo, now=clock())
    done = _("Ticket #{number} is resolved; the resident has been told.").format(number=ticket_id)
    await finish_text_step(message, state, user, step, done)


@router.message(StateFilter(WorkerInput.hand_back_reason))
@router.message(StateFilter(WorkerInput.note))
@router.message(StateFilter(WorkerInput.resolution))
async def not_text(message: Message) -> None:
    await message.answer(_("Please send text (or a photo with a caption), or /cancel."))
