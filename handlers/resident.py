"""/my: a resident's reports, and any ticket's history for whoever may see it."""

from __future__ import annotations

from datetime import tzinfo

from aiogram import F, Router
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import TicketAction, TicketCb
from bot.filters import Button, Command
from domain import tickets
from domain.errors import DomainError
from domain.people import Person
from handlers.common import chat_of

router = Router(name="resident")


@router.message(Command("my"))
@router.message(Button(views.MENU_MY))
async def my_reports(message: Message, session: AsyncSession, user: Person, tz: tzinfo) -> None:
    mine = await tickets.tickets_of_resident(session, user.id)
    if not mine:
        await message.answer(_("You have not reported anything yet. /report starts a report."))
        return
    lines = [_("<b>Your reports</b> (newest first). Tap one to see its history:")]
    lines += [views.ticket_line(ticket, tz) for ticket in mine]
    await message.answer("\n".join(lines), reply_markup=views.tickets_keyboard(mine, TicketAction.HISTORY))


@router.callback_query(TicketCb.filter(F.action == TicketAction.HISTORY))
async def history(
    query: CallbackQuery, callback_data: TicketCb, session: AsyncSession, user: Person, tz: tzinfo
) -> None:
    try:
        view = await tickets.view_ticket(session, viewer_id=user.id, ticket_id=callback_data.ticket_id)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
        return
    await query.answer()
    await chat_of(query).answer(views.ticket_history(view, tz))
