"""Fifty report wizards at once on PostgreSQL, wizard state in the database and in Redis: every report is filed,
every resident is told its number, every wizard ends, and no transaction deadlocks.

One bot process on PostgreSQL without Redis is a supported setup, and there every update's commits also write
wizard state (storage/fsm.py). When each commit wrote every pending state of the process, two commits locked
``fsm_states`` rows in opposite orders: this test then lost 6 to 10 of the 50 reports to "deadlock detected".
The engine's default pool (15 connections) is enough to keep that many transactions in flight at once.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import TelegramMethod
from redis.asyncio import Redis
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import PG_CONNECTIONS, SessionFactory
from storage.models import FsmRecord, Ticket
from tests.conftest import FakeClock, require_redis
from tests.fake_telegram import BOT_ID, sent_to
from tests.harness import Harness, Person
from tests.test_report_flow import texts

WIZARDS = 50
FIRST_RESIDENT = 930_000

pytestmark = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)


def description_of(resident: Person) -> str:
    return f"{resident.id}号住户：2单元门口的路灯坏了"


async def whole_report(resident: Person) -> str:
    """From the building's QR code to Submit; what the bot answered the Submit with.

    Only what was sent to this resident counts: the bot answers the others meanwhile.
    """

    def mine(requests: list[TelegramMethod[Any]]) -> list[TelegramMethod[Any]]:
        return sent_to(requests, resident.id)

    answer = mine(await resident.send("/start jsx_yinba_1"))
    await resident.tap(answer, "2")
    answer = mine(await resident.send("/report"))
    await resident.tap(answer, "路灯")
    await resident.send(description_of(resident))
    summary = mine(await resident.send("✅ 完成"))
    return texts(mine(await resident.tap(summary, "提交")))


async def all_at_once(harness: Harness) -> dict[str, Any]:
    """Run the wizards together; what went wrong, counted by kind."""
    residents = [harness.person(FIRST_RESIDENT + n) for n in range(WIZARDS)]
    answers = await asyncio.gather(*(whole_report(r) for r in residents), return_exceptions=True)

    async with harness.sessions() as session:
        tickets = list(await session.scalars(select(Ticket)))
    filed = {t.reporter_id: t for t in tickets}

    def told(resident: Person, answer: str | BaseException) -> bool:
        number = re.search(r"已提交！.*工单 #(\d+)", str(answer))
        return number is not None and resident.id in filed and int(number.group(1)) == filed[resident.id].id

    storage = harness.app.dispatcher.storage
    left_open = [
        r.id for r in residents if await storage.get_state(StorageKey(bot_id=BOT_ID, chat_id=r.id, user_id=r.id))
    ]
    return {
        "errors": Counter(repr(a) for a in answers if isinstance(a, BaseException)),
        "tickets": len(tickets),
        "residents without a ticket": sum(r.id not in filed for r in residents),
        "wrong descriptions": sum(r.id in filed and filed[r.id].description != description_of(r) for r in residents),
        "residents not told their ticket": sum(not told(r, a) for r, a in zip(residents, answers, strict=True)),
        "wizards left open": len(left_open),
    }


ALL_WELL = {
    "errors": Counter(),
    "tickets": WIZARDS,
    "residents without a ticket": 0,
    "wrong descriptions": 0,
    "residents not told their ticket": 0,
    "wizards left open": 0,
}


async def test_fifty_wizards_at_once_with_wizard_state_in_the_database(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    assert await all_at_once(Harness(session_factory, clock)) == ALL_WELL
    # What a restarted process would read: the table must hold no open wizard either.
    async with session_factory() as session:
        assert len(list(await session.scalars(select(FsmRecord.key)))) == 0, "wizards left open in the table"


async def test_fifty_wizards_at_once_with_wizard_state_in_redis(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    url = require_redis()
    redis = Redis.from_url(url)
    await redis.flushdb()
    try:
        assert await all_at_once(Harness(session_factory, clock, redis_url=url)) == ALL_WELL
    finally:
        await redis.flushdb()
        await redis.aclose()


async def test_bursts_of_updates_reuse_the_connections_they_opened(
    session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    """Twice as many transactions at once as the pool holds, burst after burst: each waits for a connection, and
    no connection is closed between bursts (a new one is a new server process that prepares every statement
    again)."""
    opened: list[object] = []
    event.listen(engine.sync_engine.pool, "connect", lambda *_: opened.append(object()))

    async def read() -> None:
        async with session_factory() as session, session.begin():
            await session.execute(text("SELECT pg_sleep(0.01)"))

    for _burst in range(3):
        await asyncio.gather(*(read() for _ in range(2 * PG_CONNECTIONS)))
    assert 0 < len(opened) <= PG_CONNECTIONS
