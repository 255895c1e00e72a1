"""Commands that work everywhere: /cancel, /help, /language, and the main menu."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Router
from aiogram.enums import ChatType
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.types import CallbackQuery, Chat, InaccessibleMessage, InlineKeyboardMarkup, Message
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import LanguageCb
from bot.filters import Button, Command
from bot.i18n import LANGUAGES
from domain.clock import Clock
from domain.errors import DomainError
from domain.menus import queue_menus
from domain.people import Person, set_language
from domain.text import TextEmpty, TextTooLong

router = Router(name="common")


async def finish_text_step(
    message: Message,
    state: FSMContext,
    user: Person,
    step: Awaitable[Any],
    done: str,
    refusal: Callable[[DomainError], str] = views.refusal,
    retry_on: tuple[type[DomainError], ...] = (TextTooLong, TextEmpty),
) -> None:
    """Run the domain step that the text someone just typed was for, and end that step.

    A refusal they can fix by typing again (too long, nothing but blanks) keeps them in the step; any other
    refusal, or success, ends it and shows the main menu with the answer.
    """
    try:
        await step
    except retry_on as error:
        await message.answer(refusal(error))
        return
    except DomainError as error:
        done = refusal(error)
    await state.clear()
    await show_menu(message, user, done)


async def start_text_step(
    query: CallbackQuery, state: FSMContext, next_state: State, prompt: str, **data: object
) -> None:
    """A button (already checked) that starts a typed step: enter it, keep what it is about, and ask.

    Shared so every typed step is entered the same way and always says how to leave it.
    """
    await state.set_state(next_state)
    await state.set_data(data)
    await query.answer()
    await chat_of(query).answer(prompt + "\n" + _("/cancel to stop."))


# The message a button was on. Telegram sends an InaccessibleMessage for one it no longer shows the bot
# (older than 48 hours, or deleted): it names the chat, so a new message can still go there, but it cannot be
# edited. Handlers answer through these, and never need to ask which of the two they have.
Screen = Message | InaccessibleMessage


def chat_of(query: CallbackQuery) -> Screen:
    """Where to answer a pressed button: the chat of the message it was on.

    Buttons reach the handlers only from a private chat (bot/guard.py), whose id is the presser's own; so that
    is the chat too when Telegram names no message (a button on a message sent in inline mode).
    """
    if query.message is not None:
        return query.message
    private = Chat(id=query.from_user.id, type=ChatType.PRIVATE)
    return InaccessibleMessage(chat=private, message_id=0).as_(query.bot)


async def replace(screen: Screen, text: str, reply_markup: InlineKeyboardMarkup | None = None) -> None:
    """Show ``text`` in place of the message, or as a new message when that one can no longer be edited."""
    if isinstance(screen, Message):
        await screen.edit_text(text, reply_markup=reply_markup)
    else:
        await screen.answer(text, reply_markup=reply_markup)


async def drop_buttons(screen: Screen, reply_markup: InlineKeyboardMarkup | None = None) -> None:
    """Take the used buttons off the message (or put ``reply_markup`` instead); an old message keeps them,
    and they are refused as out of date when pressed."""
    if isinstance(screen, Message):
        await screen.edit_reply_markup(reply_markup=reply_markup)


async def show_menu(message: Screen, user: Person, text: str) -> None:
    await message.answer(text, reply_markup=views.main_menu(user.is_worker))


@router.message(Command("cancel"), StateFilter("*"))
async def cancel(message: Message, state: FSMContext, session: AsyncSession, user: Person) -> None:
    had_something = await state.get_state() is not None
    await state.clear()
    text = _("Cancelled. Nothing was sent.") if had_something else _("There is nothing to cancel.")
    await show_menu(message, user, text)


@router.message(Command("help"))
async def help_(message: Message, session: AsyncSession, user: Person) -> None:
    text = _(
        "I pass your reports to your grid worker and tell you how they go.\n\n"
        "/report — report a problem\n"
        "/my — your reports and their progress\n"
        "/home — where you live, and verifying your household\n"
        "/suggest — a suggestion (金点子) for the monthly deliberation\n"
        "/settings — turn the monthly broadcasts off or on\n"
        "/language — 语言 / language\n"
        "/cancel — stop what you are doing"
    )
    if user.is_worker:  # residents are not pointed to commands that are not theirs
        text += "\n\n" + _(
            "For grid workers and staff:\n"
            "/tickets — tickets to handle\n"
            "/ledger — the three-colour ledger (community staff)\n"
            "/stats — the month's figures and ranking (staff, street office; workers their own)\n"
            "/topics — deliberation topics, step by step (community staff)\n"
            "/newtopic — write a deliberation topic (community staff)\n"
            "/broadcasts — the monthly agenda and feedback broadcasts (community staff)\n"
            "/verify — residents waiting to be verified (grid workers)\n"
            "/households — verified households per building (community staff)\n"
            "/register — import the household register (community staff)"
        )
    await show_menu(message, user, text)


@router.message(Command("language"))
@router.message(Button(views.MENU_LANGUAGE))
async def choose_language(message: Message) -> None:
    keyboard = views.inline_keyboard([(name, LanguageCb(code=code)) for code, name in LANGUAGES.items()])
    await message.answer(_("Choose your language:"), reply_markup=keyboard)


@router.callback_query(LanguageCb.filter())
async def set_language_(
    query: CallbackQuery, callback_data: LanguageCb, session: AsyncSession, user: Person, i18n: I18n, clock: Clock
) -> None:
    if callback_data.code not in LANGUAGES:
        await query.answer(_("Sorry, you cannot open this."), show_alert=True)
        return
    await set_language(session, user.id, callback_data.code)
    if user.is_worker:  # their own "/" menu, in the language they chose
        await queue_menus(session, clock(), [user.id], again=True)
    with i18n.use_locale(callback_data.code):
        await query.answer()
        await show_menu(chat_of(query), user, _("Language changed."))
