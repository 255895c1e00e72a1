"""Incoming updates: recorded before Telegram is told they arrived, handled exactly once, in order per user.

Telegram forgets an update once a later ``getUpdates`` names a higher offset. So the poller writes each batch
to ``inbound_updates`` (one transaction) before it asks for the next one, and a crash can lose nothing that
was confirmed. Each recorded update is then handled through the dispatcher; the row's ``handled_at`` is
written in the same transaction as the update's own changes (:class:`InboxMarkMiddleware`), so an update that
arrives twice, or that a restarted process finds unhandled, changes things once. Updates of one user run one
after another in the order Telegram sent them; different users run concurrently.

Once an update's handling has ended, answers included, its row's ``answered_at`` is written (in one transaction
per burst). A row handled and not answered is one whose answer a crash may have cut off: the change was saved,
the person never heard. After a restart, :meth:`UpdateInbox.resume` shows each such person where they stand. So does
:meth:`UpdateInbox.reprompt`, in the running process, for the people whose answer Telegram refused for good
while it could not be reached (an outage): once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, partial
from typing import Any, cast

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates
from aiogram.types import TelegramObject, Update
from aiogram.utils.backoff import Backoff, BackoffConfig
from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from domain.clock import Clock
from storage.db import SessionFactory, SessionHooks, add_hooks, execute_pipelined, remove_hooks
from storage.models import InboundUpdate, SenderLease

log = logging.getLogger(__name__)

_TABLE = cast(Table, InboundUpdate.__table__)
_MARK_HANDLED = (
    update(_TABLE).where(_TABLE.c.update_id.in_(bindparam("ids", expanding=True))).values(handled_at=bindparam("now"))
)
# The same for the one update being handled, in its commit: no list to expand, so SQLAlchemy sends its cached SQL
# as it is instead of rendering it anew for every update.
_MARK_ONE_HANDLED = update(_TABLE).where(_TABLE.c.update_id == bindparam("id")).values(handled_at=bindparam("now"))
# Its handling ended, answers included. An update that made no commit of its own is "handled" by the same write.
_MARK_FINISHED = (
    update(_TABLE)
    .where(_TABLE.c.update_id.in_(bindparam("ids", expanding=True)))
    .values(handled_at=func.coalesce(_TABLE.c.handled_at, bindparam("now")), answered_at=bindparam("now"))
)


@cache
def _record_new(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING the ids it inserted. Built once and executed with the batch's rows
    as parameters: SQLAlchemy sends them as one multi-row INSERT all the same, from its cached statement, where
    putting the rows into the statement built and compiled a new one of hundreds of parameters for every batch."""
    insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(_TABLE)
    return insert.on_conflict_do_nothing().returning(_TABLE.c.update_id)


# An update that was being handled when the process died this many times after a restart is set aside, not retried
# for ever. Only a start of its handling counts: a process killed before it came to the update does not.
MAX_RECOVERIES = 3
# Handled rows are kept this long, so that Telegram delivering one again is recognised.
KEEP_HANDLED = timedelta(days=2)
# While answers Telegram refused in an outage wait to be given, it is asked this often whether it answers again.
REPROMPT_SECONDS = 5.0


@dataclass
class HandledMark:
    """Whether an update's "handled" is already part of a committed transaction."""

    update_id: int
    written: bool = False
    # Recorded by a process that died before handling it: its handling is counted before it starts (recover).
    recovered: bool = False
    # Handled by a process that died before it answered: fed again only to show where its person stands (resume).
    resume: bool = False
    # Called once the update is past its risky part: "handled" committed, or the bot began to answer.
    on_settled: Callable[[], None] | None = None
    # An answer to it failed for good because Telegram could not be reached (bot/outbound/replies.py): the update
    # stays "handled", not "answered", and the person is shown where they stand once Telegram answers (reprompt).
    refused: bool = False

    def settled(self) -> None:
        if self.on_settled is not None:
            self.on_settled()
            self.on_settled = None


