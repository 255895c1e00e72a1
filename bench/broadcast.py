"""Benchmark: one broadcast to 10,000 residents against a rate-limited fake Telegram, with a real kill half-way.

Telegram here is a fake Bot API server in this process (aiohttp on 127.0.0.1) that enforces a send limit
as a token bucket and answers 429 with ``retry_after`` when it is exceeded, the way Telegram does. The
sender runs in a child process with the bot's real aiohttp session pointed at it (``TELEGRAM_API_SERVER``),
so a kill of the child cannot take Telegram's record of what arrived with it.

Two runs, each on a fresh database with the sample community and ``--recipients`` residents:

1. clean: the child sends the whole agenda broadcast; the achieved rate is compared with the limit;
2. killed: when half the messages have arrived, the child gets SIGKILL while it is mid-broadcast; a new
   child starts (as the restarted bot would), gives back what the dead one had claimed, and finishes.

Counted at the fake server, per recipient: more than one message is a duplicate, none is missing.

    .venv/bin/python -m bench.broadcast                 # 2 x 10,000 messages at 200/s, about 2 minutes
    .venv/bin/python -m bench.broadcast --limit 1000    # at a paid broadcast's 1,000/s
    .venv/bin/python -m bench.broadcast --limit 0       # no limit: how fast the sender itself is, over HTTP
    .venv/bin/python -m bench.broadcast --in-process    # the sender alone, with a fake Bot session
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy import event, func, select

from bench.residents import add_residents, sample_database
from bot import memory
from bot.app import create_bot
from bot.i18n import create_i18n
from bot.outbound.notices import Renderer
from bot.outbound.sender import OutboxSender, SenderSettings
from domain.broadcasts import start_broadcast
from domain.clock import system_clock
from storage.db import create_engine, create_session_factory
from storage.models import BroadcastKind, Community, OutboxMessage, OutboxStatus
from tests.fake_telegram import fake_bot

ROOT = Path(__file__).resolve().parent.parent
FIRST_RESIDENT = 7_000_000
TOKEN = "42:BENCH-TOKEN"
UNFINISHED = OutboxStatus.unfinished()
UNLIMITED = 1_000_000.0  # the sender's rate with --limit 0: its bucket never makes it wait


@dataclass
class FakeTelegram:
    """Accepts at most ``limit`` messages a second (a token bucket with a small burst); 429s the rest."""

    limit: float
    burst: float
    received: Counter[int] = field(default_factory=Counter)
    accepted_at: list[float] = field(default_factory=list)
    refused: int = 0
    kill_at: int | None = None  # when this many messages have arrived, the sending child is killed
    on_kill: asyncio.Event = field(default_factory=asyncio.Event)
    _tokens: float = 0.0
    _refilled: float = field(default_factory=time.monotonic)

    def _take(self) -> bool:
        if not self.limit:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.limit)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        method = request.match_info["method"].lower()
        if method == "getme":  # a new sender asks whether Telegram answers
            return web.json_response({"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "Bench"}})
        if method != "sendmessage":
            return web.json_response({"ok": False, "error_code": 400, "description": f"unexpected {method}"})
        if not self._take():
            self.refused += 1
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 1",
                    "parameters": {"retry_after": 1},
                }
            )
        chat_id = int(str(form["chat_id"]))
        self.received[chat_id] += 1
        self.accepted_at.append(time.monotonic())
        if self.kill_at is not None and sum(self.received.values()) >= self.kill_at:
            self.kill_at = None
            self.on_kill.set()  # the child dies now, before it reads this answer
        message = {
            "message_id": len(self.accepted_at),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "text": str(form.get("text", "")),
        }
        return web.json_response({"ok": True, "result": message})

    def achieved_rate(self) -> float:
        span = self.accepted_at[-1] - self.accepted_at[0]
        return (len(self.accepted_at) - 1) / span if span > 0 else 0.0


async def serve(telegram: FakeTelegram) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/bot{token}/{method}", telegram.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def prepare(db_url: str, recipients: int) -> None:
    """The sample community, ``recipients`` residents spread over its buildings, and the agenda broadcast."""
    now = system_clock()
    engine, sessions = await sample_database(db_url, now)
    async with sessions() as session, session.begin():
        community = await session.scalar(select(Community).order_by(Community.id).limit(1))
        assert community is not None
        await add_residents(session, FIRST_RESIDENT, recipients, now, english_every=5)
        community_id = community.id
    async with sessions() as session:
        started = await start_broadcast(session, community_id, BroadcastKind.AGENDA, now.strftime("%Y-%m"), now)
    if not started.new or started.broadcast.recipients != recipients:
        raise SystemExit(f"benchmark is wrong: {started.broadcast.recipients} recipients queued for {recipients}")
    await engine.dispose()


async def outcome(db_url: str) -> Counter[str]:
    engine = create_engine(db_url)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(OutboxMessage.status, func.count())
            .where(OutboxMessage.broadcast_id.is_not(None))
            .group_by(OutboxMessage.status)
        )
        counts = Counter({str(status): int(n) for status, n in rows})
    await engine.dispose()
    return counts


def child_command(db_url: str, api: str, rate: float) -> list[str]:
    command = [sys.executable, "-m", "bench.broadcast", "--child", "--database-url", db_url, "--api", api]
    return [*command, "--rate", str(rate)]


async def run(db_url: str, telegram: FakeTelegram, api: str, rate: float, kill: bool) -> tuple[int, int, Counter[str]]:
    """Send the prepared broadcast, killing the first child half-way if asked; returns duplicates, missing."""
    child = await asyncio.create_subprocess_exec(*child_command(db_url, api, rate), cwd=ROOT)
    if kill:
        waiter = asyncio.create_task(child.wait())
        killer = asyncio.create_task(telegram.on_kill.wait())
        await asyncio.wait({waiter, killer}, return_when=asyncio.FIRST_COMPLETED)
        if not telegram.on_kill.is_set():
            raise SystemExit("benchmark is wrong: the child finished before it could be killed")
        child.send_signal(signal.SIGKILL)
        await waiter
        print(f"  killed the sender after {sum(telegram.received.values()):,} messages; restarting it")
        child = await asyncio.create_subprocess_exec(*child_command(db_url, api, rate), cwd=ROOT)
    if await child.wait() != 0:
        raise SystemExit("the sending child failed")
    engine = create_engine(db_url)
    async with engine.connect() as conn:
        recipients = set(
            await conn.scalars(select(OutboxMessage.chat_id).where(OutboxMessage.broadcast_id.is_not(None)))
        )
    await engine.dispose()
    duplicates = sum(n - 1 for n in telegram.received.values() if n > 1)
    missing = len(recipients - set(telegram.received))
    return duplicates, missing, await outcome(db_url)


async def child(db_url: str, api: str, rate: float) -> None:
    """The bot's sending side, as a restarted process runs it, until the broadcast is finished."""
    engine = create_engine(db_url)
    sessions = create_session_factory(engine)
    bot = create_bot(TOKEN, api)
    # The only sender, as in a polling bot: as it starts it takes back what a dead predecessor had claimed.
    settings = SenderSettings(rate_per_second=rate)
    renderer = Renderer(create_i18n("zh_CN"), ZoneInfo("Asia/Shanghai"))
    sender = OutboxSender(bot, sessions, renderer, system_clock, settings, sole=True)
    # What start-up made is set aside, as the bot does once it is up (bot/memory.py), and bench/scale.py too. Left
    # in, each of the collector's full passes walked its 300,000 objects and stopped the sending for 0.1-1.2 s at
    # load 5, where the bot sends with none of that.
    memory.settle_after_start()
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    while True:
        await asyncio.sleep(0.5)
        async with engine.connect() as conn:
            left = await conn.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.broadcast_id.is_not(None), OutboxMessage.status.in_(UNFINISHED))
            )
        if not left:
            break
    stop.set()
    sender.wake()
    await task
    await bot.session.close()
    await engine.dispose()


