"""The hand-over: a restarted bot sends what its dead predecessor had claimed while it is still loading itself.

Loading aiogram and the handlers costs seconds of CPU (about 4 s on a quiet two-core machine, 10 s and more on
a busy one), and until the sender runs nothing is sent: a worker's card claimed by a process that was killed
would wait for all of that. So the sender renders each row when it claims it and keeps the request with
the claim (sender.py, requests.py), and the process that starts next sends those requests with aiohttp and
SQLAlchemy alone, in a thread of its own beside the heavy imports (bot/entry.py), within a second or two, and
goes on at Telegram's pace until the sender is ready to take over.

Only a polling bot hands over: it is the only process, so every claim it finds is a dead one's. (With webhooks
several processes run; a dead one's claims lapse within seconds and the others take them back.) The sender of
the new process starts after the hand-over has ended (its answers awaited, its rows written), so a row is never
in both hands.

Telegram's answer decides what becomes of a row, as in the sender, only shorter:

- taken: the row is sent, and what the database learns from the answer (a card's message id) is written with
  it, through the sender's own :func:`requests.follow_up`, within ``RECORD_SECONDS`` (so a hand-over killed
  too repeats only what it sent since);
- a 429: everything waits the ``retry_after``, as the sender would, then the same row is tried again (the rows
  keep their places; a broadcast row refused waits claimed, not "sending": killed in the pause, the hand-over
  leaves it to be sent, not in doubt); should the sender take over meanwhile, it waits out the rest. Giving up
  at the first 429 left a dead process's cards to a sender still loading for 15 s and more on a busy machine
  (bench.crash run 38: four messages 37 s late after a kill in a 429 storm);
- a 5xx or a network error: the row and its chat's later rows wait a backoff, as the sender would have them;
- anything else (blocked, a bad request): the row goes back to the sender, which tries it and judges the answer
  as always. So do the rows the hand-over did not get to before the sender was ready.

Personal rows are delivered at least once, so a row the dead process had sent but not yet marked is sent again,
as it would be without the hand-over. Broadcast rows are delivered at most once: the hand-over marks each
"sending" in a commit just before its request, as the sender does, and a request still unanswered when its time
is up leaves its row in doubt. (Rows the dead process had marked "sending" are in doubt already.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.config import Settings, proxy_for_aiohttp
from bot.outbound.pacing import ChatPacer, TokenBucket, backoff
from bot.outbound.requests import FORM, RECORD_SECONDS, Answer, FollowUp, Request, follow_up, form_of
from domain.clock import Clock, system_clock
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.models import OutboxMessage, OutboxStatus

log = logging.getLogger(__name__)

# The hand-over's time: rows not answered by then go to the sender (which waits for the hand-over to end).
HANDOVER_SECONDS = 60.0
REQUEST_SECONDS = 10.0
READY_POLL_SECONDS = 0.05  # how often the hand-over looks whether the sender is ready to take over


@dataclass
class Handed:
    """What the hand-over did: rows Telegram took, and rows it left to the sender."""

    sent: int = 0
    left: int = 0
    paused_until: datetime | None = None  # Telegram answered 429: nothing is to be sent before this


class HandOver:
    """The hand-over in a thread of its own (with its own event loop and database engine), started before the
    bot's heavy imports. When the bot is ready to send (``finished``), no new request is begun, the answers on
    their way are awaited, and the rest goes to the sender, with ``pacer``: a chat's next message then still
    waits its turn after what the hand-over sent there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handed = Handed()
        self.error: BaseException | None = None
        self.pacer = ChatPacer(settings.send_rate_per_chat_seconds)
        self._ready = threading.Event()  # the bot's sender is ready: the hand-over ends
        self._thread = threading.Thread(target=self._run, name="hand-over", daemon=True)

    @classmethod
    def start(cls, settings: Settings) -> HandOver:
        handover = cls(settings)
        handover._thread.start()
        return handover

    def _run(self) -> None:
        url = make_url(self.settings.database_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return  # no database yet, so nothing claimed (and none is made here: the bot's start checks first)
        try:
            self.handed = asyncio.run(hand_over(self.settings, pacer=self.pacer, ready=self._ready))
        except BaseException as error:  # reported by ``finished``, in the bot's own log
            self.error = error

    async def finished(self) -> Handed:
        self._ready.set()
        await asyncio.to_thread(self._thread.join)
        if self.error is not None:
            log.error("the hand-over failed; the sender sends it all", exc_info=self.error)
        elif self.handed.sent or self.handed.left:
            log.info(
                "handed over what the previous run had claimed: %d sent at start-up, %d left to the sender",
                self.handed.sent,
                self.handed.left,
            )
        return self.handed


async def hand_over(
    settings: Settings,
    clock: Clock = system_clock,
    pacer: ChatPacer | None = None,
    ready: threading.Event | None = None,
) -> Handed:
    """Send the requests a dead predecessor had claimed, until they are done, ``HANDOVER_SECONDS`` have passed,
    or the bot's own sender is ``ready``; see the module's text."""
    engine = create_engine(settings.database_url)
    try:
        sessions = create_session_factory(engine)
        try:
            rows = await claimed(sessions)
        except DBAPIError:
            return Handed()  # a database not migrated yet holds nothing of this version to hand over
        if not rows:
            return Handed()
        connector = None
        if settings.telegram_proxy:
            from aiohttp_socks import ProxyConnector

            connector = ProxyConnector.from_url(proxy_for_aiohttp(settings.telegram_proxy))
        base = (settings.telegram_api_server or "https://api.telegram.org").rstrip("/")
        timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            round_ = Round(http, f"{base}/bot{settings.require_token()}/", settings, clock, sessions, rows)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANDOVER_SECONDS):
                    await round_.send(pacer or ChatPacer(settings.send_rate_per_chat_seconds), ready)
        return await round_.write()
    finally:
        await engine.dispose()


