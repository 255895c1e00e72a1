"""The send rate shared through Redis: two bot processes together keep to one bot's limit."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.outbound.shared_rate import RETRY_REDIS, RedisTokenBucket
from tests.conftest import require_redis

_keys = itertools.count()


@pytest.fixture
async def redis() -> Redis:
    client = Redis.from_url(require_redis())
    yield client
    await client.aclose()


class Waits:
    """Records how long each take was told to wait, without waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_two_processes_share_one_rate(redis: Redis) -> None:
    key = f"test:send-slot:{next(_keys)}"
    waits = Waits()
    # Two senders, as two processes of one bot would have, at 20 messages/s between them.
    first, second = (RedisTokenBucket(redis, key, rate=20, sleep=waits) for _ in range(2))
    for _ in range(5):
        await first.take()
        await second.take()
    # Nobody really slept, so the ten slots were reserved back to back, 50 ms apart, whichever process asked:
    # the first went at once, the others were told to wait about 50 ms, 100 ms, … 450 ms.
    assert len(waits.seconds) == 9 and waits.seconds == sorted(waits.seconds)
    assert 0.40 <= waits.seconds[-1] <= 0.46, waits.seconds
    await redis.delete(key)


async def test_a_429_seen_by_one_process_pauses_the_other(redis: Redis) -> None:
    key = f"test:send-slot:{next(_keys)}"
    waits = Waits()
    seen_429, other = (RedisTokenBucket(redis, key, rate=20, sleep=waits) for _ in range(2))
    await seen_429.pause(3)
    await other.take()
    assert 2.9 <= waits.seconds[-1] <= 3.0
    await redis.delete(key)


async def test_without_redis_the_process_paces_itself() -> None:
    waits = Waits()
    unreachable = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    now = [100.0]
    bucket = RedisTokenBucket(unreachable, "test:send-slot:down", rate=10, sleep=waits, monotonic=lambda: now[0])
    asked = []
    script = bucket._script

    async def counting_script(**kwargs: object) -> object:
        asked.append(now[0])
        return await script(**kwargs)

    bucket._script = counting_script  # type: ignore[assignment]
    for _ in range(3):
        await bucket.take()
    # The local bucket spaced them 100 ms apart (no time passed), and Redis was asked only for the first.
    assert waits.seconds == pytest.approx([0.1, 0.2])
    assert asked == [100.0]
    now[0] += RETRY_REDIS
    await bucket.take()
    assert asked == [100.0, 100.0 + RETRY_REDIS]
    await unreachable.aclose()
