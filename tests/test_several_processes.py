"""Several processes: two real ``python -m bot`` in webhook mode behind a round-robin HTTP proxy on loopback, on
PostgreSQL and Redis, with the fake Bot API posting updates as Telegram does. A resident's report goes all the way
to its resolution, staff send the agenda now, every resident gets it once, and no scheduled run happens twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp import ClientError, ClientSession, web
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.fake_api import BotMessage, FakeBotAPI
from bench.residents import add_residents
from bot.callbacks import BroadcastAction, BroadcastCb, TicketAction, TicketCb
from domain.community_file import building_links
from scheduler.jobs import claim_slot, slot_of
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.models import OutboxMessage, OutboxStatus, ScheduledRun, Ticket, TicketStatus
from tests.conftest import FakeClock, require_postgresql, require_redis
from tests.processes import clean_environment
from tests.test_migrations import drop_everything

ROOT = Path(__file__).resolve().parent.parent
BOT_ID = 5151
SECRET = "several-processes-secret"
RESIDENT, STAFF = 9_300_001, 100001
SILENT_FROM, SILENT = 8_300_000, 40
REPORT, DONE, SUBMIT = "📝 Report a problem", "✅ Done", "📨 Submit"
WAIT = 90.0  # seconds any one step may take on a loaded 2-core machine


async def test_one_run_per_slot_when_two_processes_ask_at_once(engine: AsyncEngine, clock: FakeClock) -> None:
    other = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        slot = slot_of(clock())
        runs = await asyncio.gather(
            *(
                claim_slot(create_session_factory(each), "deadline-sweep", slot)
                for each in (engine, other, engine, other)
            )
        )
        assert sorted(runs) == [False, False, False, True]
        assert await claim_slot(create_session_factory(other), "deadline-sweep", slot_of(clock.now.replace(minute=31)))
    finally:
        await other.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RoundRobin:
    """A load balancer: each request goes to the next process in turn."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.turn = itertools.count()
        self.answered: Counter[tuple[str, int]] = Counter()  # (backend, status)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None

    async def start(self) -> None:
        self._client = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._client is not None
        backend = self.backends[next(self.turn) % len(self.backends)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            async with self._client.request(
                request.method, backend + request.path_qs, data=await request.read(), headers=headers
            ) as answer:
                body = await answer.read()
                self.answered[(backend, answer.status)] += 1
                return web.Response(status=answer.status, body=body, content_type=answer.content_type)
        except ClientError:
            self.answered[(backend, 502)] += 1
            return web.Response(status=502)


class Someone:
    """A Telegram user of the fake Bot API (English client): sends, presses, and waits for the bot's answer."""

    def __init__(self, fake: FakeBotAPI, user_id: int) -> None:
        self.fake = fake
        self.id = user_id
        self.user = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}", "language_code": "en"}

    def send(self, text: str) -> float:
        message: dict[str, Any] = {
            "message_id": self.fake.next_message_id(self.id),
            "date": int(time.time()),
            "chat": {"id": self.id, "type": "private", "first_name": self.user["first_name"]},
            "from": self.user,
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self._push({"message": message})

    def press(self, message: BotMessage, data: str) -> float:
        query = {
            "id": f"q{self.id}-{time.monotonic_ns()}",
            "from": self.user,
            "chat_instance": f"ci{self.id}",
            "data": data,
            "message": message.as_telegram(self.fake.bot_user),
        }
        return self._push({"callback_query": query})

    def _push(self, body: dict[str, Any]) -> float:
        at = time.time()
        self.fake.push_update(body)
        return at

    async def sees(self, wanted: Callable[[BotMessage], bool], since: float = 0.0) -> BotMessage:
        """The bot's newest message in this chat, sent or changed after ``since``, that is ``wanted``."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for message in reversed(self.fake.latest(self.id)):
                if message.changed_at >= since and wanted(message):
                    return message
            await asyncio.sleep(0.1)
        said = [m.text[:80] for m in self.fake.latest(self.id)]
        raise AssertionError(f"user {self.id} never saw what was expected; the chat: {said}")


def has_button(data: str) -> Callable[[BotMessage], bool]:
    return lambda message: data in [d for _, d in message.inline_buttons]


def says(text: str) -> Callable[[BotMessage], bool]:
    return lambda message: text in message.text


def offers(label: str) -> Callable[[BotMessage], bool]:
    return lambda message: label in message.reply_buttons


async def until(check: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """An empty PostgreSQL database and an empty Redis database (the test's own)."""
    database, redis_url = require_postgresql(), require_redis()
    engine = create_engine(database)
    await drop_everything(engine)
    await engine.dispose()
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()
    yield database, redis_url


async def test_two_webhook_processes_behind_a_load_balancer(services: tuple[str, str], tmp_path: Path) -> None:
    database, redis_url = services
    fake = FakeBotAPI(BOT_ID, username="several_bot")
    api = await fake.start()
    ports = [free_port(), free_port()]
    balancer = RoundRobin([f"http://127.0.0.1:{port}" for port in ports])
    await balancer.start()
    logs: list[IO[str]] = []
    processes: list[subprocess.Popen[str]] = []
    engine = create_engine(database)
    sessions = create_session_factory(engine)
    try:
        for number, port in enumerate(ports):
            log = (tmp_path / f"bot{number}.log").open("w+", encoding="utf-8")
            logs.append(log)
            environment = clean_environment(
                BOT_TOKEN=f"{BOT_ID}:SEVERAL",
                TELEGRAM_API_SERVER=api,
                DATABASE_URL=database,
                REDIS_URL=redis_url,
                WEBHOOK_URL=f"http://127.0.0.1:{balancer.port}/telegram",
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_LISTEN_PORT=str(port),
                LOG_LEVEL="DEBUG",
            )
            # Both start at once on an empty database: migrations and the community import take turns.
            processes.append(start_bot(tmp_path, environment, log))
        await until(lambda: healthy(ports, processes, logs), "both processes to answer /healthz", 180)
        await until(_async(lambda: fake.webhook is not None), "the webhook to be registered")
        assert fake.webhook == (f"http://127.0.0.1:{balancer.port}/telegram", SECRET)

        async with sessions() as session, session.begin():
            await add_residents(session, SILENT_FROM, SILENT, datetime.now(UTC), english_every=1)
        async with sessions() as session:
            payload = (await building_links(session, None))[0].link_key

        ticket_id = await report_to_resolution(fake, sessions, payload)
        broadcast_text = await agenda_sent_now(fake, sessions)

        residents = [SILENT_FROM + n for n in range(SILENT)]
        for chat_id in residents:
            assert [m.text for m in fake.latest(chat_id)] == [broadcast_text], f"resident {chat_id}: once"
        assert [m.text for m in fake.latest(RESIDENT)].count(broadcast_text) == 1, "the reporter too: once"

        async with sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None and ticket.status == TicketStatus.RESOLVED
        for backend in balancer.backends:
            assert balancer.answered[(backend, 200)] > 3, f"both processes took updates: {balancer.answered}"
        assert not [status for (_, status) in balancer.answered if status != 200], balancer.answered
        assert all(record.posts[-1] == 200 for record in fake.updates.values()), "every update was taken"

        await until(lambda: all_sweeps_ran(sessions), "every sweep to run once")
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        # Waited for in a thread: the fake Bot API in this event loop must go on answering while they stop.
        codes = [await asyncio.to_thread(process.wait, 60) for process in processes]
        await balancer.stop()
        await fake.stop()
    text = [read(log) for log in logs]
    assert codes == [0, 0], text
    for one in text:
        assert "Traceback" not in one, one
    # Each minute's run of each sweep happened in one process, whichever asked first.
    runs = Counter(re.findall(r"(\S+): the run of (\S+) is this process's", "\n".join(text)))
    assert runs and max(runs.values()) == 1, runs
    async with sessions() as session:
        rows = {
            (job, slot.isoformat())
            for job, slot in (await session.execute(select(ScheduledRun.job, ScheduledRun.slot)))
        }
    await engine.dispose()
    assert rows == set(runs), "the database's record and the processes' logs agree"


def start_bot(cwd: Path, environment: dict[str, str], log: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bot"], cwd=cwd, env=environment, stderr=log, stdout=log, text=True)


def has_unit_buttons(message: BotMessage) -> bool:
    return any(d.startswith("p:u:") for _, d in message.inline_buttons)


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def run() -> bool:
        return check()

    return run


def read(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()


async def healthy(ports: list[int], processes: list[subprocess.Popen[str]], logs: list[IO[str]]) -> bool:
    for process, log in zip(processes, logs, strict=True):
        if process.poll() is not None:
            raise AssertionError(f"a bot process exited with {process.returncode}: {read(log)}")
    async with ClientSession() as client:
        for port in ports:
            try:
                async with client.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    if answer.status != 200:
                        return False
            except ClientError:
                return False
    return True


async def report_to_resolution(fake: FakeBotAPI, sessions: SessionFactory, payload: str) -> int:
    """A resident reports through the wizard; the worker accepts and resolves it; the resident is told."""
    resident = Someone(fake, RESIDENT)
    at = resident.send(f"/start {payload}")
    greeting = await resident.sees(
        lambda m: offers(REPORT)(m) or any(d.startswith("p:u:") for _, d in m.inline_buttons), at
    )
    units = [d for _, d in greeting.inline_buttons if d.startswith("p:u:")]
    if units:
        at = resident.press(greeting, units[0])
        await resident.sees(offers(REPORT), at)
    at = resident.send("/report")
    categories = await resident.sees(lambda m: any(d.startswith("c:") for _, d in m.inline_buttons), at)
    at = resident.press(categories, next(d for _, d in categories.inline_buttons if d.startswith("c:")))
    await resident.sees(lambda m: "describe the problem" in m.text.lower(), at)
    description = "[several] the stairwell light on the third floor is out"
    at = resident.send(description)
    await resident.sees(offers(DONE), at)
    at = resident.send(DONE)
    await resident.sees(offers(SUBMIT), at)
    at = resident.send(SUBMIT)

    async def filed() -> int | None:
        async with sessions() as session:
            return await session.scalar(select(Ticket.id).where(Ticket.description == description))

    ticket_id = int(await until(filed, "the ticket"))
    await resident.sees(says(f"#{ticket_id}"), at)

    accept = TicketCb(action=TicketAction.ACCEPT, ticket_id=ticket_id).pack()
    card = await until(_async(lambda: find_card(fake, accept)), "the worker's card")
    worker = Someone(fake, card.chat_id)
    resolve = TicketCb(action=TicketAction.RESOLVE, ticket_id=ticket_id).pack()
    at = worker.press(card, accept)
    accepted = await worker.sees(has_button(resolve), at)
    at = worker.press(accepted, resolve)
    await worker.sees(lambda m: f"#{ticket_id}" in m.text and "/cancel" in m.text, at)
    at = worker.send("replaced the bulb and the switch")
    await worker.sees(says("is resolved"), at)

    # The resident hears of it (whether they may answer "Is it fixed?" is the households' rule, not this test's).
    await resident.sees(says(f"#{ticket_id}"), at)

    async def resolved() -> bool:
        async with sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            return ticket is not None and ticket.status == TicketStatus.RESOLVED

    await until(resolved, "the ticket to be resolved")
    return ticket_id


def find_card(fake: FakeBotAPI, accept: str) -> BotMessage | None:
    for chat in list(fake.chats):
        for message in fake.latest(chat):
            if accept in [d for _, d in message.inline_buttons]:
                return message
    return None


async def agenda_sent_now(fake: FakeBotAPI, sessions: SessionFactory) -> str:
    """Staff press "Send it now" on the agenda; returns its text once every row is sent."""
    staff = Someone(fake, STAFF)
    send_now = BroadcastCb(action=BroadcastAction.SEND_NOW, kind="agenda").pack()
    preview = BroadcastCb(action=BroadcastAction.PREVIEW, kind="agenda").pack()
    at = staff.send("/broadcasts")
    menu = await staff.sees(lambda m: has_button(send_now)(m) or has_button(preview)(m), at)
    if send_now not in [d for _, d in menu.inline_buttons]:
        at = staff.press(menu, preview)
        menu = await staff.sees(has_button(send_now), at)
    at = staff.press(menu, send_now)
    await staff.sees(says("Queued for"), at)

    async def all_sent() -> bool:
        async with sessions() as session:
            left = await session.scalar(
                select(func.count(OutboxMessage.id)).where(
                    OutboxMessage.broadcast_id.is_not(None), OutboxMessage.status != OutboxStatus.SENT
                )
            )
            done = await session.scalar(
                select(func.count(OutboxMessage.id)).where(OutboxMessage.broadcast_id.is_not(None))
            )
        return left == 0 and bool(done)

    await until(all_sent, "the agenda to reach every resident")
    await asyncio.sleep(1)  # anything sent twice would arrive now
    return fake.latest(SILENT_FROM)[0].text


async def all_sweeps_ran(sessions: SessionFactory) -> bool:
    async with sessions() as session:
        jobs = set(await session.scalars(select(ScheduledRun.job)))
    return jobs >= {"deadline-sweep", "confirmation-sweep", "topic-candidates"}
