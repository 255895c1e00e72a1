"""Delivering the outbox: rate-limited, honouring Telegram's answers, each row sent at most once.

A row goes pending → claimed (a batch, committed) → sending (committed just before the request) → sent or
failed, or back to pending with a later ``not_before`` when Telegram asks us to wait or has a passing fault.
When a sender process dies, its claimed rows were never tried and are given back after ``stale_claim``, so
nothing is lost; a row it left "sending" may or may not have reached Telegram, and is marked failed rather
than sent again, so nothing is doubled. That window is one request per chat being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.notices import Renderer
from domain.clock import Clock
from storage.db import SessionFactory
from storage.models import OutboxMessage, OutboxStatus, User

log = logging.getLogger(__name__)


class SendRate(Protocol):
    """Where the sender waits for its turn: this process's bucket, or one shared by all (bot/shared_rate.py)."""

    async def take(self) -> None: ...

    async def pause(self, seconds: float) -> None: ...


class TokenBucket:
    """Spaces calls to at most ``rate`` per second; a 429 pauses everyone.

    Slots missed in the last ``catch_up`` seconds (while the sender was busy claiming its next batch, say)
    may still be used, so a short stall costs no throughput; Telegram counts its limit over about a second.
    """

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        catch_up: float = 0.0,
    ) -> None:
        self.interval = 1.0 / rate
        self.catch_up = catch_up
        self._monotonic = monotonic
        self._sleep = sleep
        self._next_slot = monotonic()

    async def take(self) -> None:
        now = self._monotonic()
        slot = max(now - self.catch_up, self._next_slot)
        self._next_slot = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)

    async def pause(self, seconds: float) -> None:
        self._next_slot = max(self._next_slot, self._monotonic() + seconds)