async def in_process(recipients: int) -> None:
    """The sender alone: no limit, and a fake Bot session in this process instead of HTTP (tests/fake_telegram.py),
    so what is timed is the sender's own work: claiming, rendering, marking, committing."""
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite+aiosqlite:///{tmp}/alone.sqlite3"
        await prepare(db_url, recipients)
        engine = create_engine(db_url)
        counts: Counter[str] = Counter()
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *_: counts.update(["statements"]))
        event.listen(engine.sync_engine, "commit", lambda *_: counts.update(["commits"]))
        bot, telegram = fake_bot()
        renderer = Renderer(create_i18n("zh_CN"), ZoneInfo("Asia/Shanghai"))
        settings = SenderSettings(rate_per_second=UNLIMITED, chat_interval=0)
        sender = OutboxSender(bot, create_session_factory(engine), renderer, system_clock, settings, sole=True)
        started, cpu = time.perf_counter(), time.process_time()
        while await sender.deliver_due():
            pass
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await engine.dispose()
    sent = len(telegram.accepted)
    print(
        f"sender alone (in-process fake session, SQLite): {sent:,} messages in {elapsed:.1f} s, "
        f"{sent / elapsed:.0f}/s; "
        f"CPU {1000 * cpu / sent:.2f} ms per message; {counts['commits'] / sent:.3f} commits and "
        f"{counts['statements'] / sent:.3f} SQL statements per message"
    )
    print(f"broadcast: sender_alone_per_s={sent / elapsed:.0f}")


