"""Delivering the outbox: rate-limited, honouring Telegram's answers, and nothing lost in a crash or an outage.

What is promised depends on the kind of row (docs/delivery.md):

* Personal rows (worker cards, reminders, notices to residents) are delivered **at least once**. A row goes
  pending → claimed (a batch, committed) → sent. If the process dies after Telegram took a message but before
  "sent" was written, the row is sent again: a worker may get a card twice after a crash, never zero times.
* Broadcast rows are delivered **at most once**. They are also marked "sending" in a commit before their
  request; a row its sender died with is "in doubt": perhaps delivered, never repeated, and counted on
  /broadcasts. Only ``ahead`` rows are marked or on the wire at a time, so a crash leaves at most twice that
  in doubt (those, and the ones Telegram answered since the sender's last commit), and a chat's rows go one by
  one, so at most one row per chat.

Database work is shared: a claim takes a batch of rows in one transaction and renders them (recipients read at
once), keeping each request with its claim for the hand-over after a crash (handover.py); broadcast rows whose
turn has come are marked "sending" together in one UPDATE, and what happened to the rows sent or tried rides
along with the next commit the sender makes anyway. At a high rate one commit serves dozens of messages.

A claim is a lease: each sender renews its :class:`SenderLease` every few seconds, and claims whose holder's
lease lapsed are taken back by whoever runs next. The only process of a polling bot takes everything back at
once when it starts, since its predecessor is dead.

Passing faults (5xx, timeouts, connection errors) are retried with capped backoff until ``retry_horizon`` after
the row was queued; only Telegram's word on the chat (403 blocked, 400) ends a row early. Rows that end failed
are listed for community staff in /ledger. Once Telegram answers again (a message goes through, or a ``getMe``
asked every ``PROBE_SECONDS`` while faults were seen), the rows waiting out their backoff are due at once: the
end of an outage is not followed by up to ``max_backoff`` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol, cast

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import TelegramMethod
from aiohttp import ClientError, ClientTimeout
from sqlalchemy import BindParameter, Table, bindparam, delete, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.outbound.notices import Renderer, answer_of, as_request
from bot.outbound.pacing import MAX_BACKOFF, ChatPacer, TokenBucket, backoff
from bot.outbound.requests import FORM, RECORD_SECONDS, Answer, FollowUp, Request, edit_settled, follow_up, form_of
from domain.clock import Clock
from storage.db import SessionFactory, execute_pipelined
from storage.models import OutboxMessage, OutboxStatus, SenderLease, User

log = logging.getLogger(__name__)

# The claim writes each row's request in one statement of many parameter sets, as SQLAlchemy Core: the ORM's bulk
# UPDATE by primary key took a fifth more CPU per row for the same statement (15.5 us against 12.9, SQLite).
OUTBOX = cast(Table, OutboxMessage.__table__)
# The writes of every marking transaction, built once, in Core: building each anew (its cache key, the ORM's bulk
# UPDATE path) was a third of the transaction's CPU (1.15 ms against 0.75, SQLite), and at 200/s one comes with
# nearly every message.
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
MARK_SENDING = update(OUTBOX).where(OUTBOX.c.id.in_(_IDS)).values(status=OutboxStatus.SENDING)
MARK_SENT = (
    update(OUTBOX)
    .where(OUTBOX.c.id.in_(_IDS))
    .values(status=OutboxStatus.SENT, sent_at=bindparam("now", type_=OUTBOX.c.sent_at.type), error="", request=None)
)


# A row's call and the same call as data (bot/outbound/requests.py); None when there is nothing to send.
Rendered = tuple[TelegramMethod[Any], Request] | None


def kept(rendered: Rendered) -> Request | None:
    """What a claim keeps of a rendered row for the hand-over: its request, unless it uploads a file."""
    return rendered[1] if rendered is not None and rendered[1]["fields"] is not None else None


class SendRate(Protocol):
    """Where the sender waits for its turn: this process's bucket, or one shared by all (``shared_rate``)."""

    async def take(self) -> None: ...

    async def resumed(self) -> None: ...  # a pause in force waited out, no turn taken

    async def pause(self, seconds: float) -> None: ...


