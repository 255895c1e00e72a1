"""Last in line: anything no other handler understood gets a clear answer, never silence.

Some updates get a deliberate silence instead, by having no handler at all: edited messages (what was sent
has been acted on; an edit does not change it), channel posts, reactions, poll answers and join requests.
Outside private chats, bot/guard.py answers before any handler here is tried.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.enums import ContentType
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot.filters import AnyCommand, Content, Typed
from domain.directory import Directory
from domain.people import Person
from handlers import report
from handlers.common import show_menu

router = Router(name="fallback")


@router.message(AnyCommand())
async def unknown_command(message: Message) -> None:
    await message.answer(_("I do not know that command. /help lists what I can do."))


@router.message(StateFilter(None), Typed(ContentType.PHOTO))
async def stray_text(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    # Residents often just type what is wrong, or send a photo of it; treat that as the start of a report.
    await report.start_wizard(message, state, session, user, directory, first=message)


@router.message(StateFilter(None), Content(ContentType.TEXT))
async def stale_button(message: Message, user: Person) -> None:
    # What stray_text left: the text of a reply-keyboard button whose step has ended, never a report.
    await show_menu(message, user, _("That button belongs to a step that has ended. The menu below has the rest."))


@router.message()
async def unsupported(message: Message) -> None:
    await message.answer(
        _("I cannot use this kind of message here. Please send text or photos, or /help to see what I can do.")
    )


@router.callback_query()
async def unknown_button(query: CallbackQuery) -> None:
    await query.answer(_("This button is out of date."), show_alert=True)


@router.inline_query()
async def inline_query(query: InlineQuery) -> None:
    # The bot offers nothing to post into other chats (reports are private): an empty answer, at once, rather
    # than leaving the person's client waiting. Personal, so it is never cached for someone else.
    await query.answer([], cache_time=300, is_personal=True)
