"""Pacing sends: at most so many a second in all (:class:`TokenBucket`), one a second into a chat
(:class:`ChatPacer`). Free of aiogram: the hand-over paces with them before aiogram is loaded (handover.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

Sleep = Callable[[float], Awaitable[None]]

# Passing faults (5xx, network) are retried at most this many seconds apart.
MAX_BACKOFF = 60.0


def backoff(attempts: int, cap: float = MAX_BACKOFF) -> timedelta:
    """How long a message waits after its ``attempts``-th try met a passing fault: doubling, capped."""
    return timedelta(seconds=min(cap, 2**attempts))


# How late an event loop wakes a sleeper on an ordinary day; a turn woken later than that (and ``catch_up``) was
# missed by a stall of this process.
ORDINARY_LATENESS = 0.01


class TokenBucket:
    """Spaces calls to at most ``rate`` per second; a 429 pauses everyone.

    Slots missed in the last ``catch_up`` seconds (while the sender was busy claiming its next batch, say)
    may still be used, so a short stall costs no throughput; Telegram counts its limit over about a second.
    """

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        catch_up: float = 0.0,
    ) -> None:
        self.interval = 1.0 / rate
        self.catch_up = catch_up
        self._monotonic = monotonic
        self._sleep = sleep
        self._next_slot = monotonic()
        self._pauses = 0
        self._paused_until = -math.inf

    async def take(self) -> None:
        while True:
            now = self._monotonic()
            slot = max(now - self.catch_up, self._next_slot)
            self._next_slot = slot + self.interval
            if slot <= now:
                return
            pauses = self._pauses
            await self._sleep(slot - now)
            # A turn is given up, and asked for again, when a 429 came while it waited (it goes behind the pause),
            # or when this process woke too late for it (a busy machine): the turns of a stall must not all go at
            # once, only ``catch_up``'s worth.
            if self._pauses == pauses and self._monotonic() - slot <= self.catch_up + ORDINARY_LATENESS:
                return

    async def pause(self, seconds: float) -> None:
        self._pauses += 1
        self._paused_until = max(self._paused_until, self._monotonic() + seconds)
        self._next_slot = max(self._next_slot, self._paused_until)

    async def resumed(self) -> None:
        """Wait out the pause in force, if any, without taking a turn."""
        while (left := self._paused_until - self._monotonic()) > 0:
            await self._sleep(left)


class ChatPacer:
    """Spaces messages into one chat at least ``interval`` seconds apart.

    Turns are reserved in the order they are asked for, so replies waiting for the same chat go out one by
    one rather than all at once when a wait ends, and one instance can serve several writers into the same
    chats: the bot's direct replies and its outbox sender share one.
    """

    def __init__(
        self, interval: float, monotonic: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.interval = interval
        self._monotonic = monotonic
        self._sleep = sleep
        self._next_turn: dict[int | str, float] = {}

    async def wait_turn(self, chat_id: int | str) -> None:
        now = self._monotonic()
        turn = max(now, self._next_turn.get(chat_id, now))
        self._next_turn[chat_id] = turn + self.interval
        if len(self._next_turn) > 10_000:
            # Chats whose next turn has come impose nothing: forgetting them keeps memory to the busy ones.
            self._next_turn = {chat: at for chat, at in self._next_turn.items() if at > now}
        if turn > now:
            await self._sleep(turn - now)