# The update being handled in this task, for bot/outbound/replies.py: the bot beginning to answer settles it.
handling: ContextVar[HandledMark | None] = ContextVar("inbox_handling", default=None)


def recorded_payload(update: Update) -> str:
    """The update as it is kept until handled: as Telegram sent it, but a shared contact's phone number, which is
    never stored in plain text (domain/households.py). An update recovered after a crash asks the resident's
    grid worker instead, as for a number the register does not know."""
    message = update.message
    if message is not None and message.contact is not None:
        contact = message.contact.model_copy(update={"phone_number": ""})
        update = update.model_copy(update={"message": message.model_copy(update={"contact": contact})})
    return update.model_dump_json(exclude_unset=True, by_alias=True)


def order_key(update: Update) -> int:
    """Whose updates must stay in order: the user's, else the chat's."""
    try:
        event_ = update.event
    except Exception:  # a kind of update this aiogram does not know: it goes in line with no one
        return 0
    user = getattr(event_, "from_user", None)
    if user is not None:
        return int(user.id)
    chat = getattr(event_, "chat", None)
    return int(chat.id) if chat is not None else 0


class InboxMarkMiddleware(BaseMiddleware):
    """Writes "handled" with the first commit that changes something for the update (registered after the user
    lookup, whose commit must not carry it).

    A commit that only read (a domain lookup opens a transaction of its own) must not carry it either: were the
    process to die after it, before the update's change or its wizard state was written, the update would count
    as handled with nothing done.
    """

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event_: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        mark: HandledMark | None = data.get("inbox_mark")
        if mark is None:  # fed directly (tests, benchmarks), not through the inbox
            return await handler(event_, data)
        session: AsyncSession = data["session"]
        hooks = _MarkAtCommit(mark, data["clock"])
        add_hooks(session, hooks)
        token = handling.set(mark)
        try:
            return await handler(event_, data)
        finally:
            handling.reset(token)
            remove_hooks(session, hooks)


class _MarkAtCommit(SessionHooks):
    """Carries the update's "handled" in the first commit that changes something (InboxMarkMiddleware)."""

    def __init__(self, mark: HandledMark, clock: Clock) -> None:
        self.mark, self.clock = mark, clock
        self.pending = self.marking = False

    def wrote(self) -> None:
        self.pending = True

    def before_commit(self, session: Session) -> None:
        # Runs after the wizard state's write-along (added earlier), which counts as a change. Objects added and
        # not yet flushed count too: the commit flushes them after this hook.
        if self.mark.written:
            return
        if self.pending or session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
            execute_pipelined(session, _MARK_ONE_HANDLED, {"id": self.mark.update_id, "now": self.clock()})
            self.marking = True

    def after_commit(self) -> None:
        if self.marking:
            self.mark.written = True
            self.mark.settled()
        self.pending = self.marking = False

    def after_rollback(self) -> None:
        self.pending = self.marking = False


