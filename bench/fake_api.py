"""A fake Telegram Bot API server for benchmarks: aiohttp on 127.0.0.1, a random port, answers like Telegram.

The bot under test runs in a child process with its real aiohttp session pointed here
(``TELEGRAM_API_SERVER``), so killing the child cannot take the server's record of what arrived with it.

What it does, as the real Bot API does:

- ``getUpdates`` is long polling: ``offset`` confirms every update with a smaller id (they are forgotten),
  the unconfirmed ones from ``offset`` on are returned, at most ``limit``, waiting up to ``timeout`` seconds
  for one to come;
- ``sendMessage``, ``sendPhoto``, ``sendMediaGroup``, ``editMessageText``, ``editMessageReplyMarkup``,
  ``editMessageCaption`` keep each chat's messages (text and inline keyboard, parsed from the JSON form
  field), so simulated users can read the buttons of what the bot sent and press them;
- ``setWebhook`` makes it post every update, from then on, to that URL with the secret token header, as
  Telegram does: again and again (every ``webhook_retry`` seconds) until it is answered 200, several at once;
  ``deleteWebhook`` goes back to ``getUpdates``;
- ``getMe``, ``setMyCommands``, ``answerCallbackQuery`` and anything else answer ``True``.

What it adds for benchmarks:

- every request is recorded with its time, the process generation that sent it (the one the bench says is
  running) and the HTTP status it got;
- ``storm_share``: that share of sends and edits is answered 429 with ``retry_after``;
- ``outage``: every request, ``getUpdates`` included, is answered 502 (a share of them by dropping the
  connection instead);
- hooks, called before the answer is written, so a bench can kill the bot while a request is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

log = logging.getLogger(__name__)

SENDS = frozenset({"sendmessage", "sendphoto", "sendmediagroup"})
EDITS = frozenset({"editmessagetext", "editmessagereplymarkup", "editmessagecaption"})


@dataclass
class Request:
    at: float  # time.time() when it arrived
    generation: int  # the bot process that sent it, as the bench numbers them
    method: str  # lower case, e.g. "sendmessage"
    params: dict[str, Any]
    status: int = 200  # what it was answered; 0 when the connection was dropped
    messages: list[dict[str, Any]] = field(default_factory=list)  # messages it created or changed

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None


@dataclass
class BotMessage:
    """A message the bot has in a chat, as it looks now (edits change it)."""

    chat_id: int
    message_id: int
    text: str
    markup: dict[str, Any] | None
    sent_at: float
    changed_at: float
    method: str

    @property
    def inline_buttons(self) -> list[tuple[str, str]]:
        rows = (self.markup or {}).get("inline_keyboard") or []
        return [(str(b.get("text", "")), str(b.get("callback_data", ""))) for row in rows for b in row]

    @property
    def reply_buttons(self) -> list[str]:
        rows = (self.markup or {}).get("keyboard") or []
        return [str(b.get("text", "")) if isinstance(b, dict) else str(b) for row in rows for b in row]

    def as_telegram(self, bot_user: dict[str, Any]) -> dict[str, Any]:
        """The message as Telegram puts it into a callback query."""
        message: dict[str, Any] = {
            "message_id": self.message_id,
            "date": int(self.sent_at),
            "chat": {"id": self.chat_id, "type": "private"},
            "from": bot_user,
            "text": self.text or "…",
        }
        if self.markup and "inline_keyboard" in self.markup:
            message["reply_markup"] = self.markup
        return message


@dataclass
class UpdateRecord:
    update_id: int
    body: dict[str, Any]
    pushed_at: float
    deliveries: list[tuple[float, int]] = field(default_factory=list)  # (time, generation) per getUpdates
    posts: list[int] = field(default_factory=list)  # webhook mode: the HTTP status of every post of it
    confirmed_at: float | None = None

    @property
    def first_delivered(self) -> float | None:
        return self.deliveries[0][0] if self.deliveries else None


class FakeBotAPI:
    def __init__(self, bot_id: int, username: str = "crash_bench_bot", seed: int = 0) -> None:
        self.bot_user = {"id": bot_id, "is_bot": True, "first_name": "Feedback", "username": username}
        self.generation = 0
        self.requests: list[Request] = []
        self.updates: dict[int, UpdateRecord] = {}
        self._unconfirmed: list[int] = []  # update ids, ascending
        self._next_update_id = 1
        self._arrived = asyncio.Event()
        self.chats: dict[int, dict[int, BotMessage]] = defaultdict(dict)
        self._message_ids: dict[int, int] = defaultdict(int)
        self.storm_share = 0.0
        self.storm_retry_after = 3
        self.outage = False
        self.drop_share = 0.2  # of the outage's answers: the connection is dropped instead of a 502
        self.batch_gather = 0.1  # seconds a long poll waits after the first update, to return a batch
        self.on_request: Callable[[Request], None] | None = None  # before the answer of every request
        self.on_batch: Callable[[list[int]], None] | None = None  # after getUpdates returned updates
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        # Webhook mode: where updates are posted, with which secret, and how many posts at once (Telegram: 40).
        self.webhook: tuple[str, str] | None = None
        self.webhook_retry = 0.5
        self._posting = asyncio.Semaphore(40)
        self._client: ClientSession | None = None
        self._posts: set[asyncio.Task[None]] = set()

    # --- serving -----------------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a random local port; returns the base URL for ``TELEGRAM_API_SERVER``."""
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in list(self._posts):
            task.cancel()
        await asyncio.gather(*self._posts, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what users do ------------------------------------------------------------------------------

    def next_message_id(self, chat_id: int) -> int:
        """Message ids count per chat, for the user's messages and the bot's alike."""
        self._message_ids[chat_id] += 1
        return self._message_ids[chat_id]

    def push_update(self, body: dict[str, Any]) -> int:
        """Queue an update (without ``update_id``, which is given here); returns its id."""
        update_id = self._next_update_id
        self._next_update_id += 1
        record = UpdateRecord(update_id, {"update_id": update_id, **body}, time.time())
        self.updates[update_id] = record
        self._unconfirmed.append(update_id)
        self._arrived.set()
        self._arrived = asyncio.Event()
        if self.webhook is not None:
            self._post_later(update_id)
        return update_id

    def _post_later(self, update_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self._post(update_id))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _post(self, update_id: int) -> None:
        """Webhook delivery: post the update until the bot answers 200, then it is confirmed (forgotten)."""
        record = self.updates[update_id]
        if self._client is None:
            self._client = ClientSession(timeout=ClientTimeout(total=60))
        while self.webhook is not None and record.confirmed_at is None:
            url, secret = self.webhook
            async with self._posting:
                record.deliveries.append((time.time(), self.generation))
                try:
                    async with self._client.post(
                        url, json=record.body, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
                    ) as answer:
                        record.posts.append(answer.status)
                        ok = answer.status == 200
                except (ClientError, TimeoutError) as error:
                    log.debug("posting update %d failed: %s", update_id, error)
                    record.posts.append(0)
                    ok = False
            if ok:
                record.confirmed_at = time.time()
                with contextlib.suppress(ValueError):
                    self._unconfirmed.remove(update_id)
                return
            await asyncio.sleep(self.webhook_retry)

    def latest(self, chat_id: int) -> list[BotMessage]:
        """The bot's messages in a chat, oldest first."""
        return sorted(self.chats[chat_id].values(), key=lambda m: m.message_id)

    # --- answering ----------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.query)
        if request.content_type == "application/json":
            return dict(await request.json())
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"].lower()
        params = await self._params(request)
        record = Request(time.time(), self.generation, method, params)
        self.requests.append(record)
        if self.outage:
            if self._random.random() < self.drop_share:
                record.status = 0
                self._hook(record)
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=502)
            return self._error(record, 502, "Bad Gateway")
        if method == "getupdates":
            return await self._get_updates(record)
        if (method in SENDS or method in EDITS) and self.storm_share and self._random.random() < self.storm_share:
            retry_after = self.storm_retry_after
            return self._error(
                record, 429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )
        result = self._result(record)
        self._hook(record)
        return web.json_response({"ok": True, "result": result})

    def _hook(self, record: Request) -> None:
        if self.on_request is not None:
            self.on_request(record)

    def _error(
        self, record: Request, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> web.Response:
        record.status = status
        self._hook(record)
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    async def _get_updates(self, record: Request) -> web.StreamResponse:
        params = record.params
        offset = int(params.get("offset") or 0)
        limit = max(1, min(100, int(params.get("limit") or 100)))
        timeout = max(0.0, float(params.get("timeout") or 0))
        self._confirm_below(offset, record.at)
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            batch = [u for u in self._unconfirmed if u >= offset][:limit]
            left = deadline - time.monotonic()
            if batch or left <= 0 or self.outage:
                break
            waited = True
            arrived = self._arrived
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=left)
        if batch and waited and self.batch_gather:
            await asyncio.sleep(self.batch_gather)  # let a few more come, as a busy bot sees them
            batch = [u for u in self._unconfirmed if u >= offset][:limit]
        if self.outage:
            return self._error(record, 502, "Bad Gateway")
        if record.generation != self.generation:
            batch = []  # the process that asked is dead: nobody will read this answer
        now = time.time()
        for update_id in batch:
            self.updates[update_id].deliveries.append((now, record.generation))
        record.messages = [{"update_ids": batch}]
        self._hook(record)
        if batch and self.on_batch is not None:
            self.on_batch(batch)
        return web.json_response({"ok": True, "result": [self.updates[u].body for u in batch]})

    def _confirm_below(self, offset: int, now: float) -> None:
        if offset <= 0:
            return
        while self._unconfirmed and self._unconfirmed[0] < offset:
            update_id = self._unconfirmed.pop(0)
            self.updates[update_id].confirmed_at = now

    def _result(self, record: Request) -> Any:
        method, params = record.method, record.params
        if method == "getme":
            return self.bot_user
        if method == "setwebhook":
            first = self.webhook is None
            self.webhook = (str(params["url"]), str(params.get("secret_token") or ""))
            if first:  # what waited for getUpdates is posted now
                for update_id in self._unconfirmed:
                    self._post_later(update_id)
            return True
        if method == "deletewebhook":
            self.webhook = None
            return True
        chat_id = record.chat_id
        if method in SENDS and chat_id is not None:
            if method == "sendmediagroup":
                media = _json(params.get("media")) or []
                messages = [
                    self._new_message(chat_id, method, str(m.get("caption") or ""), None, photo=True)
                    for m in media
                    if isinstance(m, dict)
                ]
                record.messages = [m for m, _ in messages]
                return [body for _, body in messages]
            text = str(params.get("text") or params.get("caption") or "")
            message, body = self._new_message(
                chat_id, method, text, _json(params.get("reply_markup")), photo=method == "sendphoto"
            )
            record.messages = [message]
            return body
        if method in EDITS and chat_id is not None and params.get("message_id"):
            found = self.chats[chat_id].get(int(params["message_id"]))
            if found is None:
                return True
            if method == "editmessagetext" or method == "editmessagecaption":
                found.text = str(params.get("text") or params.get("caption") or "")
            found.markup = _json(params.get("reply_markup"))  # an edit without one removes the keyboard
            found.changed_at = record.at
            record.messages = [{"message_id": found.message_id, "text": found.text, "markup": found.markup}]
            return found.as_telegram(self.bot_user)
        return True

    def _new_message(
        self, chat_id: int, method: str, text: str, markup: dict[str, Any] | None, photo: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        message_id = self.next_message_id(chat_id)
        now = time.time()
        self.chats[chat_id][message_id] = BotMessage(chat_id, message_id, text, markup, now, now, method)
        body: dict[str, Any] = {
            "message_id": message_id,
            "date": int(now),
            "chat": {"id": chat_id, "type": "private"},
            "from": self.bot_user,
        }
        if photo:
            body["photo"] = [{"file_id": f"p{chat_id}-{message_id}", "file_unique_id": "u", "width": 9, "height": 9}]
            body["caption"] = text
        else:
            body["text"] = text or "…"
        if markup and "inline_keyboard" in markup:
            body["reply_markup"] = markup
        return {"message_id": message_id, "text": text, "markup": markup}, body


def _json(value: Any) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None
