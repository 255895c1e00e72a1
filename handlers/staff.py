"""Community staff: /ledger, the three-colour ledger (三色台账)."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot.filters import Command
from bot.views import ladder as ladder_views
from domain.clock import Clock
from domain.errors import AccessDenied
from domain.ledger import ledger
from domain.people import Person

router = Router(name="staff")


@router.message(Command("ledger"))
async def show_ledger(message: Message, session: AsyncSession, user: Person, clock: Clock, yellow_share: float) -> None:
    try:
        found = await ledger(session, viewer_id=user.id, now=clock(), yellow_share=yellow_share)
    except AccessDenied:
        await message.answer(_("Sorry, the ledger is only for community staff."))
        return
    await message.answer(ladder_views.ledger_text(found), reply_markup=ladder_views.ledger_keyboard(found))
