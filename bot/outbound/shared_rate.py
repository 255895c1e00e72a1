"""The send rate shared by every bot process: Telegram's limit is per bot, not per process.

The next free sending slot lives in Redis and is reserved by one Lua script on Redis' own clock, so N
processes together keep to ``rate`` messages a second, and a 429 seen by one pauses them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.outbound.pacing import TokenBucket

log = logging.getLogger(__name__)

RETRY_REDIS = 30  # seconds of pacing alone after Redis failed, before it is asked again

# KEYS[1] holds the next free slot in microseconds of Redis' clock. ARGV[1] is the spacing of slots; a
# non-zero ARGV[2] is a pause instead: no slot before now + ARGV[2]. Returns the microseconds to wait.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_slot = tonumber(redis.call('GET', KEYS[1]) or '0')
local pause = tonumber(ARGV[2])
if pause > 0 then
    if now + pause > next_slot then
        redis.call('SET', KEYS[1], string.format('%.0f', now + pause), 'PX', math.floor(pause / 1000) + 60000)
    end
    return 0
end
local slot = math.max(now, next_slot)
redis.call('SET', KEYS[1], string.format('%.0f', slot + tonumber(ARGV[1])), 'PX', 60000)
return string.format('%.0f', slot - now)
"""


class RedisTokenBucket:
    """Spaces sends of all processes of one bot to ``rate`` a second; falls back to this process alone."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.interval_us = round(1_000_000 / rate)
        self._sleep = sleep
        self._script = redis.register_script(_RESERVE)
        # If Redis is briefly away, messages still go out at this process's share rather than not at all.
        # Not asked again for a while after a failure, so a Redis outage costs one connection timeout, not
        # one per message.
        self._local = TokenBucket(rate, monotonic=monotonic, sleep=sleep)
        self._monotonic = monotonic
        self._redis_again_at = float("-inf")

    async def take(self) -> None:
        if self._monotonic() < self._redis_again_at:
            await self._local.take()
            return
        try:
            wait_us = int(await self._script(keys=[self.key], args=[self.interval_us, 0]))
        except RedisError as error:
            log.warning("shared send rate unavailable, pacing this process alone for %ss: %s", RETRY_REDIS, error)
            self._redis_again_at = self._monotonic() + RETRY_REDIS
            await self._local.take()
            return
        if wait_us > 0:
            await self._sleep(wait_us / 1_000_000)

    async def resumed(self) -> None:
        await self._local.resumed()  # this process's pauses: another's 429 shows only in the next slot

    async def pause(self, seconds: float) -> None:
        await self._local.pause(seconds)
        try:
            await self._script(keys=[self.key], args=[self.interval_us, max(1, round(seconds * 1_000_000))])
        except RedisError as error:
            log.warning("could not share a 429 pause through Redis: %s", error)
