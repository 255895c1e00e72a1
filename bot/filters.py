"""Filters for message content, keyboard buttons and commands.

They do what ``F.text``, ``F.text == ...`` and ``F.text.startswith("/")`` would, on the event loop: aiogram
runs a bare magic filter in a worker thread (``asyncio.to_thread``), and that hop cost more than the rest of a
routing decision in bench/intake.py. For the same reason handlers use ``StateFilter(state)`` rather than a
bare ``State``, whose ``__call__`` is synchronous.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiogram import Bot
from aiogram.enums import ChatType, ContentType
from aiogram.filters import Command as AiogramCommand
from aiogram.filters import Filter
from aiogram.types import ChatMemberUpdated, Message
from aiogram.utils.i18n import I18n, get_i18n
from aiogram.utils.i18n.lazy_proxy import LazyProxy

from bot import views
from bot.views import households as household_views
from domain.people import Person

# Every reply-keyboard button the bot shows. Such a keyboard stays on the person's screen until another replaces it,
# so after a lost answer or a step left another way, its buttons may be pressed at any step.
REPLY_BUTTONS = (
    *views.MAIN_MENU_BUTTONS,
    views.WIZARD_DONE,
    views.WIZARD_LOCATION,
    views.WIZARD_SUBMIT,
    views.WIZARD_CANCEL,
    household_views.SHARE_PHONE,
    household_views.ASK_WORKER,
    household_views.NO_PHOTO,
)


class Content(Filter):
    """Messages of these kinds: Content(ContentType.TEXT, ContentType.PHOTO)."""

    def __init__(self, *kinds: ContentType) -> None:
        self.kinds = frozenset(kinds)

    async def __call__(self, message: Message) -> bool:
        return message.content_type in self.kinds


class Button(Filter):
    """A reply-keyboard button, matched in the user's language."""

    def __init__(self, label: LazyProxy) -> None:
        self.label = label

    async def __call__(self, message: Message) -> bool:
        return message.text is not None and message.text == str(self.label)


@cache
def button_labels(i18n: I18n) -> frozenset[str]:
    """The reply-keyboard buttons' texts in every language: a keyboard shown before a change of language stays."""
    labels: set[str] = set()
    for locale in i18n.available_locales:
        with i18n.use_locale(locale):
            labels.update(str(label) for label in REPLY_BUTTONS)
    return frozenset(labels)


class Typed(Filter):
    """Words the person wrote: a text message that is not a reply-keyboard button's text (in any language), or a
    message of one of ``also`` kinds (Typed(ContentType.PHOTO): text or a photo).

    A step that waits for a description, a note or a reason takes its words through this filter, so an old
    keyboard's "📨 Submit" pressed there is never filed as them: it falls through to the step's own handler for
    anything else, which asks again.
    """

    def __init__(self, *also: ContentType) -> None:
        self.also = frozenset(also)

    async def __call__(self, message: Message) -> bool:
        if message.content_type in self.also:
            return True
        return message.text is not None and message.text not in button_labels(get_i18n())


class Command(AiogramCommand):
    """aiogram's Command, saying no at once to a message that is no command at all. aiogram parses the text of
    each message for each handler with a command, and rejects words by raising and catching an exception: a
    wizard's step passed four such handlers before its own (bench/intake.py)."""

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, Any]:
        text = (message.text or message.caption or "") if isinstance(message, Message) else ""
        first = text.lstrip()[:1]  # aiogram splits the text on whitespace, leading whitespace included
        if not first or first not in self.prefix:
            return False
        return await super().__call__(message, bot)


class AnyCommand(Filter):
    """Any slash command, known or not."""

    async def __call__(self, message: Message) -> bool:
        return message.text is not None and message.text.startswith("/")


class ChatKind(Filter):
    """A change of membership in chats of these kinds: ChatKind(ChatType.GROUP, ChatType.SUPERGROUP)."""

    def __init__(self, *kinds: ChatType) -> None:
        self.kinds = frozenset(kinds)

    async def __call__(self, event: ChatMemberUpdated) -> bool:
        return event.chat.type in self.kinds


class FromPerson(Filter):
    """From a person in their private chat: UserMiddleware loaded them as ``user`` (it loads nobody else)."""

    async def __call__(self, event: ChatMemberUpdated, user: Person | None = None) -> bool:
        return user is not None
