"""Per-update dependencies: a database session and the user record, put into handler ``data``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject
from aiogram.types import User as TelegramUser

from domain.clock import Clock
from domain.outbox import QUEUED_FLAG
from domain.people import touch_user
from storage.db import SessionFactory

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class SessionMiddleware(BaseMiddleware):
    """Opens one session per update and wakes the sender when the update queued outbound messages."""

    def __init__(self, session_factory: SessionFactory, wake_sender: Callable[[], None]) -> None:
        self.session_factory = session_factory
        self.wake_sender = wake_sender

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        async with self.session_factory() as session:
            data["session"] = session
            try:
                return await handler(event, data)
            finally:
                if session.info.pop(QUEUED_FLAG, False):
                    self.wake_sender()


class UserMiddleware(BaseMiddleware):
    """Loads (or creates) the sender's user record, so every handler knows who is asking."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        telegram_user: TelegramUser | None = data.get("event_from_user")
        if telegram_user is not None and not telegram_user.is_bot:
            clock: Clock = data["clock"]
            data["user"] = await touch_user(
                data["session"],
                telegram_user.id,
                telegram_user.full_name,
                telegram_user.language_code,
                clock(),
            )
        return await handler(event, data)
