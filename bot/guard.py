"""Personal data only in private chats: the one guard in front of every handler of messages and buttons.

Tickets, cards, lists and wizards are for the person in their private chat with the bot. In a group, a
supergroup or a channel the bot says one line with a button to that chat, and only when it is spoken to; it
keeps no wizard state there. No handler needs to think about where it was called: past this guard it always
has a person (``data["user"]``) in their private chat. Being added to a group is handled by
handlers/membership.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.enums import ChatType
from aiogram.types import CallbackQuery, Chat, Message, TelegramObject

from bot import views


class PrivateChatGuard(BaseMiddleware):
    """Outer middleware on the message and callback_query observers, after the i18n middleware (so its answers
    are in the sender's language).

    Lets an event through only from a person in a private chat (UserMiddleware loads ``user`` for nobody else:
    not for bot accounts such as GroupAnonymousBot, nor in groups). Anything else is answered here:

    - a command in a group or supergroup: one line and a button that opens the private chat (a command meant
      for another bot, ``/report@other_bot``, gets nothing);
    - a button pressed anywhere but a private chat: a short callback answer;
    - everything else (a group's conversation, a channel's posts, a message from a bot account): silence, on
      purpose.
    """

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        chat: Chat | None = data.get("event_chat")
        if chat is not None and chat.type == ChatType.PRIVATE and data.get("user") is not None:
            return await handler(event, data)
        bot: Bot = data["bot"]
        if isinstance(event, CallbackQuery):
            await event.answer(views.button_in_group())
        elif isinstance(event, Message) and chat is not None and chat.type != ChatType.PRIVATE:
            username = (await bot.me()).username or ""  # aiogram asks Telegram once, then keeps it
            if _command_for(event, username):
                await event.answer(views.private_chat_only(), reply_markup=views.private_chat_keyboard(username))
        return None


def _command_for(message: Message, username: str) -> bool:
    """A command addressed to this bot: /report, or /report@<its username> (names are not case-sensitive)."""
    text = message.text or ""
    if not text.startswith("/"):
        return False
    mention = text.split(maxsplit=1)[0].partition("@")[2]
    return not mention or mention.lower() == username.lower()
