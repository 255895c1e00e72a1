"""Drives the real dispatcher with updates, as Telegram would, and runs the outbox sender on demand."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram.methods import TelegramMethod
from aiogram.types import (
    CallbackQuery,
    Chat,
    Contact,
    Document,
    Location,
    Message,
    PhotoSize,
    Sticker,
    Update,
    User,
)
from pydantic import SecretStr

from bot.app import Application, assemble
from bot.config import Settings
from bot.outbound.sender import OutboxSender, SenderSettings
from storage.db import SessionFactory
from tests.fake_telegram import BOT_ID, buttons_of, fake_bot, reply_buttons_of, text_of

_ids = itertools.count(1)
PHONE_SECRET = b"test-phone-secret"  # HOUSEHOLD_PHONE_SECRET of every harness (tests/households.py)
# A message kind the bot does not take.
STICKER = Sticker(
    file_id="sticker", file_unique_id="s", type="regular", width=512, height=512, is_animated=False, is_video=False
)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 2, 1, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def _no_sleep(_seconds: float) -> None:
    return None


class PausesOnTheClock:
    """The harness sender's rate: no limit, and a 429's pause passes on the test's clock (each wait in ``waited``)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.until = clock()
        self.waited: list[float] = []

    async def take(self) -> None:
        await self.resumed()

    async def resumed(self) -> None:
        if self.until > self.clock():
            self.waited.append((self.until - self.clock()).total_seconds())
            self.clock.now = self.until

    async def pause(self, seconds: float) -> None:
        self.until = max(self.until, self.clock() + timedelta(seconds=seconds))


class FakeTimer:
    """Monotonic time for the direct replies' pacing and retries: it moves only when they wait (or a test
    moves it), so tests never really sleep and can tell how long a reply waited."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Harness:
    def __init__(self, session_factory: SessionFactory, clock: FakeClock, redis_url: str | None = None) -> None:
        self.bot, self.telegram = fake_bot()
        settings = Settings(
            bot_token=None,
            community_file=None,
            redis_url=redis_url,
            household_phone_secret=SecretStr(PHONE_SECRET.decode()),
        )
        self.timer = FakeTimer()
        self.app: Application = assemble(
            settings, self.bot, session_factory, clock, monotonic=self.timer.monotonic, sleep=self.timer.sleep
        )
        # The sender keeps time by the test's clock and sends without a rate limit; Telegram's pause (a 429) passes
        # on that clock. (The dispatcher's wake-up call still reaches the sender built by assemble; tests deliver
        # explicitly.)
        old = self.app.sender
        self.sender_rate = PausesOnTheClock(clock)
        self.app.sender = OutboxSender(
            self.bot,
            session_factory,
            old.renderer,
            clock,
            SenderSettings(chat_interval=0, rate_per_second=10_000),
            monotonic=lambda: clock().timestamp(),
            sleep=_no_sleep,
            rate=self.sender_rate,
        )
        self.sessions = session_factory
        self.clock = clock

    def person(self, user_id: int, name: str = "", language: str = "zh-hans") -> Person:
        return Person(self, user_id, name or f"user{user_id}", language)

    async def feed(self, update: Update) -> list[TelegramMethod[Any]]:
        before = len(self.telegram.requests)
        await self.app.dispatcher.feed_update(self.bot, update)
        return self.telegram.requests[before:]

    async def deliver(self) -> list[TelegramMethod[Any]]:
        """Run the outbox sender until nothing is due; returns what it sent."""
        before = len(self.telegram.requests)
        while await self.app.sender.deliver_due():
            pass
        return self.telegram.requests[before:]


class Person:
    """Someone chatting with the bot in a private chat."""

    def __init__(self, harness: Harness, user_id: int, name: str, language: str) -> None:
        self.harness = harness
        self.id = user_id
        self.user = User(id=user_id, is_bot=False, first_name=name, language_code=language)
        self.chat = Chat(id=user_id, type="private")

    def _message(self, **content: Any) -> Message:
        return Message(message_id=next(_ids), date=datetime.now(UTC), chat=self.chat, from_user=self.user, **content)

    async def send(self, text: str) -> list[TelegramMethod[Any]]:
        return await self.harness.feed(Update(update_id=next(_ids), message=self._message(text=text)))

    async def send_photo(self, file_id: str, caption: str | None = None) -> list[TelegramMethod[Any]]:
        sizes = [
            PhotoSize(file_id=f"{file_id}-thumb", file_unique_id=f"{file_id}-t", width=90, height=90),
            PhotoSize(file_id=file_id, file_unique_id=file_id, width=1280, height=960),
        ]
        return await self.harness.feed(
            Update(update_id=next(_ids), message=self._message(photo=sizes, caption=caption))
        )

    async def send_location(self, latitude: float, longitude: float) -> list[TelegramMethod[Any]]:
        location = Location(latitude=latitude, longitude=longitude)
        return await self.harness.feed(Update(update_id=next(_ids), message=self._message(location=location)))

    async def send_contact(self, phone: str, user_id: int | None = -1) -> list[TelegramMethod[Any]]:
        """Share a contact: by default one's own (Telegram sets its user_id to the sender's); or another's."""
        contact = Contact(
            phone_number=phone, first_name=self.user.first_name, user_id=self.id if user_id == -1 else user_id
        )
        return await self.harness.feed(Update(update_id=next(_ids), message=self._message(contact=contact)))

    async def send_document(self, content: bytes, file_name: str) -> list[TelegramMethod[Any]]:
        """Send a file as a document; the fake Telegram keeps it for the bot to download."""
        file_id = f"document-{next(_ids)}"
        self.harness.telegram.files[file_id] = content
        document = Document(file_id=file_id, file_unique_id=file_id, file_name=file_name, file_size=len(content))
        return await self.harness.feed(Update(update_id=next(_ids), message=self._message(document=document)))

    async def send_sticker(self) -> list[TelegramMethod[Any]]:
        return await self.harness.feed(Update(update_id=next(_ids), message=self._message(sticker=STICKER)))

    async def press(self, data: str, message_text: str = "") -> list[TelegramMethod[Any]]:
        """Press an inline button with this callback data (forged data works too, as for a custom client)."""
        bot_message = Message(
            message_id=next(_ids),
            date=datetime.now(UTC),
            chat=self.chat,
            from_user=User(id=BOT_ID, is_bot=True, first_name="bot"),
            text=message_text or "…",
        )
        query = CallbackQuery(
            id=str(next(_ids)), from_user=self.user, chat_instance="test", data=data, message=bot_message
        )
        return await self.harness.feed(Update(update_id=next(_ids), callback_query=query))

    async def tap(self, requests: list[TelegramMethod[Any]], label: str) -> list[TelegramMethod[Any]]:
        """Press the button whose text contains ``label`` in the latest of ``requests`` that has one.

        An inline button sends its callback data; a reply-keyboard button sends its text as a message.
        """
        for request in reversed(requests):
            for text, data in buttons_of(request):
                if label in text:
                    return await self.press(data, text_of(request))
            for text in reply_buttons_of(request):
                if label in text:
                    return await self.send(text)
        raise AssertionError(f"no button {label!r} in {[buttons_of(r) for r in requests]}")
