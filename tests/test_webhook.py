"""Webhook mode in one process: the secret is checked, an update is answered 200 only once recorded, a duplicate
is handled once, a database that does not answer gets 503 (Telegram posts again), and /healthz tells the truth."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import Update
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from sqlalchemy import func, select

from bench.fake_api import FakeBotAPI
from bot.intake import UpdateInbox
from bot.webhook import Health, RecordingRequestHandler
from domain.clock import Clock
from domain.outbox import Notice, enqueue
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.models import InboundUpdate, SenderLease, Ticket
from tests.conftest import FakeClock, require_redis
from tests.harness import Harness
from tests.processes import clean_environment
from tests.test_intake import up_to_submit
from tests.test_several_processes import Someone, _async, free_port, read, start_bot, until

SECRET = "s3cret-token_for-tests"
HEADER = "X-Telegram-Bot-Api-Secret-Token"

Serve = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve the webhook handler and /healthz of an inbox; returns a test client."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(harness: Harness, sessions: SessionFactory, clock: Clock, redis: Redis | None = None) -> Any:
        inbox = UpdateInbox(harness.bot, harness.app.dispatcher, sessions, clock, holder="test-process")
        app = web.Application()
        RecordingRequestHandler(inbox, harness.app.dispatcher, harness.bot, SECRET).register(app, path="/tg")
        app.router.add_get("/healthz", Health(sessions, clock, redis).handle)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client, inbox

    yield start
    for client in clients:
        await client.close()


def body(update: Update) -> dict[str, Any]:
    return update.model_dump(mode="json", exclude_unset=True, by_alias=True)


async def count(sessions: SessionFactory, what: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(what)) or 0)


async def test_a_post_without_the_secret_is_refused_and_not_recorded(
    harness: Harness, clock: FakeClock, serve: Serve
) -> None:
    client, _inbox = await serve(harness, harness.sessions, clock)
    submit = await up_to_submit(harness, 900500, "单元门禁坏了")
    for headers in ({}, {HEADER: "wrong"}):
        answer = await client.post("/tg", json=body(submit), headers=headers)
        assert answer.status == 401
    assert await count(harness.sessions, InboundUpdate) == 0
    assert await count(harness.sessions, Ticket) == 0


async def test_an_update_is_recorded_before_200_and_handled_once_however_often_it_comes(
    harness: Harness, clock: FakeClock, serve: Serve
) -> None:
    client, inbox = await serve(harness, harness.sessions, clock)
    submit = await up_to_submit(harness, 900501, "楼道灯不亮")
    answer = await client.post("/tg", json=body(submit), headers={HEADER: SECRET})
    assert answer.status == 200
    async with harness.sessions() as session:
        row = await session.get(InboundUpdate, submit.update_id)
        assert row is not None and row.received_by == "test-process", "recorded, under this process's name"
    for _ in range(2):  # Telegram did not see the 200 and posts it again
        again = await client.post("/tg", json=body(submit), headers={HEADER: SECRET})
        assert again.status == 200
    await inbox.drain(seconds=10)
    await inbox.write_marks()
    async with harness.sessions() as session:
        filed = list(await session.scalars(select(Ticket).where(Ticket.description == "楼道灯不亮")))
        row = await session.get(InboundUpdate, submit.update_id)
    assert len(filed) == 1
    assert row is not None and row.handled_at is not None
    told = [r for r in harness.telegram.accepted if getattr(r, "chat_id", None) == 900501]
    assert [t for t in told if f"#{filed[0].id}" in str(getattr(t, "text", ""))], "the resident was answered"


async def test_a_database_that_does_not_answer_gets_503_so_telegram_posts_again(
    harness: Harness, clock: FakeClock, serve: Serve
) -> None:
    nowhere = create_engine("postgresql+asyncpg://bot@127.0.0.1:9/nothing")
    try:
        client, _inbox = await serve(harness, create_session_factory(nowhere), clock)
        submit = await up_to_submit(harness, 900502, "水管漏水")
        answer = await client.post("/tg", json=body(submit), headers={HEADER: SECRET})
        assert answer.status == 503
        health = await client.get("/healthz")
        assert health.status == 503
        report = await health.json()
        assert report["status"] == "failing" and report["database"].startswith("error")
    finally:
        await nowhere.dispose()
    assert await count(harness.sessions, Ticket) == 0, "nothing was handled that was not recorded"


async def test_healthz_reports_the_database_redis_and_the_outbox(
    harness: Harness, clock: FakeClock, serve: Serve
) -> None:
    redis = Redis.from_url(require_redis())
    try:
        client, _inbox = await serve(harness, harness.sessions, clock, redis)
        async with harness.sessions() as session, session.begin():
            for chat in (1, 2, 3):
                enqueue(session, chat, Notice.TOPIC_CANDIDATE, clock(), topic_id=1)
        clock.advance(seconds=90)
        answer = await client.get("/healthz")
        assert answer.status == 200
        assert await answer.json() == {
            "database": "ok",
            "redis": "ok",
            "outbox": {"due": 3, "oldest_due_seconds": 90.0},
            "status": "ok",
        }
    finally:
        await redis.aclose()


async def test_another_process_takes_over_only_the_updates_of_a_process_whose_lease_lapsed(
    harness: Harness, clock: FakeClock
) -> None:
    alive_submit = await up_to_submit(harness, 900503, "电梯异响")
    dead_submit = await up_to_submit(harness, 900504, "楼顶堆放建筑垃圾")
    async with harness.sessions() as session, session.begin():
        session.add(SenderLease(holder="alive", expires_at=clock() + timedelta(seconds=10)))
        session.add(SenderLease(holder="dead", expires_at=clock() - timedelta(seconds=1)))
        for other in ("other1", "other2"):  # the processes looking, alive too
            session.add(SenderLease(holder=other, expires_at=clock() + timedelta(seconds=10)))
    alive = UpdateInbox(harness.bot, harness.app.dispatcher, harness.sessions, clock, holder="alive")
    dead = UpdateInbox(harness.bot, harness.app.dispatcher, harness.sessions, clock, holder="dead")
    await alive.record([alive_submit])  # being handled by a live process: not to be touched
    await dead.record([dead_submit])  # recorded by a process that died before handling it

    others = [
        UpdateInbox(harness.bot, harness.app.dispatcher, harness.sessions, clock, holder=f"other{n}") for n in (1, 2)
    ]
    taken = await asyncio.gather(*(inbox.recover(everyone=False) for inbox in others))
    assert sorted(taken) == [0, 1], "one of them takes it, once"
    for inbox in others:
        await inbox.drain(seconds=10)
    async with harness.sessions() as session:
        described = list(await session.scalars(select(Ticket.description)))
        still_alive = await session.get(InboundUpdate, alive_submit.update_id)
    assert described == ["楼顶堆放建筑垃圾"], "the dead process's Submit filed its ticket; the live one's is left"
    assert still_alive is not None and still_alive.received_by == "alive" and still_alive.handled_at is None


def test_a_port_that_cannot_be_had_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bot"],
            cwd=tmp_path,
            env=clean_environment(
                BOT_TOKEN="123456:TEST",
                COMMUNITY_FILE="",
                TELEGRAM_API_SERVER="http://127.0.0.1:9",
                WEBHOOK_URL="http://127.0.0.1:9/tg",
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_LISTEN_PORT=str(port),
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"WEBHOOK_LISTEN_HOST=127.0.0.1 WEBHOOK_LISTEN_PORT={port}: cannot listen there")
    ), result.stderr


async def test_one_webhook_process_on_sqlite_answers_and_deletes_its_webhook_at_stop_if_asked(
    tmp_path: Path,
) -> None:
    fake = FakeBotAPI(4343, username="single_bot")
    api = await fake.start()
    port = free_port()
    log = (tmp_path / "bot.log").open("w+", encoding="utf-8")
    environment = clean_environment(
        BOT_TOKEN="4343:SINGLE",
        COMMUNITY_FILE="",
        TELEGRAM_API_SERVER=api,
        WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_LISTEN_PORT=str(port),
        WEBHOOK_DELETE_ON_STOP="true",
    )
    bot = start_bot(tmp_path, environment, log)
    try:
        await until(_async(lambda: fake.webhook is not None), "the webhook to be registered")
        assert fake.webhook == (f"http://127.0.0.1:{port}/hook", SECRET)
        someone = Someone(fake, 900600)
        at = someone.send("/help")
        await someone.sees(lambda message: "/report" in message.text, at)
    finally:
        bot.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(bot.wait, 60)  # the fake Bot API answers its deleteWebhook meanwhile
        await fake.stop()
    assert code == 0, read(log)
    assert fake.webhook is None, "deleted at stop, as WEBHOOK_DELETE_ON_STOP asked"
    assert "WARNING bot.app: webhook mode without REDIS_URL: run only this one process" in read(log)
