"""The monthly broadcasts: residents turn them off and on (/settings); staff preview, send now, follow progress."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import BroadcastAction, BroadcastCb, SettingsAction, SettingsCb
from bot.filters import Command
from bot.views import broadcasts as bv
from domain import broadcasts
from domain.clock import Clock
from domain.errors import AccessDenied, DomainError
from domain.people import Person
from handlers.common import chat_of
from storage.models import BroadcastKind

router = Router(name="broadcasts")


def _staff_only() -> str:
    return _("Sorry, broadcasts are only for community staff.")


@router.message(Command("settings"))
async def show_settings(message: Message, session: AsyncSession, user: Person) -> None:
    settings = await broadcasts.resident_settings(session, user.id)
    await message.answer(bv.settings_text(settings), reply_markup=bv.settings_keyboard(settings))


@router.callback_query(SettingsCb.filter())
async def change_settings(query: CallbackQuery, callback_data: SettingsCb, session: AsyncSession, user: Person) -> None:
    match callback_data.action:
        case SettingsAction.BROADCASTS_ON | SettingsAction.BROADCASTS_OFF:
            wanted = callback_data.action is SettingsAction.BROADCASTS_ON
            settings = await broadcasts.set_broadcasts(session, user.id, wanted)
            done = _("Monthly broadcasts turned on.") if wanted else _("Monthly broadcasts turned off.")
        case SettingsAction.PUBLIC_COPY_ON | SettingsAction.PUBLIC_COPY_OFF:
            wanted = callback_data.action is SettingsAction.PUBLIC_COPY_ON
            settings = await broadcasts.set_public_copy(session, user.id, wanted)
            done = (
                _("You will get a private copy of the execution feedback and of the public notices.")
                if wanted
                else _("The execution feedback and the public notices stay in the public channel; no private copy.")
            )
    await query.answer(done)
    # From a broadcast's own button, the broadcast stays; the settings come as a new message.
    await chat_of(query).answer(bv.settings_text(settings), reply_markup=bv.settings_keyboard(settings))


@router.message(Command("broadcasts"))
async def staff_menu(message: Message, session: AsyncSession, user: Person) -> None:
    try:
        latest = await broadcasts.latest_broadcasts(session, user.id)
    except AccessDenied:
        await message.answer(_staff_only())
        return
    await message.answer(bv.staff_menu(latest), reply_markup=bv.staff_menu_keyboard(latest))


@router.callback_query(BroadcastCb.filter())
async def staff_action(
    query: CallbackQuery, callback_data: BroadcastCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    message = chat_of(query)
    try:
        if callback_data.action is BroadcastAction.PROGRESS:
            progress = await broadcasts.progress(session, user.id, callback_data.broadcast_id)
            await query.answer()
            await message.answer(bv.progress_text(progress), reply_markup=bv.progress_keyboard(progress.broadcast))
            return
        if callback_data.kind not in BroadcastKind.monthly():
            raise AccessDenied("broadcast kind")  # only the monthly ones are previewed and sent by hand
        kind = BroadcastKind(callback_data.kind)
        if callback_data.action is BroadcastAction.PREVIEW:
            preview = await broadcasts.preview(session, user.id, kind, clock())
            await query.answer()
            await message.answer(bv.preview_intro(preview))
            await message.answer(
                bv.broadcast_text(preview.community, kind, preview.period, preview.content),
                reply_markup=bv.preview_keyboard(preview),
            )
            return
        started = await broadcasts.send_now(session, user.id, kind, clock())
        await query.answer()
        await message.answer(bv.sent_now(started), reply_markup=bv.progress_keyboard(started.broadcast))
    except AccessDenied:
        await query.answer(_staff_only(), show_alert=True)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