# While sends fail with passing faults, Telegram is asked this often whether it answers again.
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class Noted:
    """What the sender learnt of rows since its last commit, written with its next (``OutboxSender._transaction``)."""

    delivered: list[int]
    follow_ups: list[FollowUp]
    outcomes: list[tuple[list[int], dict[str, object]]]
    unreachable: list[int]
    answers_again: bool


@dataclass(frozen=True)
class SenderSettings:
    rate_per_second: float = 25.0
    chat_interval: float = 1.0  # Telegram allows about one message per second into one chat
    catch_up: float = 0.05  # seconds of missed sending slots that may still be used (see TokenBucket)
    # Rows claimed at a time; 0: about a second's sending at ``rate_per_second`` (10 to 500). A claim is what a
    # crash leaves waiting for the restart, so it should not hold more than the sender gets through soon.
    batch_size: int = 0
    # Passing faults are retried until this long after the row was queued, at most ``max_backoff`` apart.
    retry_horizon: timedelta = timedelta(hours=24)
    max_backoff: float = MAX_BACKOFF
    # A sender renews its lease every third of this; claims of a holder silent for this long are taken back.
    lease: timedelta = timedelta(seconds=10)
    idle_poll_seconds: float = 1.0
    # Rows marked ahead of their sending slot or waiting for Telegram's answer, at most; 0: about a tenth of a
    # second's sending (16 to 128). Broadcast rows among them are what a crash can leave in doubt.
    ahead: int = 0