async def main(args: argparse.Namespace) -> None:
    # The sender is held a little under the limit: its own clock and the server's see the same spacing
    # through a loopback hop whose jitter the server's small burst absorbs.
    rate = args.limit * args.sender_share if args.limit else UNLIMITED
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, kill in enumerate((False, True)):
            db_url = f"sqlite+aiosqlite:///{tmp}/broadcast{n}.sqlite3"
            await prepare(db_url, args.recipients)
            telegram = FakeTelegram(limit=args.limit, burst=max(5.0, args.limit / 10))
            if kill:
                telegram.kill_at = args.recipients // 2
            runner, api = await serve(telegram)
            started = time.perf_counter()
            limit = f"limit {args.limit:g}/s" if args.limit else "no limit"
            print(f"{'killed' if kill else 'clean'} run: {args.recipients:,} recipients, {limit}")
            duplicates, missing, rows = await run(db_url, telegram, api, rate, kill)
            elapsed = time.perf_counter() - started
            await runner.cleanup()
            achieved = telegram.achieved_rate()
            share = f" ({achieved / args.limit:.3f} of the limit)" if args.limit else ""
            print(
                f"  {sum(telegram.received.values()):,} messages in {elapsed:.1f} s, rate {achieved:.1f}/s{share}, "
                f"429s {telegram.refused}, rows {dict(rows)}, duplicates {duplicates}, missing {missing}"
            )
            results.append((achieved, duplicates, missing))
    (achieved, duplicates, missing), (_, after_kill_duplicates, after_kill_missing) = results
    rate_figure = f"rate_ratio={achieved / args.limit:.3f}" if args.limit else f"unlimited_per_s={achieved:.0f}"
    print(
        f"broadcast: recipients={args.recipients} limit={args.limit:g} {rate_figure} duplicates={duplicates} "
        f"missing={missing} after_kill_duplicates={after_kill_duplicates} after_kill_missing={after_kill_missing}"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument(
        "--limit", type=float, default=200.0, help="the fake Telegram's messages per second; 0: no limit at all"
    )
    parser.add_argument("--sender-share", type=float, default=0.99, help="the sender's rate as a share of it")
    parser.add_argument(
        "--in-process", action="store_true", help="time the sender alone, with a fake Bot session instead of HTTP"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.child:
        asyncio.run(child(arguments.database_url, arguments.api, arguments.rate))
    elif arguments.in_process:
        asyncio.run(in_process(arguments.recipients))
    else:
        asyncio.run(main(arguments))
