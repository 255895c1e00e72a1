"""Filters for message content, keyboard buttons and commands.

They do what ``F.text``, ``F.text == ...`` and ``F.text.startswith("/")`` would, on the event loop: aiogram
runs a bare magic filter in a worker thread (``asyncio.to_thread``), and that hop cost more than the rest of a
routing decision in bench/intake.py. For the same reason handlers use ``StateFilter(state)`` rather than a
bare ``State``, whose ``__call__`` is synchronous.
"""

from __future__ import annotations

from aiogram.enums import ChatType, ContentType
from aiogram.filters import Filter
from aiogram.types import ChatMemberUpdated, Message
from aiogram.utils.i18n.lazy_proxy import LazyProxy

from domain.people import Person


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
