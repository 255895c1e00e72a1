""" "Me too" in the report wizard: join a neighbour's open ticket instead of filing the same problem again.

The list itself is shown by handlers/report.py when the resident picks a category; the rules are in
domain/followers.py.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot.callbacks import MeTooAction, MeTooCb
from bot.views import feedback as feedback_views
from domain import followers
from domain.clock import Clock
from domain.errors import DomainError
from domain.people import Person
from handlers.common import chat_of, drop_buttons, show_menu
from handlers.report import ReportWizard

router = Router(name="me_too")


@router.callback_query(StateFilter(ReportWizard), MeTooCb.filter(F.action == MeTooAction.JOIN))
async def join(
    query: CallbackQuery,
    callback_data: MeTooCb,
    state: FSMContext,
    session: AsyncSession,
    user: Person,
    clock: Clock,
) -> None:
    try:
        ticket, households = await followers.join(
            session, user_id=user.id, ticket_id=callback_data.ticket_id, now=clock()
        )
    except DomainError as error:
        await query.answer(feedback_views.refusal(error), show_alert=True)  # the wizard goes on
        return
    await state.clear()  # nothing new is filed
    await query.answer()
    screen = chat_of(query)
    await drop_buttons(screen)
    await show_menu(screen, user, feedback_views.joined(ticket.id, households))


@router.callback_query(StateFilter(ReportWizard), MeTooCb.filter(F.action == MeTooAction.DIFFERENT))
async def different(query: CallbackQuery) -> None:
    await query.answer(_("All right: please go on with your report."))
    await drop_buttons(chat_of(query))


@router.callback_query(MeTooCb.filter())
async def stale(query: CallbackQuery) -> None:
    await query.answer(_("This report was already sent or cancelled."), show_alert=True)