class UpdateInbox:
    """Records updates, hands them to the dispatcher per user in order, and marks them handled."""

    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        session_factory: SessionFactory,
        clock: Clock,
        *,
        concurrency: int = 64,
        max_backlog: int = 1_000,
        holder: str | None = None,
    ) -> None:
        self.bot = bot
        # This process's sender lease (bot/outbound/sender.py): while it is renewed, the updates recorded here
        # are this process's to handle.
        self.holder = holder
        self.dispatcher = dispatcher
        self.sessions = session_factory
        self.clock = clock
        self.max_backlog = max_backlog
        self._slots = asyncio.Semaphore(concurrency)
        # Recovered updates start one at a time, each once the one before is settled (HandledMark), so a crash
        # during recovery counts against the one update that was under way, not against the whole backlog.
        self._recovery_turn = asyncio.Lock()
        # Each person's first recovered or resumed update, until it is settled: polling waits for them (see
        # recovery_settled). A person's later ones wait in the person's queue behind the first anyway.
        self._unsettled: set[int] = set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._queues: dict[int, deque[tuple[Update, HandledMark]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._backlog = 0
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        # Updates whose handling ended: "answered" (and "handled", for those without a commit of their own) is
        # written for them in one go, shortly after.
        self._finished: list[int] = []
        self._marks_due = asyncio.Event()
        # Updates whose answer Telegram refused in an outage (HandledMark.refused): "handled" is written for them,
        # and then they wait in ``_to_reprompt`` until Telegram answers again.
        self._refused: list[int] = []
        self._to_reprompt: set[int] = set()

    # --- recording --------------------------------------------------------------------------------------

    async def record(self, updates: Iterable[Update]) -> list[Update]:
        """Store updates that are new; returns those (an update Telegram sends again is left out)."""
        batch = {u.update_id: u for u in updates}
        if not batch:
            return []
        now = self.clock()
        rows = [
            {
                "update_id": i,
                "payload": recorded_payload(u),
                "received_at": now,
                "received_by": self.holder,
                "user_key": order_key(u),
            }
            for i, u in batch.items()
        ]
        async with self.sessions() as session, session.begin():
            fresh = set(await session.scalars(_record_new(session.get_bind().dialect.name), rows))
            await self._write_marks(session)
        return [u for update_id, u in sorted(batch.items()) if update_id in fresh]

    async def recover(self, *, everyone: bool = True) -> int:
        """Queue what a dead predecessor recorded but did not finish; returns how many updates.

        ``everyone``: this is the only process (long polling), so every unfinished update is a dead one's.
        Otherwise (webhook, several processes) only those whose process's sender lease has lapsed; taking them
        over is one UPDATE, so two processes never take the same one.
        """
        async with self.sessions() as session, session.begin():
            pending = [_TABLE.c.handled_at.is_(None), *self._left_by_the_dead(everyone)]
            # Taken over, not yet counted: a recovery counts once its handling begins (_count_recovery).
            taken = await session.execute(
                update(_TABLE)
                .where(*pending)
                .values(received_by=self.holder)
                .returning(_TABLE.c.update_id, _TABLE.c.payload, _TABLE.c.recoveries)
            )
            rows = sorted(taken.all())
            poison = [row.update_id for row in rows if row.recoveries >= MAX_RECOVERIES]
            if poison:
                log.error(
                    "updates %s were being handled at %d crashes after a restart; set aside", poison, MAX_RECOVERIES
                )
                await session.execute(_MARK_HANDLED, {"ids": poison, "now": self.clock()})
        recovered = [
            Update.model_validate_json(row.payload, context={"bot": self.bot})
            for row in rows
            if row.recoveries < MAX_RECOVERIES
        ]
        for recovered_update in recovered:
            self.submit(recovered_update, recovered=True)
        return len(recovered)

    def _left_by_the_dead(self, everyone: bool) -> list[ColumnElement[bool]]:
        if everyone:
            return []
        live = select(SenderLease.holder).where(SenderLease.expires_at >= self.clock())
        return [or_(_TABLE.c.received_by.is_(None), _TABLE.c.received_by.not_in(live))]

    async def resume(self, *, everyone: bool = True, only: Collection[int] | None = None) -> int:
        """Show where they stand the people whose last update a dead predecessor handled but did not finish
        answering; returns how many. ``everyone`` as for :meth:`recover`; ``only``: these updates instead,
        whoever took them (:meth:`reprompt`).

        Only a person's last recorded update counts: after a later one, recovered or answered, the person has
        an answer that is current. Each is fed through the dispatcher again with ``resume=True``
        (handlers/resume.py), which changes nothing and asks the question the person is at; it is marked
        answered once that is said, so a crash meanwhile resumes it again (a resume that crashes the bot
        ``MAX_RECOVERIES`` times is given up, as a recovered update is).
        """
        whose = [_TABLE.c.update_id.in_(only)] if only is not None else self._left_by_the_dead(everyone)
        async with self.sessions() as session, session.begin():
            taken = await session.execute(
                update(_TABLE)
                .where(_TABLE.c.handled_at.is_not(None), _TABLE.c.answered_at.is_(None), *whose)
                .values(received_by=self.holder)
                .returning(_TABLE.c.update_id, _TABLE.c.payload, _TABLE.c.user_key, _TABLE.c.recoveries)
            )
            rows = taken.all()
            keys = {row.user_key for row in rows if row.user_key}
            last: dict[int, int] = {}
            if keys:
                latest = select(_TABLE.c.user_key, func.max(_TABLE.c.update_id)).where(_TABLE.c.user_key.in_(keys))
                last = {
                    key: update_id for key, update_id in (await session.execute(latest.group_by(_TABLE.c.user_key)))
                }
            due = [
                Update.model_validate_json(row.payload, context={"bot": self.bot})
                for row in sorted(rows)
                if row.user_key and last.get(row.user_key) == row.update_id and row.recoveries < MAX_RECOVERIES
            ]
            # Only a person's message or button press is answered; other kinds (a membership change) have nothing
            # to show again.
            resumed = [u for u in due if u.message is not None or u.callback_query is not None]
            kept = {u.update_id for u in resumed}
            done = [row.update_id for row in rows if row.update_id not in kept]
            if done:
                await session.execute(_MARK_FINISHED, {"ids": done, "now": self.clock()})
        for resumed_update in resumed:
            self.submit(resumed_update, resume=True)
        return len(resumed)

    async def reprompt(self) -> int:
        """If Telegram answers again, show where they stand the people whose answer it refused for good while it
        could not be reached (:attr:`HandledMark.refused`); returns how many.

        Nothing is said while Telegram still fails, and someone who sent something since gets the answer to that
        instead (:meth:`resume` takes only a person's last update). The re-prompt is an update resumed like after
        a crash: refused again, it waits for the next time, and it is given up after ``MAX_RECOVERIES`` tries.
        """
        if not self._to_reprompt and not self._refused:
            return 0
        await self.write_marks()  # "handled" for the refused ones, which resume() needs
        try:
            await self.bot.get_me()
        except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter):
            return 0
        due, self._to_reprompt = self._to_reprompt, set()
        return await self.resume(only=due)

    async def keep_reprompting(self, stop: asyncio.Event) -> None:
        """:meth:`reprompt` every ``REPROMPT_SECONDS`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPROMPT_SECONDS)
            try:
                reprompted = await self.reprompt()
            except Exception:
                log.exception("could not show people the answers Telegram refused; trying again")
                continue
            if reprompted:
                log.info("Telegram answers again: showing %d people where they stand", reprompted)

    def _recovery_settled(self, update_id: int) -> None:
        self._recovery_turn.release()
        self._unsettled.discard(update_id)
        if not self._unsettled:
            self._settled.set()

    async def recovery_settled(self, seconds: float) -> None:
        """Wait (at most this long) until each person's first recovered or resumed update has begun to answer or
        committed.

        Polling starts after that, so the answer to what the dead process left comes before any new update is
        taken from Telegram: someone who sent the step again meanwhile is answered in order, the first answer
        for the first message. A person's later updates need no waiting for: a new one goes into the person's
        queue behind them. (Waiting for them too held polling for the whole wait in a 429 storm, while the
        first one's answer was retried.)
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), seconds)

    async def _count_recovery(self, update_id: int) -> None:
        """Counts that handling this recovered update starts: should it kill the process, it counts against it."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(InboundUpdate)
                .where(InboundUpdate.update_id == update_id)
                .values(recoveries=InboundUpdate.recoveries + 1)
            )

    async def forget_old(self) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(delete(InboundUpdate).where(InboundUpdate.handled_at < self.clock() - KEEP_HANDLED))

    # --- handling ---------------------------------------------------------------------------------------

    def submit(self, update_: Update, *, recovered: bool = False, resume: bool = False) -> None:
        key = order_key(update_)
        queue = self._queues.get(key)
        self._backlog += 1
        self._idle.clear()
        if self._backlog >= self.max_backlog:
            self._room.clear()
        mark = HandledMark(update_.update_id, written=resume, recovered=recovered or resume, resume=resume)
        if mark.recovered and queue is None:
            self._unsettled.add(mark.update_id)
            self._settled.clear()
        item = (update_, mark)
        if queue is not None:
            queue.append(item)
            return
        self._queues[key] = deque([item])
        worker = asyncio.create_task(self._drain(key))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _drain(self, key: int) -> None:
        queue = self._queues[key]
        try:
            while queue:
                update_, mark = queue[0]
                async with self._slots:
                    await self.handle(update_, mark)
                queue.popleft()
                self._backlog -= 1
                if self._backlog < self.max_backlog:
                    self._room.set()
        finally:
            del self._queues[key]
            if not self._queues:
                self._idle.set()

    async def handle(self, update_: Update, mark: HandledMark | None = None) -> None:
        """Handle one recorded update now (the queue calls this in order per user)."""
        mark = mark or HandledMark(update_.update_id)
        try:
            if mark.recovered:
                await self._recovery_turn.acquire()
                mark.on_settled = partial(self._recovery_settled, mark.update_id)
                await self._count_recovery(mark.update_id)
            await self.dispatcher.feed_update(self.bot, update_, inbox_mark=mark, resume=mark.resume)
        except Exception:
            # The handler's own transaction rolled back; what it did commit stays. Not retried: the same
            # update would fail the same way, and the user's next message starts afresh.
            log.exception("update %s failed", update_.update_id)
        finally:
            mark.settled()
        (self._refused if mark.refused else self._finished).append(mark.update_id)
        self._marks_due.set()

    async def _write_marks(self, session: AsyncSession) -> None:
        if self._finished:
            ids, self._finished = self._finished, []
            await session.execute(_MARK_FINISHED, {"ids": ids, "now": self.clock()})
        if self._refused:
            ids, self._refused = self._refused, []
            await session.execute(_MARK_HANDLED, {"ids": ids, "now": self.clock()})
            self._to_reprompt.update(ids)

    async def write_marks(self) -> None:
        """Write "answered" for updates whose handling ended, and "handled" for those that made no commit of their
        own (a reply, a read)."""
        async with self.sessions() as session, session.begin():
            await self._write_marks(session)

    async def wait_for_room(self) -> None:
        """Until fewer than ``max_backlog`` updates wait to be handled: a receiver slows down meanwhile."""
        await self._room.wait()

    async def keep_marking(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._marks_due.wait()
            self._marks_due.clear()
            await asyncio.sleep(0.05)  # gather the marks of a burst into one transaction
            try:
                await self.write_marks()
            except Exception:
                log.exception("could not mark updates handled; they will be handled again after a restart")

    async def drain(self, seconds: float) -> None:
        """Wait (at most this long) until everything queued has been handled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)

    # --- polling ----------------------------------------------------------------------------------------

    async def poll(self, stop: asyncio.Event, polling_timeout: int = 10) -> None:
        """Long polling until ``stop``: record each batch, then confirm it with the next request."""
        chores = [asyncio.create_task(self.keep_marking(stop)), asyncio.create_task(self.keep_reprompting(stop))]
        backoff = Backoff(BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1))
        request = GetUpdates(timeout=polling_timeout, allowed_updates=self.dispatcher.resolve_used_update_types())
        request_timeout = int((self.bot.session.timeout or 60) + polling_timeout)
        last_forget = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                await self.wait_for_room()
                if loop.time() - last_forget > 3600:
                    await self.forget_old()
                    last_forget = loop.time()
                try:
                    updates = await self.bot(request, request_timeout=request_timeout)
                    fresh = await self.record(updates)
                except (TelegramNetworkError, TelegramServerError, OSError) as error:
                    log.warning("getUpdates failed (%s); again in %.0f s", error, backoff.next_delay)
                    await backoff.asleep()
                    continue
                except Exception:
                    # The database may be down: nothing was confirmed, so Telegram will send it all again.
                    log.exception("could not record updates; again in %.0f s", backoff.next_delay)
                    await backoff.asleep()
                    continue
                backoff.reset()
                if updates:
                    request.offset = updates[-1].update_id + 1
                for fresh_update in fresh:
                    self.submit(fresh_update)
        finally:
            for chore in chores:
                chore.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chore
