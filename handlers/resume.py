"""After a crash: show people where they stand when the answer to their last update may have been lost.

The bot saves what an update changes (and a wizard's step) before it answers, so a process killed in between
leaves the change made and the answer unsent: the person still sees the previous question and its keyboard.
At start the inbox feeds each such person's last update through the dispatcher again with ``resume=True``
(bot/intake.py, ``UpdateInbox.resume``). This router comes first and takes those updates: nothing is done
twice; the person gets the question they are at, with its buttons, or a short line that their message arrived.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Filter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, TelegramObject
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from domain.directory import Directory
from domain.people import Person
from handlers import report
from handlers.common import Screen, chat_of, show_menu

router = Router(name="resume")


class Resuming(Filter):
    """An update handled before a crash, fed again only to show where its person stands."""

    async def __call__(self, event: TelegramObject, resume: bool = False) -> bool:
        return resume


@router.message(Resuming())
async def resume_message(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    await where_you_stand(message, state, session, user, directory)


@router.callback_query(Resuming())
async def resume_press(
    query: CallbackQuery, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    # The press itself is long past acknowledging: Telegram refuses answers to old presses.
    await where_you_stand(chat_of(query), state, session, user, directory)


async def where_you_stand(
    screen: Screen, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    if await report.ask_again(screen, state, session, user, directory):
        return
    if await state.get_state() is not None:
        # Another step that waits for words (a note, a reason): its question is on the screen already.
        await screen.answer(
            _("I was interrupted for a moment. I am still waiting for your answer above; /cancel to stop.")
        )
        return
    # The main menu replaces whatever keyboard the lost answer was to take away (a finished wizard's Submit).
    await show_menu(
        screen,
        user,
        _(
            "I was interrupted for a moment, so my answer to your last message may be missing: it was received "
            "and saved."
        ),
    )
