"""Per-update dependencies: a database session and the user record, put into handler ``data``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.enums import ChatType
from aiogram.types import Chat, TelegramObject
from aiogram.types import User as TelegramUser
from sqlalchemy.ext.asyncio import AsyncSession

from domain.clock import Clock
from domain.outbox import QUEUED_FLAG
from domain.people import CHANGED_PEOPLE, Person, touch_user
from storage.db import SessionFactory

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class SessionMiddleware(BaseMiddleware):
    """Opens one session per update and wakes the sender when the update queued outbound messages."""

    def __init__(self, session_factory: SessionFactory, wake_sender: Callable[[], None]) -> None:
        self.session_factory = session_factory
        self.wake_sender = wake_sender

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        session = self.session_factory()
        data["session"] = session
        try:
            return await handler(event, data)
        finally:
            if session.info.pop(QUEUED_FLAG, False):
                self.wake_sender()
            if session.in_transaction():
                # What a failed handler left open is rolled back and its connection given back, shielded from the
                # update's cancellation, as ``async with`` does.
                await asyncio.shield(asyncio.create_task(session.close()))
            else:
                # Every transaction ended, so nothing is held: closing is bookkeeping, done here, without the task
                # and the greenlet switch of ``async with`` (about 25 µs of an update's CPU).
                session.sync_session.close()


class UserMiddleware(BaseMiddleware):
    """Puts who is asking into ``data["user"]``, creating their record on first contact.

    Only for a person in their private chat with the bot: that is where people use it (bot/guard.py keeps
    everything else away from the handlers). A message in a group is no sign that they can be reached in
    private (``touch_user`` clears "unreachable"), nor a reason to keep a record of everyone in the group.

    Snapshots are kept for ``ttl`` seconds: reading the record on every update costs more than the rest of a
    wizard step. Changes made in this process drop the snapshot at once; changes made elsewhere (another bot
    process, a community import) are seen within ``ttl``.
    """

    def __init__(self, ttl: float = 60.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.monotonic = monotonic
        self.snapshots: dict[int, tuple[float, str, Person]] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        telegram_user: TelegramUser | None = data.get("event_from_user")
        chat: Chat | None = data.get("event_chat")
        if telegram_user is None or telegram_user.is_bot or chat is None or chat.type != ChatType.PRIVATE:
            return await handler(event, data)
        session: AsyncSession = data["session"]
        data["user"] = await self._person(session, telegram_user, data["clock"])
        try:
            return await handler(event, data)
        finally:
            for user_id in session.info.pop(CHANGED_PEOPLE, ()):
                self.snapshots.pop(user_id, None)

    async def _person(self, session: AsyncSession, telegram_user: TelegramUser, clock: Clock) -> Person:
        now = self.monotonic()
        name = telegram_user.full_name
        cached = self.snapshots.get(telegram_user.id)
        if cached is not None:
            taken_at, name_then, person = cached
            # The name as Telegram sent it: unchanged, it needs no cleaning again to be compared (domain/text.py).
            if (
                now - taken_at < self.ttl
                and name == name_then
                and person.telegram_language == telegram_user.language_code
            ):
                return person
        person = await touch_user(session, telegram_user.id, name, telegram_user.language_code, clock())
        if len(self.snapshots) > 100_000:
            self.snapshots.clear()
        self.snapshots[telegram_user.id] = (now, name, person)
        return person