@dataclass(frozen=True)
class SenderSettings:
    rate_per_second: float = 25.0
    chat_interval: float = 1.0  # Telegram allows about one message per second into one chat
    catch_up: float = 0.05  # seconds of missed sending slots that may still be used (see TokenBucket)
    batch_size: int = 100
    max_attempts: int = 8
    stale_claim: timedelta = timedelta(minutes=5)
    idle_poll_seconds: float = 1.0


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
    ) -> None:
        self.bot = bot
        self.sessions = session_factory
        self.renderer = renderer
        self.clock = clock
        self.settings = settings or SenderSettings()
        self.bucket = rate or TokenBucket(self.settings.rate_per_second, monotonic, sleep, self.settings.catch_up)
        self._monotonic = monotonic
        self._sleep = sleep
        self._last_sent_to: dict[int, float] = {}
        # Rows Telegram accepted whose "sent" is not written yet: it rides along with the next commit the
        # sender makes anyway, so a message costs one transaction, not two.
        self._delivered: list[int] = []
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        last_release = float("-inf")
        while not stop.is_set():
            try:
                # Rows another process claimed and then died with are given back while we run, not only at start.
                if self._monotonic() - last_release >= 60:
                    await self.release_stale_claims()
                    last_release = self._monotonic()
                delivered = await self.deliver_due()
            except Exception:  # the loop must outlive a database hiccup
                log.exception("outbox delivery round failed")
                delivered = 0
            if delivered:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.idle_poll_seconds)

    async def release_stale_claims(self) -> int:
        """Give back what a dead sender claimed but never tried; returns how many rows were given back."""
        cutoff = self.clock() - self.settings.stale_claim
        stale = OutboxMessage.claimed_at < cutoff
        async with self.sessions() as session, session.begin():
            released = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.status == OutboxStatus.CLAIMED, stale)
                .values(status=OutboxStatus.PENDING)
            )
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.status == OutboxStatus.SENDING, stale)
                .values(status=OutboxStatus.FAILED, error="interrupted while sending; not repeated")
            )
        return int(getattr(released, "rowcount", 0) or 0)

    async def deliver_due(self) -> int:
        """Send every row that is due now; returns how many rows were handled."""
        rows = await self._claim()
        by_chat: dict[int, list[OutboxMessage]] = defaultdict(list)
        for row in rows:
            by_chat[row.chat_id].append(row)
        try:
            await asyncio.gather(*(self._deliver_chat(chat_id, chat_rows) for chat_id, chat_rows in by_chat.items()))
        finally:
            if self._delivered:
                async with self.sessions() as session, session.begin():
                    await self._record_delivered(session)
        return len(rows)

    async def _claim(self) -> list[OutboxMessage]:
        now = self.clock()
        async with self.sessions() as session, session.begin():
            rows = list(
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.not_before <= now)
                    # A worker's card must not wait behind ten thousand agenda messages.
                    .order_by(OutboxMessage.priority, OutboxMessage.id)
                    .limit(self.settings.batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            for row in rows:
                row.status, row.claimed_at = OutboxStatus.CLAIMED, now
        return rows

    async def _deliver_chat(self, chat_id: int, rows: list[OutboxMessage]) -> None:
        """One chat's rows in order, one at a time, at Telegram's per-chat pace."""
        for index, row in enumerate(rows):
            outcome = await self._deliver(row)
            if outcome is not OutboxStatus.SENT and outcome is not None:
                # The chat is blocked or asked us to wait: the rest of its rows share that fate.
                await self._finish(rows[index + 1 :], outcome, row.not_before, row.error)
                return

    async def _deliver(self, row: OutboxMessage) -> OutboxStatus | None:
        """Send one row and record the result; returns a status the chat's later rows must share, if any."""
        await self._pace(row.chat_id)
        async with self.sessions() as session, session.begin():
            await self._record_delivered(session)
            recipient = await session.get(User, row.chat_id)
            if recipient is not None and recipient.unreachable_at is not None:
                method = None
                row.error = "recipient blocked the bot"
            else:
                method = await self.renderer.render(session, row)
            if method is not None:
                await session.execute(
                    update(OutboxMessage).where(OutboxMessage.id == row.id).values(status=OutboxStatus.SENDING)
                )
        if method is None:
            await self._finish([row], OutboxStatus.FAILED if row.error else OutboxStatus.SENT, None, row.error)
            return None

        now = self.clock()
        try:
            await self.bot(method)
        except TelegramRetryAfter as error:
            await self.bucket.pause(error.retry_after)
            await self._finish([row], OutboxStatus.PENDING, now + timedelta(seconds=error.retry_after), "429")
            return OutboxStatus.PENDING
        except TelegramForbiddenError as error:
            await self._mark_unreachable(row.chat_id)
            await self._finish([row], OutboxStatus.FAILED, None, f"403: {error.message}")
            return OutboxStatus.FAILED
        except TelegramBadRequest as error:
            await self._finish([row], OutboxStatus.FAILED, None, f"400: {error.message}")
            return None
        except (TelegramServerError, TelegramNetworkError) as error:
            attempts = row.attempts + 1
            if attempts >= self.settings.max_attempts:
                await self._finish([row], OutboxStatus.FAILED, None, f"gave up: {error}", attempts)
                return None
            retry_at = now + timedelta(seconds=min(300, 2**attempts))
            await self._finish([row], OutboxStatus.PENDING, retry_at, str(error), attempts)
            return OutboxStatus.PENDING
        except Exception as error:
            log.exception("outbox row %s could not be sent", row.id)
            await self._finish([row], OutboxStatus.FAILED, None, f"error: {error!r}")
            return None
        self._delivered.append(row.id)
        row.status, row.error = OutboxStatus.SENT, ""
        return OutboxStatus.SENT

    async def _record_delivered(self, session: AsyncSession) -> None:
        """Write "sent" for the rows Telegram accepted since the last commit, as part of ``session``'s.

        Should that commit fail, the rows stay "sending" and are later marked failed, never sent twice.
        """
        if not self._delivered:
            return
        delivered, self._delivered = self._delivered, []
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(delivered))
            .values(status=OutboxStatus.SENT, sent_at=self.clock(), error="")
        )

    async def _pace(self, chat_id: int) -> None:
        last = self._last_sent_to.get(chat_id)
        if last is not None:
            wait = last + self.settings.chat_interval - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
        await self.bucket.take()
        self._last_sent_to[chat_id] = self._monotonic()

    async def _finish(
        self,
        rows: list[OutboxMessage],
        status: OutboxStatus,
        not_before: object,
        error: str,
        attempts: int | None = None,
    ) -> None:
        if not rows:
            return
        now = self.clock()
        values: dict[str, object] = {"status": status, "error": error}
        if status is OutboxStatus.SENT:
            values["sent_at"] = now
        if not_before is not None and status is OutboxStatus.PENDING:
            values["not_before"] = not_before
        if attempts is not None:
            values["attempts"] = attempts
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id.in_([r.id for r in rows])).values(**values)
            )
        for row in rows:
            row.status, row.error = status, error
            if not_before is not None and status is OutboxStatus.PENDING:
                row.not_before = not_before  # type: ignore[assignment]

    async def _mark_unreachable(self, chat_id: int) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == chat_id).values(unreachable_at=self.clock()))