class OutboxSender:
    def __init__(
        self,
        bot: Bot,
        session_factory: SessionFactory,
        renderer: Renderer,
        clock: Clock,
        settings: SenderSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rate: SendRate | None = None,
        sole: bool = False,
        pacer: ChatPacer | None = None,
    ) -> None:
        self.bot = bot
        self.sessions = session_factory
        self.renderer = renderer
        self.clock = clock
        self.settings = settings or SenderSettings()
        self.batch_size = self.settings.batch_size or max(10, min(500, math.ceil(self.settings.rate_per_second)))
        ahead = self.settings.ahead or max(16, min(128, math.ceil(self.settings.rate_per_second / 10)))
        self._ahead = asyncio.Semaphore(ahead)
        # Requests sent and not answered yet, at most half of ``ahead``: the other half is for the turns a stall may
        # make up (``catch_up``). A Telegram that stalls takes what is on the wire at once when it goes on, then the
        # turns made up; together they must stay within the burst it allows, or each one more is a 429 and a whole
        # ``retry_after`` of silence (bench.broadcast: 3-8 refused at one instant, each time after a stall).
        self._on_wire = asyncio.Semaphore(max(1, ahead // 2))
        self._monotonic = monotonic
        self.bucket = rate or TokenBucket(self.settings.rate_per_second, monotonic, sleep, self.settings.catch_up)
        # The only sender there is (a polling bot): whatever claims it finds at start belong to the dead.
        self.sole = sole
        self.holder = uuid.uuid4().hex
        # Shared with the direct replies (bot/outbound/replies.py): a worker answering the bot and getting cards at
        # the same time still gets one message a second.
        self.pacer = pacer or ChatPacer(self.settings.chat_interval, monotonic, sleep)
        self._lease_renewed: datetime | None = None
        # Rows Telegram accepted whose "sent" is not written yet, and other outcomes of rows tried (a backoff, a
        # failure): they ride along with the next commit the sender makes anyway (``_transaction``).
        self._delivered: list[int] = []
        self._follow_ups: list[FollowUp] = []  # what the database learns from their answers (cards to keep current…)
        self._outcomes: list[tuple[list[int], dict[str, object]]] = []
        self._unreachable: list[int] = []
        # Writing what Telegram took so far, while the round goes on (``_record_soon``), and when it last began.
        self._recording: asyncio.Task[None] | None = None
        self._recorded_at = -math.inf
        # Broadcast rows whose sending turn has come, waiting for the next marking transaction (``_mark_sending``).
        self._to_mark: list[tuple[OutboxMessage, asyncio.Future[None]]] = []
        self._marking: asyncio.Task[None] | None = None
        # Broadcast rows marked whose request has not gone yet (or was refused), rows a pause un-marked and not marked
        # again yet, and the pauses so far.
        self._marked: set[int] = set()
        self._unmarked: set[int] = set()
        self._pauses = 0
        # The round under way (``deliver_due``): each chat's rows in flight and the task sending them, the chats
        # whose task ended, how many rows are claimed and not handled, the claim being made, the rows of the last
        # full batch still waiting for more than their turn (``_ready``), and why to claim again.
        self._chats: dict[int, tuple[asyncio.Future[None], list[OutboxMessage]]] = {}
        self._chats_done: list[int] = []
        self._in_flight = 0
        self._claiming: asyncio.Future[tuple[list[OutboxMessage], dict[int, Rendered]]] | None = None
        self._not_ready: set[int] = set()
        self._claimed_at = -math.inf
        self._claim_now = False  # a full batch is ready: more is due
        self._stop = asyncio.Event()  # ``run``'s
        self._woken = False  # messages were queued
        self._wake = asyncio.Event()
        # Whether a passing fault was seen and Telegram has not answered since. A new sender cannot know what its
        # predecessor saw (rows it left waiting out a backoff), so it asks once.
        self._faulted = True
        self._answers_again = False  # rows waiting out a backoff are made due with the next commit

    def wake(self) -> None:
        self._woken = True
        self._wake.set()

    async def pause(self, seconds: float) -> None:
        """Telegram asked to wait (a 429): all sending waits. The rows refused stay claimed, their requests kept,
        and are tried again after the pause, in their places (given a later ``not_before`` they went behind what
        was queued meanwhile, a chat's newer cards before its older ones: bench.crash run 31). Claiming goes on
        in the pause, so that a crash in it leaves every row that is due claimed with its request, for the next
        process's hand-over to send within a second or two of its start (bench.crash run 39: rows given back for
        the pause waited a whole start-up).

        Broadcast rows marked "sending" whose requests have not gone are marked claimed again for the pause, and
        "sending" again just before their requests: killed in the pause, they would be in doubt though none of
        them went (bench.crash run 55: sixteen agenda messages lost so in a 429 storm)."""
        self._pauses += 1
        if self._marked:
            self._unmark(self._marked)
            self._marked = set()
        await self.bucket.pause(seconds)

    def _unmark(self, ids: Collection[int]) -> None:
        self._outcomes.append((sorted(ids), {"status": OutboxStatus.CLAIMED}))
        self._unmarked.update(ids)
        self._record_now()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop  # a round under way claims nothing more once it is set
        await self.take_back_claims(everyone=self.sole)
        upkeep = asyncio.create_task(self._keep_lease(stop))
        probe = asyncio.create_task(self._probe(stop))
        try:
            while not stop.is_set():
                try:
                    delivered = await self.deliver_due()
                except Exception:  # the loop must outlive a database hiccup
                    log.exception("outbox delivery round failed")
                    delivered = 0
                if delivered or self._woken:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.idle_poll_seconds)
        finally:
            for task in (upkeep, probe):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._claiming is not None:  # what it claimed is given back below
                with contextlib.suppress(Exception):
                    await self._claiming
            await self._release_lease()

    async def _probe(self, stop: asyncio.Event) -> None:
        """While passing faults were seen, ask Telegram every ``PROBE_SECONDS`` whether it answers again; a new
        sender asks at once (what its predecessor left waiting out a backoff goes as soon as Telegram answers)."""
        while not stop.is_set():
            if self._faulted:
                try:
                    await self.bot.get_me()
                except (TelegramServerError, TelegramNetworkError):
                    pass
                except Exception:
                    log.exception("could not ask Telegram whether it answers again")
                else:
                    self._telegram_answers()
                    self.wake()
            await asyncio.sleep(PROBE_SECONDS)

    def _telegram_answers(self) -> None:
        if self._faulted:
            self._faulted = False
            self._answers_again = True

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        """Renew this sender's lease, and take back claims of senders that stopped renewing theirs."""
        interval = self.settings.lease.total_seconds() / 3
        while not stop.is_set():
            await asyncio.sleep(interval)
            try:
                if await self.take_back_claims():
                    self.wake()
            except Exception:
                log.exception("could not renew the sender lease")

    async def take_back_claims(self, *, everyone: bool = False) -> int:
        """Give back what dead senders claimed; returns how many rows will be sent after all.

        With ``everyone``, every other holder counts as dead (this is the only sender, just started).
        Claimed rows go back to pending; personal rows caught "sending" by an older version, too (at least
        once); broadcast rows caught "sending" are in doubt (at most once).
        """
        now = self.clock()
        async with self.sessions() as session, session.begin():
            await self._renew_lease(session, now)
            lapsed = SenderLease.holder != self.holder if everyone else SenderLease.expires_at < now
            await session.execute(delete(SenderLease).where(lapsed))
            orphaned = or_(
                OutboxMessage.claimed_by.is_(None), OutboxMessage.claimed_by.not_in(select(SenderLease.holder))
            )
            released = await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status.in_((OutboxStatus.CLAIMED, OutboxStatus.SENDING)),
                    or_(OutboxMessage.status == OutboxStatus.CLAIMED, OutboxMessage.broadcast_id.is_(None)),
                    orphaned,
                )
                .values(status=OutboxStatus.PENDING, claimed_by=None, request=None)
            )
            await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status == OutboxStatus.SENDING,
                    OutboxMessage.broadcast_id.is_not(None),
                    orphaned,
                )
                .values(status=OutboxStatus.IN_DOUBT, error="the sender stopped while sending; not repeated")
            )
        return int(getattr(released, "rowcount", 0) or 0)

    async def _renew_lease(self, session: AsyncSession, now: datetime) -> None:
        expires_at = now + self.settings.lease
        renewed = await session.execute(
            update(SenderLease).where(SenderLease.holder == self.holder).values(expires_at=expires_at)
        )
        if not getattr(renewed, "rowcount", 0):
            session.add(SenderLease(holder=self.holder, expires_at=expires_at))
        self._lease_renewed = now

    async def _release_lease(self) -> None:
        """On a clean stop: give back what is still claimed, at once, to whoever sends next."""
        with contextlib.suppress(Exception):
            async with self._transaction() as session:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.CLAIMED, OutboxMessage.claimed_by == self.holder)
                    .values(status=OutboxStatus.PENDING, claimed_by=None, request=None)
                )
                await session.execute(delete(SenderLease).where(SenderLease.holder == self.holder))

    async def deliver_due(self) -> int:
        """Send what is due until nothing is left; returns how many rows were handled.

        Each chat's rows go in a task of their own, at the chat's pace, and while they go the sender claims again
        for the chats with nothing in flight: at once when every row of a full batch waits only for its turn
        (``_ready``: the sending never stops for a claim, which took 50–120 ms on a busy machine, 5–10 % of the
        rate at 200/s, docs/benchmarks.md "Broadcasts"); and, while less than a batch is in flight, when woken (an
        update or a job queued messages) or every ``idle_poll_seconds`` (another process queued them). A chat's
        new message so never waits for another chat's queue: in bench.crash run 52 residents' notices waited
        behind a worker's cards, one a second, and 24 were still waiting when the run ended.
        """
        loop = asyncio.get_running_loop()
        handled = 0
        self._woken = self._claim_now = False
        self._claiming = self._begin_claim()
        try:
            while True:
                self._wake.clear()
                for chat in self._chats_done:
                    self._chats[chat][0].result()  # a chat's error ends the round, its rows given back below
                    del self._chats[chat]
                self._chats_done.clear()
                if self._claiming is not None and self._claiming.done():
                    rows, rendered = self._claiming.result()
                    self._claiming = None
                    handled += len(rows)
                    self._start(rows, rendered)
                since = loop.time() - self._claimed_at
                if self._claiming is None and self._claim_wanted(since):
                    self._claiming = self._begin_claim()
                elif self._claiming is None and not self._chats:
                    break
                ticking = self._claiming is None and self._in_flight < self.batch_size
                poll = max(0.0, self.settings.idle_poll_seconds - since) if ticking else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=poll)
        except BaseException as error:
            in_flight = [rows for _, rows in self._chats.values()]
            for task, _ in self._chats.values():  # one chat's failure stops the round
                task.cancel()
            self._end_round()
            self._stop_marking()
            if not isinstance(error, Exception):
                raise  # cancelled, or the process is going away: what is claimed goes back at the restart
            # A round cut short by an error gives back what it left claimed at once, not at the next restart.
            if self._claiming is not None:
                with contextlib.suppress(Exception):
                    in_flight.append((await self._claiming)[0])
                self._claiming = None
            self._outcomes.extend(
                ([row.id], {"status": OutboxStatus.PENDING, "claimed_by": None})
                for rows in in_flight
                for row in rows
                if row.status == OutboxStatus.CLAIMED
            )
            await self._recorded()
            await self._write_now()
            raise
        self._end_round()
        await self._recorded()
        await self._write_now()
        return handled

    def _begin_claim(self) -> asyncio.Future[tuple[list[OutboxMessage], dict[int, Rendered]]]:
        """Claim for the chats with nothing in flight (their later rows must go after the ones they have)."""
        self._woken = self._claim_now = False
        self._claimed_at = asyncio.get_running_loop().time()
        claim = asyncio.ensure_future(self._claim(busy=set(self._chats)))
        claim.add_done_callback(lambda _: self._wake.set())
        return claim

    def _claim_wanted(self, since_last: float) -> bool:
        if self._stop.is_set():  # the round ends with what it has in hand; the rest is given back (``run``)
            return False
        if self._claim_now:
            return True
        if self._in_flight >= self.batch_size:  # the sender has its hands full; what it claims must go soon
            return False
        return self._woken or (bool(self._chats) and since_last >= self.settings.idle_poll_seconds)

    def _start(self, rows: list[OutboxMessage], rendered: dict[int, Rendered]) -> None:
        by_chat: dict[int, list[OutboxMessage]] = defaultdict(list)
        for row in rows:
            by_chat[row.chat_id].append(row)
        if len(rows) >= self.batch_size:
            self._not_ready.update(row.id for row in rows)
        self._in_flight += len(rows)
        for chat, chat_rows in by_chat.items():
            task = asyncio.ensure_future(self._deliver_chat(chat_rows, rendered))
            task.add_done_callback(partial(self._chat_done, chat))
            self._chats[chat] = (task, chat_rows)

    def _chat_done(self, chat: int, _task: asyncio.Future[None]) -> None:
        self._chats_done.append(chat)
        self._wake.set()

    def _end_round(self) -> None:
        self._chats, self._chats_done, self._not_ready = {}, [], set()
        self._marked, self._unmarked = set(), set()
        self._in_flight, self._claim_now = 0, False

    def _ready(self, row: OutboxMessage) -> None:
        """``row`` waits for nothing but its sending turn (a broadcast row is marked), or is done. Once every row
        of a full batch is, the next batch is claimed: the claim holds SQLite's one connection, and the ``ahead``
        rows go out meanwhile."""
        if row.id in self._not_ready:
            self._not_ready.discard(row.id)
            if self._not_ready:
                return
            if self._claiming is None and not self._stop.is_set():
                self._claiming = self._begin_claim()
            else:
                self._claim_now = True

    async def _claim(self, busy: Collection[int] = ()) -> tuple[list[OutboxMessage], dict[int, Rendered]]:
        """Claim the rows due now, rendered, their requests kept with the claim: should this process die, its
        successor sends them before its own start-up is done (handover.py). Rows of the ``busy`` chats wait."""
        now = self.clock()
        async with self._transaction() as session:
            renew_every = self.settings.lease / 3
            if self._lease_renewed is None or now - self._lease_renewed >= renew_every:
                await self._renew_lease(session, now)
            rows = list(
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.not_before <= now)
                    .where(OutboxMessage.chat_id.not_in(busy) if busy else true())
                    # A worker's card must not wait behind ten thousand agenda messages; within a priority, the
                    # longest due first, so what a dead sender had claimed is not overtaken by later retries.
                    .order_by(OutboxMessage.priority, OutboxMessage.not_before, OutboxMessage.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            rendered = dict(zip([row.id for row in rows], await self._render(session, rows), strict=True))
            if rows:
                # The rows are the sender's from here: the UPDATE below writes their claim, and what becomes of them
                # goes with a later commit, so the session must not write them. It lets go of all it holds at once,
                # once that is written (a renewed lease, a rendering's error): 0.2 us a row where expunging each took 4.
                await session.flush()
                session.expunge_all()
                await session.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.id == bindparam("row_id"))
                    .values(
                        status=OutboxStatus.CLAIMED, claimed_at=now, claimed_by=self.holder, request=bindparam("kept")
                    ),
                    [{"row_id": row.id, "kept": kept(rendered[row.id])} for row in rows],
                )
            for row in rows:
                row.status, row.claimed_at, row.claimed_by = OutboxStatus.CLAIMED, now, self.holder
        return rows, rendered

    async def _deliver_chat(self, rows: list[OutboxMessage], rendered: dict[int, Rendered]) -> None:
        """One chat's rows in order, one at a time, at Telegram's per-chat pace."""
        for position, row in enumerate(rows):
            while (outcome := await self._deliver(row, rendered)) is OutboxStatus.CLAIMED:
                pass  # a 429: the same row, once the pause is over (see ``pause``)
            if outcome is not OutboxStatus.SENT and outcome is not None:
                # The chat is blocked or must wait out a fault: the rest of its rows share that fate.
                rest = rows[position + 1 :]
                self._finish(rest, outcome, row.not_before, row.error)
                for later in rest:
                    self._ready(later)
                self._handled(1 + len(rest))
                return
            self._handled(1)

    def _handled(self, count: int) -> None:
        hands_full = self._in_flight >= self.batch_size
        self._in_flight -= count
        if hands_full and self._in_flight < self.batch_size:
            self._wake.set()  # the round may claim again

    async def _deliver(self, row: OutboxMessage, rendered: dict[int, Rendered]) -> OutboxStatus | None:
        """Send one row and note the result; returns a status the chat's later rows must share, if any.

        A broadcast row is marked "sending" before its sending slot comes, so the request leaves the moment it
        does: waiting for a commit between slot and request would bunch requests up and run into Telegram's
        limit. Only ``ahead`` rows are marked and not yet answered at a time, which bounds what a crash can
        leave in doubt.
        """
        await self.pacer.wait_turn(row.chat_id)
        async with self._ahead:
            prepared = rendered[row.id]
            if prepared is None:
                self._finish([row], OutboxStatus.FAILED if row.error else OutboxStatus.SENT, None, row.error)
                self._ready(row)
                return None
            if row.broadcast_id is not None:
                await self.bucket.resumed()  # marked in a pause, it would wait it out in doubt
                await self._mark_sending(row)
            self._ready(row)
            async with self._on_wire:
                await self.bucket.take()
                while row.id in self._unmarked:  # a pause came after it was marked: marked again after the pause
                    self._unmarked.discard(row.id)
                    await self._mark_sending(row)
                    if row.id in self._unmarked:  # and another while that was written
                        await self.bucket.take()
                return await self._send(row, *prepared)

    async def _send(self, row: OutboxMessage, method: TelegramMethod[Any], request: Request) -> OutboxStatus | None:
        now = self.clock()
        self._marked.discard(row.id)
        try:
            answer = await self._call(method, request)
        except TelegramRetryAfter as error:
            if row.broadcast_id is not None:  # refused, so not in doubt: un-marked by the pause, as those waiting
                self._marked.add(row.id)
            await self.pause(error.retry_after)
            return OutboxStatus.CLAIMED
        except TelegramForbiddenError as error:
            self._unreachable.append(row.chat_id)
            self._finish([row], OutboxStatus.FAILED, None, f"403: {error.message}")
            return OutboxStatus.FAILED
        except TelegramBadRequest as error:
            if edit_settled(request["method"], error.message):
                answer = Answer(settled=error.message)  # the card already reads so, or is gone: nothing left to do
            else:
                # Telegram's word on this chat or this message ("chat not found"): trying again cannot help.
                self._finish([row], OutboxStatus.FAILED, None, f"400: {error.message}")
                return None
        except (TelegramServerError, TelegramNetworkError) as error:
            self._faulted = True
            attempts = row.attempts + 1
            if now - row.created_at >= self.settings.retry_horizon:
                hours = self.settings.retry_horizon.total_seconds() / 3600
                self._finish([row], OutboxStatus.FAILED, None, f"gave up after {hours:g} h: {error}", attempts)
                return None
            retry_at = now + backoff(attempts, self.settings.max_backoff)
            self._finish([row], OutboxStatus.PENDING, retry_at, str(error), attempts)
            return OutboxStatus.PENDING
        except Exception as error:
            log.exception("outbox row %s could not be sent", row.id)
            self._finish([row], OutboxStatus.FAILED, None, f"error: {error!r}")
            return None
        self._telegram_answers()
        self._delivered.append(row.id)
        if (learnt := follow_up(row, request, answer, now)) is not None:
            self._follow_ups.append(learnt)
        row.status, row.error = OutboxStatus.SENT, ""
        self._record_soon()
        return OutboxStatus.SENT

    async def _call(self, method: TelegramMethod[Any], request: Request) -> Answer:
        """Ask Telegram; what the database cares about in its answer.

        The request prepared at the claim is posted as it is, over the bot's own aiohttp session, as the hand-over
        posts it: aiogram would build the same form again from the method and read a taken message into its
        ``Message``, about a quarter of the sender's CPU per message. A refusal is judged by aiogram's own
        ``check_response`` (the same exceptions as ``bot(method)``). The session's request middlewares are left
        out: the bot's one (``ReplyPolicy``) acts only on the calls made while an update is handled. A file to
        upload, or another session (a proxy's, the tests' fake), goes through aiogram as before.
        """
        session = self.bot.session
        if request["fields"] is None or type(session) is not AiohttpSession:
            return answer_of(await self.bot(method))
        http = await session.create_session()
        url = session.api.api_url(token=self.bot.token, method=request["method"])
        try:
            async with http.post(
                url, data=form_of(request), headers=FORM, timeout=ClientTimeout(total=session.timeout)
            ) as reply:
                status, content = reply.status, await reply.text()
        except TimeoutError as error:
            raise TelegramNetworkError(method=method, message="Request timeout error") from error
        except ClientError as error:
            raise TelegramNetworkError(method=method, message=f"{type(error).__name__}: {error}") from error
        with contextlib.suppress(ValueError):
            answer = session.json_loads(content)
            if HTTPStatus.OK <= status <= HTTPStatus.IM_USED and isinstance(answer, dict) and answer.get("ok") is True:
                return Answer.from_result(answer.get("result"))
        return answer_of(session.check_response(self.bot, method, status, content).result)

    def _record_soon(self) -> None:
        """Write what Telegram took at most ``RECORD_SECONDS`` after the last such write, while the round goes
        on, instead of only at its end: a crash then repeats a moment's messages, not a round's."""
        if self._monotonic() - self._recorded_at < RECORD_SECONDS:
            return
        if self._recording is None or self._recording.done():
            self._recorded_at = self._monotonic()
            self._recording = asyncio.create_task(self._write_now())

    def _record_now(self) -> None:
        """Write what was noted at once, after the write under way if there is one."""
        under_way = self._recording

        async def after() -> None:
            if under_way is not None:
                with contextlib.suppress(Exception):  # a failed write put back what it held: this one carries it
                    await under_way
            await self._write_now()

        self._recorded_at = self._monotonic()
        self._recording = asyncio.create_task(after())

    async def _recorded(self) -> None:
        """Wait for a write ``_record_soon`` began (its failure leaves the rows claimed: sent again at a restart,
        as after any failed commit of the sender)."""
        if self._recording is not None:
            try:
                await self._recording
            except Exception:
                log.exception("could not write what Telegram took")
            self._recording = None

    async def _mark_sending(self, row: OutboxMessage) -> None:
        """Mark a broadcast row "sending" (at most once: a crash now leaves it in doubt, never sent again).

        Rows whose turn came while a marking transaction ran share the next one: at a high rate one commit
        serves dozens of messages, at a low one each message still goes out as soon as its turn comes.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_mark.append((row, future))
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._mark_queued())
        await future

    def _stop_marking(self) -> None:
        if self._marking is not None:
            self._marking.cancel()
        for _, future in self._to_mark:
            future.cancel()
        self._to_mark = []

    async def _mark_queued(self) -> None:
        while self._to_mark:
            batch, self._to_mark = self._to_mark, []
            marked = [row.id for row, _ in batch]
            pauses = self._pauses
            try:
                async with self._transaction() as session:
                    # A trip of its own, not one with the COMMIT (as the "sent" marks): a round stopped meanwhile
                    # rolls it back, where a single trip would commit marks for rows whose requests never go.
                    await session.execute(MARK_SENDING, {"ids": marked})
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self._unmarked.difference_update(marked)
            if self._pauses == pauses:
                self._marked.update(marked)
            else:  # a pause came while they were being marked
                self._unmark(marked)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _render(self, session: AsyncSession, rows: list[OutboxMessage]) -> list[Rendered]:
        """Each row's call and request (None: nothing to send; a reason is then in its ``error``)."""
        if not rows:
            return []
        # The recipients in one read, handed to rendering (held here: the session holds them weakly).
        recipients = {
            user.id: user
            for user in await session.scalars(select(User).where(User.id.in_({row.chat_id for row in rows})))
        }
        prepared: list[Rendered] = []
        shared: dict[int, Any] = {}  # see as_request
        for row in rows:
            recipient = recipients.get(row.chat_id)
            if recipient is not None and recipient.unreachable_at is not None:
                row.error = "recipient blocked the bot"
                prepared.append(None)
                continue
            try:
                method = await self.renderer.render(session, row, recipient)
            except Exception as error:
                log.exception("outbox row %s could not be rendered", row.id)
                row.error = f"error: {error!r}"
                method = None
            prepared.append(None if method is None else (method, as_request(self.bot, row, method, shared)))
        return prepared

    async def _write_now(self) -> None:
        if self._delivered or self._outcomes or self._unreachable:
            async with self._transaction():
                pass

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """A transaction of the sender's, which also writes the outcomes noted since its last one. Should it fail,
        they are noted again for the next: taken and lost, their rows stayed claimed by this live process until
        it restarted (a card not sent, nor tried again)."""
        noted = Noted(self._delivered, self._follow_ups, self._outcomes, self._unreachable, self._answers_again)
        self._delivered, self._follow_ups, self._outcomes, self._unreachable = [], [], [], []
        self._answers_again = False
        try:
            async with self.sessions() as session, session.begin():
                await self._write_outcomes(session, noted)
                yield session
        except BaseException:
            self._delivered[:0] = noted.delivered
            self._follow_ups[:0] = noted.follow_ups
            self._outcomes[:0] = noted.outcomes
            self._unreachable[:0] = noted.unreachable
            self._answers_again = self._answers_again or noted.answers_again
            raise

    async def _write_outcomes(self, session: AsyncSession, noted: Noted) -> None:
        """Write what happened to the rows sent or tried before this transaction, as part of ``session``'s.

        Should the process die first, a personal row is sent again and a broadcast row is in doubt; a row that
        failed or must wait is simply tried again.
        """
        now = self.clock()
        for learnt in sorted(noted.follow_ups, key=lambda f: f.ticket_id):
            await learnt.write(session)
        if noted.delivered:
            # Nobody reads its outcome: on SQLite it goes with the transaction's next trip to the database's thread
            # (storage.db.execute_pipelined), so a marking transaction takes two trips, not three.
            await session.run_sync(execute_pipelined, MARK_SENT, {"ids": noted.delivered, "now": now})
        for ids, values in noted.outcomes:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if noted.unreachable:
            await session.execute(update(User).where(User.id.in_(noted.unreachable)).values(unreachable_at=now))
        if noted.answers_again:
            # Rows waiting out a backoff after a passing fault (their error is Telegram's; a row scheduled for
            # later has none).
            await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status == OutboxStatus.PENDING,
                    OutboxMessage.not_before > now,
                    OutboxMessage.error != "",
                )
                .values(not_before=now)
                .execution_options(synchronize_session=False)
            )

    def _finish(
        self,
        rows: list[OutboxMessage],
        status: OutboxStatus,
        not_before: object,
        error: str,
        attempts: int | None = None,
    ) -> None:
        """Note how rows ended this round; it is written with the sender's next commit."""
        if not rows:
            return
        values: dict[str, object] = {"status": status, "error": error, "claimed_by": None, "request": None}
        if status is OutboxStatus.SENT:
            values["sent_at"] = self.clock()
        if not_before is not None and status is OutboxStatus.PENDING:
            values["not_before"] = not_before
        if attempts is not None:
            values["attempts"] = attempts
        self._outcomes.append(([r.id for r in rows], values))
        self._record_soon()  # a round lasts as long as there is work: it does not wait for the round's end
        for row in rows:
            row.status, row.error = status, error
            if not_before is not None and status is OutboxStatus.PENDING:
                row.not_before = not_before  # type: ignore[assignment]