async def claimed(sessions: SessionFactory) -> list[OutboxMessage]:
    """Every row claimed with a request kept, in the order they were queued."""
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.status == OutboxStatus.CLAIMED, OutboxMessage.request.is_not(None))
            .order_by(OutboxMessage.id)
        )
        return list(rows)


@dataclass
class Round:
    http: aiohttp.ClientSession
    url: str  # the Bot API's address with the token, to which the method's name is added
    settings: Settings
    clock: Clock
    sessions: SessionFactory
    rows: list[OutboxMessage]
    sent: list[int] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)
    waits: dict[int, dict[str, Any]] = field(default_factory=dict)  # rows that wait: the values to write
    in_flight: set[int] = field(default_factory=set)  # asked, no answer yet
    paused_until: datetime | None = None  # Telegram answered 429: nothing is sent before this
    stopping: bool = False  # the sender takes over: nothing more is begun
    # What is written already of ``sent`` and ``follow_ups`` (their first so many), the write on its way, and
    # when it began: a kill during the hand-over repeats only what Telegram took since (``_record_soon``).
    recorded: int = 0
    followed: int = 0
    recording: asyncio.Task[None] | None = None
    recorded_at: float = -math.inf

    async def send(self, pacer: ChatPacer, ready: threading.Event | None) -> None:
        by_chat: dict[int, list[OutboxMessage]] = defaultdict(list)
        for row in self.rows:
            by_chat[row.chat_id].append(row)
        bucket = TokenBucket(self.settings.send_rate_per_second)
        chats = [asyncio.create_task(self._chat(chat_rows, bucket, pacer)) for chat_rows in by_chat.values()]
        try:
            while not all(chat.done() for chat in chats):
                if ready is not None and ready.is_set():
                    # The sender takes over: what waits for its turn is left to it; requests on their way end.
                    self.stopping = True
                    for chat, chat_rows in zip(chats, by_chat.values(), strict=True):
                        if not any(row.id in self.in_flight for row in chat_rows):
                            chat.cancel()
                    break
                await asyncio.wait(chats, timeout=READY_POLL_SECONDS)
            await asyncio.gather(*chats, return_exceptions=True)
        finally:
            for chat in chats:
                chat.cancel()

    async def _chat(self, rows: list[OutboxMessage], bucket: TokenBucket, pacer: ChatPacer) -> None:
        """One chat's rows in order; the first that is not taken keeps the rest where they are."""
        index = 0
        while index < len(rows):
            row = rows[index]
            await pacer.wait_turn(row.chat_id)
            await bucket.take()
            if self.stopping:
                return
            request: Request = row.request  # type: ignore[assignment]  # selected for having one
            now = self.clock()
            self.in_flight.add(row.id)
            if row.broadcast_id is not None:
                await self._mark(row, OutboxStatus.SENDING)
            try:
                status, body = await self._post(request)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                self.in_flight.discard(row.id)  # not taken, as the sender judges it
                self._backoff(rows[index:], now, f"network: {error!r}")
                return
            self.in_flight.discard(row.id)
            if body.get("ok"):
                self.sent.append(row.id)
                if (learnt := follow_up(row, request, Answer.from_result(body.get("result")), now)) is not None:
                    self.follow_ups.append(learnt)
                self._record_soon()
                index += 1
                continue
            retry_after = (body.get("parameters") or {}).get("retry_after")
            if retry_after is not None:
                if row.broadcast_id is not None:  # refused: not in doubt while it waits ("sending" again after)
                    await self._mark(row, OutboxStatus.CLAIMED)
                await self._pause(bucket, float(retry_after), now)
                continue  # the same row, once the wait is over
            if status >= 500:
                self._backoff(rows[index:], now, f"{status}: {body.get('description', '')}")
            return  # anything else is the sender's to judge, this row and the chat's later ones

    async def _mark(self, row: OutboxMessage, status: OutboxStatus) -> None:
        """A broadcast row is "sending" in a commit of its own just before its request (at most once): a crash
        leaves in doubt only the rows on the wire, as the sender's ``ahead`` does. Refused (a 429), it is "claimed"
        again for the pause."""
        async with self.sessions() as session, session.begin():
            await session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(status=status))

    async def _post(self, request: Request) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + request["method"], data=form_of(request), headers=FORM) as response:
            body = await response.json(content_type=None)
            return response.status, body if isinstance(body, dict) else {}

    async def _pause(self, bucket: TokenBucket, seconds: float, now: datetime) -> None:
        """A 429 holds all sending for ``seconds``: every chat's next turn waits in ``bucket``, and should the
        sender take over meanwhile, it waits until then too (bot/app.py). The rows keep their places in the queue:
        given a later ``not_before``, a broadcast's rows would go behind all of its rows not tried yet (bench.crash
        run 25: four agenda messages 75 s late)."""
        until = now + timedelta(seconds=seconds)
        self.paused_until = until if self.paused_until is None else max(self.paused_until, until)
        await bucket.pause(seconds)

    def _backoff(self, rows: list[OutboxMessage], now: datetime, error: str) -> None:
        attempts = rows[0].attempts + 1
        until = now + backoff(attempts)
        self.waits[rows[0].id] = {"not_before": until, "error": error, "attempts": attempts}
        for row in rows[1:]:
            self.waits[row.id] = {"not_before": until, "error": error}

    def _record_soon(self) -> None:
        """Write what Telegram took at most ``RECORD_SECONDS`` after the last such write, while the hand-over
        goes on at the chats' pace, in a task of its own (a chat's task may be cancelled when the sender takes
        over; a write must not be cut off half-way)."""
        now = asyncio.get_running_loop().time()
        if now - self.recorded_at >= RECORD_SECONDS and (self.recording is None or self.recording.done()):
            self.recorded_at = now
            self.recording = asyncio.create_task(self._record())

    async def _record(self, rest: list[OutboxMessage] | None = None) -> None:
        """Write the rows sent since the last write (``sent`` at ``now``) and what their answers taught; with
        ``rest``, also how those rows leave the dead claim."""
        sent, learnt = self.sent[self.recorded :], self.follow_ups[self.followed :]
        now = self.clock()
        changes: list[dict[str, Any]] = [
            {"id": row_id, "status": OutboxStatus.SENT, "sent_at": now, "error": "", "request": None} for row_id in sent
        ]
        released = {"status": OutboxStatus.PENDING, "claimed_by": None, "request": None}
        changes += [{"id": row.id, **released, **self.waits.get(row.id, {})} for row in rest or []]
        if not changes:
            return
        async with self.sessions() as session, session.begin():
            for follow in sorted(learnt, key=lambda f: f.ticket_id):  # as the sender: no deadlocks
                await follow.write(session)
            await session.execute(update(OutboxMessage), changes, execution_options={"synchronize_session": False})
        self.recorded += len(sent)
        self.followed += len(learnt)

    async def write(self) -> Handed:
        """Every row the round had goes out of the dead claim: sent, waiting, or back to the sender; a broadcast
        row asked and not answered stays "sending" (the sender's start counts it in doubt)."""
        if self.recording is not None:
            with contextlib.suppress(Exception):  # what it did not write is written now
                await self.recording
        sent = set(self.sent)
        await self._record(
            [
                row
                for row in self.rows
                if row.id not in sent and (row.broadcast_id is None or row.id not in self.in_flight)
            ]
        )
        paused = self.paused_until if self.paused_until is not None and self.paused_until > self.clock() else None
        return Handed(sent=len(self.sent), left=len(self.rows) - len(self.sent), paused_until=paused)
