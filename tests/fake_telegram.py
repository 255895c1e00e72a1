"""A fake Bot API: records every request, answers like Telegram, and can answer with errors.

Answers go through aiogram's own ``check_response``, so a scripted 429 or 403 raises exactly the exception
the real server's answer would. Like Telegram, it can also refuse a second message into a chat within a
second (``limit_per_chat``), or refuse everything during an outage.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.enums import ParseMode
from aiogram.methods import GetFile, GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Update

BOT_ID = 42
BOT_TOKEN = f"{BOT_ID}:TEST-TOKEN"


@dataclass(frozen=True)
class ScriptedError:
    status: int
    description: str
    retry_after: int | None = None


TOO_MANY_REQUESTS = ScriptedError(429, "Too Many Requests: retry after 7", retry_after=7)
BLOCKED = ScriptedError(403, "Forbidden: bot was blocked by the user")
SERVER_ERROR = ScriptedError(502, "Bad Gateway")


class ProcessDied(BaseException):
    """Stands for the bot process being killed: nothing after it runs, nothing catches it."""


class FakeTelegram(BaseSession):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[TelegramMethod[Any]] = []
        self.accepted: list[TelegramMethod[Any]] = []  # the requests answered "ok", in order
        self.refused: list[TelegramMethod[Any]] = []  # the requests answered with an error, in order
        self.errors: dict[int, deque[ScriptedError]] = defaultdict(deque)
        self.outage: ScriptedError | None = None  # while set, every request gets this answer
        self.die_after_next_request = False
        self._message_ids = 1000
        # getUpdates: what Telegram holds for the bot until a later call's offset confirms it.
        self.unconfirmed: list[Update] = []
        self.offsets: list[int | None] = []  # the offset of every getUpdates, in order
        self._chat_limit: tuple[float, Callable[[], float]] | None = None
        self._last_accepted_in: dict[int, float] = {}
        self.files: dict[str, bytes] = {}  # what a user sent as a document, by file_id: getFile and its download

    def fail_next(self, chat_id: int, *errors: ScriptedError) -> None:
        """The next requests to ``chat_id`` get these answers, in order."""
        self.errors[chat_id].extend(errors)

    def limit_per_chat(self, interval: float, monotonic: Callable[[], float]) -> None:
        """From now on refuse, as Telegram does, a request into a chat sooner than ``interval`` seconds (by
        ``monotonic``) after the last one it accepted there, with a 429 whose retry_after is the rest."""
        self._chat_limit = (interval, monotonic)

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        if isinstance(method, GetUpdates) and self.outage is None:
            return await self._get_updates(method)  # type: ignore[return-value]
        self.requests.append(method)
        if self.die_after_next_request:  # Telegram has the message; the process dies before it hears back
            raise ProcessDied()
        error = self._error_for(method)
        if error is not None:
            self.refused.append(method)
            body: dict[str, Any] = {"ok": False, "error_code": error.status, "description": error.description}
            if error.retry_after is not None:
                body["parameters"] = {"retry_after": error.retry_after}
            response = self.check_response(bot, method, error.status, json.dumps(body))
        else:
            self.accepted.append(method)
            result = self._result(method)
            response = self.check_response(bot, method, 200, json.dumps({"ok": True, "result": result}))
        return response.result  # type: ignore[return-value]

    async def _get_updates(self, method: GetUpdates) -> list[Update]:
        """Like Telegram: an offset confirms (forgets) every update below it; the rest come again."""
        self.offsets.append(method.offset)
        if method.offset is not None:
            self.unconfirmed = [u for u in self.unconfirmed if u.update_id >= method.offset]
        if not self.unconfirmed:
            await asyncio.sleep(0.01)  # a long poll that found nothing
        return list(self.unconfirmed[: method.limit or 100])

    def _error_for(self, method: TelegramMethod[Any]) -> ScriptedError | None:
        if self.outage is not None:
            return self.outage
        # A chat's command menu names the chat in its scope.
        chat_id = getattr(method, "chat_id", None) or getattr(getattr(method, "scope", None), "chat_id", None)
        if not isinstance(chat_id, int):
            return None
        if self.errors[chat_id]:
            return self.errors[chat_id].popleft()
        if self._chat_limit is not None:
            interval, monotonic = self._chat_limit
            now = monotonic()
            last = self._last_accepted_in.get(chat_id)
            # A nanosecond of slack: the pacer's float arithmetic may land a hair before the full second.
            if last is not None and now - last < interval - 1e-9:
                wait = math.ceil(interval - (now - last))
                return ScriptedError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
            self._last_accepted_in[chat_id] = now
        return None

    def _message(self, method: TelegramMethod[Any]) -> dict[str, Any]:
        self._message_ids += 1
        chat_id = getattr(method, "chat_id", None) or 0
        return {
            "message_id": getattr(method, "message_id", None) or self._message_ids,
            "date": int(datetime.now(UTC).timestamp()),
            "chat": {"id": chat_id, "type": "private"},
            "text": getattr(method, "text", None) or "",
        }

    def _result(self, method: TelegramMethod[Any]) -> Any:
        returning = str(method.__returning__)
        if isinstance(method, GetFile):
            return {"file_id": method.file_id, "file_unique_id": method.file_id, "file_path": method.file_id}
        if "list[" in returning and "Message" in returning:
            return [self._message(method) for _ in getattr(method, "media", [None])]
        if "Message" in returning:
            return self._message(method)
        if "User" in returning:
            return {"id": BOT_ID, "is_bot": True, "first_name": "Feedback", "username": "feedback_test_bot"}
        return True

    async def close(self) -> None:
        pass

    async def stream_content(self, url: str, *args: Any, **kwargs: Any) -> AsyncGenerator[bytes, None]:
        """A file's download: the file path is the file_id (see getFile above); a file nobody sent is empty."""
        yield self.files.get(url.rsplit("/", 1)[-1], b"")


def fake_bot() -> tuple[Bot, FakeTelegram]:
    telegram = FakeTelegram()
    return Bot(BOT_TOKEN, session=telegram, default=DefaultBotProperties(parse_mode=ParseMode.HTML)), telegram


def sent_to(requests: list[TelegramMethod[Any]], chat_id: int) -> list[TelegramMethod[Any]]:
    return [r for r in requests if getattr(r, "chat_id", None) == chat_id]


def text_of(method: TelegramMethod[Any]) -> str:
    return str(getattr(method, "text", None) or getattr(method, "caption", None) or "")


def reply_buttons_of(method: TelegramMethod[Any]) -> list[str]:
    """The texts of the reply-keyboard buttons the request shows."""
    markup = getattr(method, "reply_markup", None)
    rows = getattr(markup, "keyboard", None) or []
    return [b.text for row in rows for b in row]


def buttons_of(method: TelegramMethod[Any]) -> list[tuple[str, str]]:
    """(text, callback_data) of every inline button in the request."""
    markup = getattr(method, "reply_markup", None)
    rows = getattr(markup, "inline_keyboard", None) or []
    return [(b.text, b.callback_data or "") for row in rows for b in row]
