"""Crash benchmark: the real bot process, killed at 30+ random moments while residents and workers use it.

    .venv/bin/python -m bench.crash              # about 10 minutes: 34 kills, a 320 s 5xx outage
    .venv/bin/python -m bench.crash --quick      # about 3 minutes: 12 kills, a 60 s outage (a smoke run)
    .venv/bin/python -m bench.crash --seed 7 --keep /tmp/crash   # another schedule; keep the database and log

It is not a test. The bot (``python -m bot``, started with ``sys.executable``) runs in a child process on a
fresh SQLite file with the sample community, its real aiohttp session pointed at a loopback fake Bot API
(bench/fake_api.py) that keeps updates until an ``offset`` confirms them, as Telegram does. Meanwhile:

- residents (distinct Telegram ids, English clients) bind with ``/start <building payload>`` from
  bot/communities/sample.toml and file reports through the ``/report`` wizard, several at once, each one step at
  a time: they read the buttons of the bot's latest message to them and press them, type a description with a
  unique tag (a third of them add a photo), press Done and Submit;
- whoever the worker card arrives at (the grid worker of the building, or staff) presses Accept, then
  Progress note and types a note, then Resolve and types what was done;
- a staff member opens /broadcasts, previews the agenda and presses "Send it now", to the residents and a
  few thousand silent ones inserted beforehand;
- the fake Telegram answers 429 (``retry_after``) to most sends and edits for a while (the storm), and
  later 502 to everything, getUpdates included, or drops the connection (the outage, longer than 5 minutes
  in the full run, real time);
- the bot gets SIGKILL at planned random moments: some right after a getUpdates returned a batch (in the
  middle of a polling batch), some right after the fake received a notice or broadcast message (in the
  middle of a sender batch), the rest at plain random times; it is restarted at once. When the child exits
  by itself (for instance when it cannot reach Telegram at start-up), it is restarted after a second, as a
  supervisor would.

A user waits for the bot's answer before the next step. The waiting starts when the update was handed to a
bot process and does not count outage time; after ``ANSWER_TIMEOUT`` seconds the user does what the view
says once more (presses the same button again, types the same text again): that is a new update of its own.
Someone who gets the same answer three times sends /cancel and starts the report again (before Submit only).
The clock is not scaled: the bot runs on real time throughout. bot.log and trace.txt (every update, every
request the bot made to a user's chat, kills, starts, exits, in time order) are kept with ``--keep``, and
resume.txt: each claimed row a kill left, where its wait went (see ``write_resumes``).

Counted at the end, once flows have finished and the outbox has drained (both bounded in time), from the
fake's records and the SQLite file:

updates_lost
    scripted updates that were confirmed (a getUpdates ``offset`` moved past them) and produced neither an
    answer nor an effect. An answer: for a button press, answerCallbackQuery with its id; for any update, a
    send or edit to the user's chat that is not an outbox message (see below), between the update's first
    delivery and the first delivery of that user's next update, whatever Telegram answered it (a 429 or 502
    still shows the update was handled). A line before the last says how many of the updates counted lost do
    have an answer when the bot's answers are matched to the user's updates in order (each update takes the
    first answer after its first delivery that no earlier one took; a call retried after a refusal is one
    answer): an answer that came after the user, tired of waiting, had sent the step again. Such an update was
    handled late, not lost, unless an answer lost in a crash shifted the matching. An effect (for steps that
    leave a trace in the database): the
    ticket with the wizard's description (Submit), the user's building (the unit button), the accepted event
    (Accept), the note or resolution event with the typed text, the broadcast (Send it now).
tickets_missing
    wizards (one unique description each) with a confirmed Submit and no ticket of that description. A Submit
    counts for a wizard when its description was sent since its last /report (or /cancel); one pressed before
    that, on an old keyboard while the answers to the first steps are still on their way, is a step of its own
    ("stale submit"): the bot must answer it, and it cannot file a report not described yet.
tickets_duplicated
    descriptions with more than one ticket.
messages_lost
    personal outbox rows (``broadcast_id`` is NULL) due by the end (not in its last ``LAST_SECONDS``, which are
    printed apart), counted per recipient and message
    (card or deadline reminder of ticket n, its photos, the update about one event, a topic notice): the
    rows that never reached the fake (answered 200), or, where more, the rows marked failed for a reason
    other than the chat (403, chat not found). A row of a kind the bench cannot recognise on the wire counts
    as arrived when it is marked sent.
broadcast_duplicates
    residents who received a broadcast more often than they have broadcast rows (once per broadcast).
resume_p99_s
    right after each kill the bench reads the outbox rows left claimed or sending (all personal ones, and
    broadcast rows still only claimed: a broadcast row left sending may rightly never come). For each such
    row and claim: the seconds from the restart until the message was next sent to the fake, whatever the
    answer (during an outage a 502 is the best a bot can get); 0 when it had reached the fake before the
    kill; when a process after the restart claimed it again and was killed too before sending it, up to that
    kill (that kill's reading carries on); when it is never sent again, up to the end of the run. A row still
    held by the same old claim at a later kill is counted once. Not counted are the seconds in which Telegram
    let no one send: the injected outage (the fake answering 502 to everything, or dropping the connection),
    and the ``retry_after`` seconds after each 429 of the storm, which Telegram asks every sender of the bot to
    wait out (a chat's later messages wait behind its first meanwhile); and a second for each message the bot
    put into the row's chat (sent or edited) meanwhile, which Telegram's one message a second per chat gives
    to that message: a worker whose cards come faster than one a second has a queue, and a claimed row waits
    its place in it crash or no crash (the definition since 2026-12-07, run 54; from run 61 a second per
    message rather than the second after each, which left out a second's idle turn after two messages sent
    close together). The seconds in which the bot could have sent and did not all count. The 99th percentile
    over all of them. Printed beside it: the figure counting the chat's queue too (the definition until run
    53), counting the storm's waits too (2026-12-06), and counting the outage too (before).
personal messages repeated after a crash
    for the same per-recipient, per-message counting: arrivals beyond the number of rows.

Targets: every count 0, ``resume_p99_s`` at most 10.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
import tomllib
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bench.fake_api import EDITS, SENDS, BotMessage, FakeBotAPI, Request
from bench.residents import add_residents, sample_database
from bot.callbacks import (
    BroadcastAction,
    BroadcastCb,
    FeedbackCb,
    SettingsAction,
    SettingsCb,
    TicketAction,
    TicketCb,
    TopicAction,
    TopicCb,
)
from bot.config import SAMPLE_COMMUNITY, Settings
from domain.clock import system_clock

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY_FILE = SAMPLE_COMMUNITY
BOT_ID = 4242
TOKEN = f"{BOT_ID}:CRASH-BENCH"
# Telegram's one message a second into a chat, as the bot paces it (the bench runs the default).
CHAT_INTERVAL: float = Settings.model_fields["send_rate_per_chat_seconds"].default
FIRST_RESIDENT = 9_100_000
FIRST_SILENT = 8_000_000
STAFF_ID = 100001

# Personal rows due only in the run's last seconds are not counted: a chat's queue at a message a second has had
# no time to go (run 33: twelve topic notices the minute job queued as the run ended).
LAST_SECONDS = 10.0
ANSWER_TIMEOUT = 12.0  # seconds a user waits (of delivered, non-outage time) before doing it again
SETTLE = 0.4  # a handler's requests are taken as finished when the chat has been quiet this long
RESTART_AFTER_EXIT = 1.0
UNFINISHED = ("pending", "claimed", "sending")

REPORT, DONE, SUBMIT = "📝 Report a problem", "✅ Done", "📨 Submit"
CARD_ACTIONS = {a.value for a in TicketAction} - {TicketAction.OPEN.value, TicketAction.HISTORY.value}
BROADCAST_OFF = SettingsCb(action=SettingsAction.BROADCASTS_OFF).pack()
CHAT_REASONS = ("403", "400: Bad Request: chat not found", "recipient blocked")


# --- the child (bench/startup.py starts it the same way) ----------------------------------------------------


def bot_environment(api: str, db_url: str, root: Path = ROOT) -> dict[str, str]:
    """The bot's settings for a child process: its Bot API at the loopback fake ``api``, its database, the
    sample community; ``root``: the source tree it runs from (its packages go first on the path)."""
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "BOT_TOKEN": TOKEN,
        "DATABASE_URL": db_url,
        "COMMUNITY_FILE": str(COMMUNITY_FILE),
        "TELEGRAM_API_SERVER": api,
        "SEND_RATE_PER_SECOND": "30",
        "SEND_RATE_PER_CHAT_SECONDS": "1",
        "REDIS_URL": "",
        "BOT_USERNAME": "crash_bench_bot",
        "PYTHONUNBUFFERED": "1",
    }


async def start_bot(env: dict[str, str], log: IO[bytes], root: Path = ROOT) -> asyncio.subprocess.Process:
    """``python -m bot`` with this interpreter, in ``root``, its output to ``log``."""
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=root, env=env, stdout=log, stderr=log)


async def prepare_sample(db_url: str, silent: int = 0) -> list[tuple[str, int]]:
    """A database with the sample community and ``silent`` bound residents; returns (payload, units) of the
    buildings with more than one unit."""
    now = system_clock()
    engine, sessions = await sample_database(db_url, now)
    if silent:
        async with sessions() as session, session.begin():
            await add_residents(session, FIRST_SILENT, silent, now, english_every=3)
    await engine.dispose()
    spec = tomllib.loads(COMMUNITY_FILE.read_text(encoding="utf-8"))
    code = spec["community"]["code"]
    places = []
    for grid in spec["grids"]:
        for compound in grid.get("compounds", []):
            for building in compound["buildings"]:
                if int(building.get("units", 1)) > 1:
                    places.append((f"{code}_{compound['code']}_{building['code']}", int(building["units"])))
    return places


# --- the schedule --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    residents: int  # residents who use the bot, at once
    silent: int  # residents who only receive the broadcast
    flows_until: float  # seconds from the start: no new wizard after this
    broadcast_at: float
    storm: tuple[float, float]
    outage: tuple[float, float]
    kills: int
    outage_kills: int  # of them, during the outage
    kills_between: tuple[float, float]
    flows_deadline: float  # ongoing flows are given up after this
    drain_until: float  # and the outbox is waited for until this
    storm_share: float = 0.8


FULL = Plan(
    residents=16,
    silent=2000,
    broadcast_at=35,
    storm=(55, 95),
    outage=(135, 455),
    kills=34,
    outage_kills=10,
    kills_between=(8, 525),
    flows_until=525,
    flows_deadline=555,
    drain_until=585,
)
QUICK = Plan(
    residents=10,
    silent=300,
    flows_until=125,
    broadcast_at=12,
    storm=(22, 37),
    outage=(45, 105),
    kills=12,
    outage_kills=3,
    kills_between=(5, 125),
    flows_deadline=145,
    drain_until=170,
)


def kill_schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """The kill moments, each with the kind of moment it waits for: some in the outage, the rest around it."""
    start, end = plan.kills_between
    outage_start, outage_end = plan.outage
    schedule = [
        (outage_start + (outage_end - outage_start) * (n + rng.uniform(0.1, 0.9)) / plan.outage_kills, "random")
        for n in range(plan.outage_kills)
    ]
    outside = [(start, outage_start), (outage_end, end)]
    span = sum(b - a for a, b in outside)
    others = plan.kills - plan.outage_kills
    kinds = ["poll", "send", "random"]
    for n in range(others):
        offset = span * (n + rng.uniform(0.1, 0.9)) / others
        for a, b in outside:
            if offset < b - a:
                schedule.append((a + offset, kinds[n % 3]))
                break
            offset -= b - a
    return sorted(schedule)


# --- what the bot sends: outbox messages by their buttons --------------------------------------------


def _callbacks(markup: dict[str, Any] | None) -> list[str]:
    rows = (markup or {}).get("inline_keyboard") or []
    return [str(b.get("callback_data", "")) for row in rows for b in row if b.get("callback_data")]


def _unpack(cls: Any, data: str) -> Any:
    try:
        return cls.unpack(data)
    except (TypeError, ValueError):
        return None


def signature(method: str, text: str, markup: dict[str, Any] | None) -> tuple[str, int] | None:
    """What an outbox message sent this way is about, recognised by its buttons; None for a direct answer."""
    if method not in SENDS:
        return None
    data = _callbacks(markup)
    if BROADCAST_OFF in data:
        return ("broadcast", 0)
    tickets = [cb for cb in (_unpack(TicketCb, d) for d in data if d.startswith("t:")) if cb is not None]
    for cb in tickets:
        if cb.action.value in CARD_ACTIONS:
            return ("card", cb.ticket_id)
    for cb in tickets:
        if cb.action is TicketAction.HISTORY:
            return ("update", cb.ticket_id)
    for d in data:
        if (feedback := _unpack(FeedbackCb, d)) is not None:
            return ("update", feedback.ticket_id)
        if (topic := _unpack(TopicCb, d)) is not None and topic.action is TopicAction.OPEN:
            return ("topic", topic.topic_id)
    if method in ("sendphoto", "sendmediagroup") and not data and (found := re.search(r"#(\d+)", text)):
        return ("photos", int(found.group(1)))
    return None


def request_text(request: Request) -> str:
    params = request.params
    if request.method == "sendmediagroup":
        with contextlib.suppress(TypeError, ValueError):
            return " ".join(str(m.get("caption") or "") for m in json.loads(params.get("media") or "[]"))
    return str(params.get("text") or params.get("caption") or "")


def request_markup(request: Request) -> dict[str, Any] | None:
    value = request.params.get("reply_markup")
    if not value:
        return None
    with contextlib.suppress(TypeError, ValueError):
        found = json.loads(value)
        return found if isinstance(found, dict) else None
    return None


def request_signature(request: Request) -> tuple[str, int] | None:
    return signature(request.method, request_text(request), request_markup(request))


def answer_runs(requests: list[Request]) -> list[float]:
    """When the bot's direct answers in one chat began, oldest first: sends and edits that are no outbox message,
    whatever Telegram answered. A call repeated after Telegram refused it (the reply policy retrying through a
    429 or a 502) is the same answer."""
    runs: list[float] = []
    last: Request | None = None
    for request in sorted(requests, key=lambda r: r.at):
        if request.method == "answercallbackquery" or request_signature(request) is not None:
            continue
        retried = (
            last is not None
            and not last.ok
            and (last.method, request_text(last)) == (request.method, request_text(request))
        )
        if not retried:
            runs.append(request.at)
        last = request
    return runs


def is_outbox(message: BotMessage) -> bool:
    return signature(message.method, message.text, message.markup) is not None


# --- simulated people ---------------------------------------------------------------------------------


@dataclass
class Scripted:
    update_id: int
    chat_id: int
    step: str
    detail: str = ""  # the description, note, ticket number …
    query_id: str | None = None
    answered: bool | None = None  # as the user saw it while waiting


class Person:
    def __init__(self, bench: Bench, user_id: int, name: str) -> None:
        self.bench = bench
        self.id = user_id
        self.name = name
        self.lock = asyncio.Lock()  # one thing at a time: a note typed for one ticket is not for another
        self.user = {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"}

    @property
    def fake(self) -> FakeBotAPI:
        return self.bench.fake

    def send_text(self, text: str, step: str, detail: str = "") -> Scripted:
        message: dict[str, Any] = {
            "message_id": self.fake.next_message_id(self.id),
            "date": int(time.time()),
            "chat": {"id": self.id, "type": "private", "first_name": self.name},
            "from": self.user,
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self._push({"message": message}, step, detail)

    def send_photo(self, step: str) -> Scripted:
        file_id = f"photo-{self.id}-{len(self.bench.scripted)}"
        message = {
            "message_id": self.fake.next_message_id(self.id),
            "date": int(time.time()),
            "chat": {"id": self.id, "type": "private", "first_name": self.name},
            "from": self.user,
            "photo": [{"file_id": file_id, "file_unique_id": file_id, "width": 1280, "height": 960}],
        }
        return self._push({"message": message}, step)

    def press(self, message: BotMessage, data: str, step: str, detail: str = "") -> Scripted:
        query_id = f"q{self.id}-{len(self.bench.scripted)}"
        query = {
            "id": query_id,
            "from": self.user,
            "chat_instance": f"ci{self.id}",
            "data": data,
            "message": message.as_telegram(self.fake.bot_user),
        }
        self.bench.queries[query_id] = self.id
        return self._push({"callback_query": query}, step, detail, query_id)

    def _push(self, body: dict[str, Any], step: str, detail: str = "", query_id: str | None = None) -> Scripted:
        update_id = self.fake.push_update(body)
        scripted = Scripted(update_id, self.id, step, detail, query_id)
        self.bench.scripted.append(scripted)
        return scripted

    async def answer(self, scripted: Scripted) -> bool:
        """Wait for the bot's answer to this update, then for the chat to go quiet; False after the timeout."""
        record = self.fake.updates[scripted.update_id]
        waited = 0.0
        tick = 0.05
        while waited < ANSWER_TIMEOUT:
            if self.bench.finished:
                return False
            delivered = record.first_delivered
            if delivered is not None and self.bench.answered(scripted, delivered, time.time()):
                await self.settle()
                scripted.answered = True
                return True
            await asyncio.sleep(tick)
            if delivered is not None and not self.fake.outage:
                waited += tick
        scripted.answered = False
        return False

    async def settle(self) -> None:
        deadline = time.time() + 3
        while time.time() < deadline:
            last = self.bench.last_request_at.get(self.id, 0.0)
            if time.time() - last >= SETTLE:
                return
            await asyncio.sleep(0.05)

    def messages(self) -> list[BotMessage]:
        """The bot's direct answers in this chat, oldest first (outbox messages left out)."""
        return [m for m in self.fake.latest(self.id) if not is_outbox(m)]

    def actionable(self) -> BotMessage | None:
        """The latest message that asks for something: buttons, a keyboard, or a request to describe."""
        for message in reversed(self.messages()):
            if message.inline_buttons or message.reply_buttons or "describe the problem" in message.text.lower():
                return message
        return None

    async def think(self) -> None:
        await asyncio.sleep(self.bench.rng.uniform(0.2, 1.0))


@dataclass
class Wizard:
    resident: int
    description: str
    photo: bool
    submits: list[int] = field(default_factory=list)
    outcome: str = "running"
    described: bool = False  # its description was sent since its last /report


# --- the child process ---------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    kind: str  # poll, send, random (planned kind that did not come in time: random)
    at: float
    generation: int
    batch: int = 0  # updates in the batch it hit (poll)
    restart_at: float | None = None
    claimed: list[dict[str, Any]] = field(default_factory=list)  # outbox rows claimed or sending at the kill


class Supervisor:
    def __init__(self, bench: Bench, env: dict[str, str], log: IO[bytes]) -> None:
        self.bench = bench
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.generation = 0
        self.started: dict[int, float] = {}
        self.exits: list[tuple[int, float, int | None]] = []
        self.kills: list[Kill] = []
        self.pending_kill: Kill | None = None
        self.stopping = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        self.generation += 1
        self.bench.fake.generation = self.generation
        self.log.write(f"\n===== generation {self.generation} at {time.time():.3f} =====\n".encode())
        self.log.flush()
        self.process = await start_bot(self.env, self.log)
        self.started[self.generation] = time.time()

    def kill(self, kind: str, generation: int, batch: int = 0) -> bool:
        """SIGKILL the running child now (from anywhere in the loop, a request handler included)."""
        if not self.alive or generation != self.generation or self.pending_kill is not None or self.stopping:
            return False
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.pending_kill = Kill(len(self.kills) + 1, kind, time.time(), generation, batch)
        self.bench.fake.generation = -generation  # requests still on the wire belong to nobody
        return True

    async def run(self) -> None:
        await self.spawn()
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping:
                return
            kill, self.pending_kill = self.pending_kill, None
            if kill is not None:
                kill.claimed = self.bench.claimed_rows()
                self.kills.append(kill)
                await self.spawn()
                kill.restart_at = self.started[self.generation]
                continue
            self.exits.append((self.generation, time.time(), code))
            self.bench.fake.generation = -self.generation
            await asyncio.sleep(RESTART_AFTER_EXIT)
            if self.stopping:
                return
            await self.spawn()

    async def stop(self) -> None:
        self.stopping = True
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# --- the bench -----------------------------------------------------------------------------------------


def _utc(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class Bench:
    def __init__(self, plan: Plan, seed: int, workdir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.fake = FakeBotAPI(BOT_ID, seed=seed)
        self.workdir = workdir
        self.db_path = workdir / "bot.sqlite3"
        self.db_url = f"sqlite+aiosqlite:///{self.db_path}"
        self.scripted: list[Scripted] = []
        self.queries: dict[str, int] = {}
        self.wizards: list[Wizard] = []
        self.last_request_at: dict[int, float] = {}
        self.by_chat: dict[int, list[Request]] = defaultdict(list)
        self.acq: dict[str, Request] = {}
        self.acq_any: set[str] = set()
        self.people: dict[int, Person] = {}
        self.worked: set[int] = set()
        self.worker_tasks: list[asyncio.Task[None]] = []
        self.disturbances: list[list[float]] = []  # [start, end] of the storm and the outage
        self.outage_window: list[float] | None = None  # [start, end] of the outage
        self.armed: tuple[str, int] | None = None  # (kind, generation) a kill waits for
        self.armed_fired = asyncio.Event()
        self.finished = False
        self.t0 = 0.0
        self.broadcast_done = False
        self.supervisor: Supervisor | None = None
        self.fake.on_request = self._on_request
        self.fake.on_batch = self._on_batch

    # --- wiring the fake -----------------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        chat_id = request.chat_id
        if request.method == "answercallbackquery":
            chat_id = self.queries.get(str(request.params.get("callback_query_id")))
            query_id = str(request.params.get("callback_query_id"))
            self.acq_any.add(query_id)
            if request.ok:
                self.acq.setdefault(query_id, request)
        if chat_id is not None:
            self.by_chat[chat_id].append(request)
            self.last_request_at[chat_id] = request.at
        sig = request_signature(request) if request.ok else None
        if sig is not None and sig[0] == "card" and chat_id is not None and not self.finished:
            self._start_work(chat_id, sig[1], request)
        if self.armed is not None and self.armed[0] == "send" and sig is not None and self.supervisor:
            generation = self.armed[1]
            self.armed = None
            self.armed_fired.set()
            if self.rng.random() < 0.5:
                self.supervisor.kill("send", generation)  # before the bot reads Telegram's answer
            else:
                delay = self.rng.uniform(0.05, 0.3)
                asyncio.get_running_loop().call_later(delay, self.supervisor.kill, "send", generation)

    def _on_batch(self, batch: list[int]) -> None:
        if self.armed is not None and self.armed[0] == "poll" and self.supervisor:
            generation = self.armed[1]
            self.armed = None
            self.armed_fired.set()
            delay = self.rng.uniform(0.0, 0.08)  # while the batch is being handled
            asyncio.get_running_loop().call_later(delay, self.supervisor.kill, "poll", generation, len(batch))

    def answered(self, scripted: Scripted, since: float, now: float) -> bool:
        if scripted.query_id is not None and scripted.query_id in self.acq:
            return True
        return any(
            since <= r.at <= now and r.ok and r.method != "answercallbackquery" and request_signature(r) is None
            for r in reversed(self.by_chat[scripted.chat_id][-20:])
        )

    def claimed_rows(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, chat_id, kind, status, broadcast_id, claimed_at FROM outbox "
                "WHERE status IN ('claimed', 'sending')"
            ).fetchall()
        return [dict(row) for row in rows]

    def elapsed(self) -> float:
        return time.time() - self.t0

    async def until(self, second: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + second - time.time()))

    # --- preparing ------------------------------------------------------------------------------------

    async def prepare(self) -> list[tuple[str, int]]:
        """The sample community and the silent residents; returns (payload, units) of the buildings."""
        return await prepare_sample(self.db_url, silent=self.plan.silent)

    # --- flows ----------------------------------------------------------------------------------------

    def decide(
        self, person: Person, payload: str, wizard: Wizard | None, photo_sent: bool
    ) -> tuple[str, Any, str, BotMessage | None] | None:
        """What a user does next, reading the bot's latest message; None when the goal is reached.

        Buttons and keyboards come first; a message without any may say which button to press ("Please
        press Submit"), or to describe the problem, or to /cancel. Else the latest message with buttons counts.
        """
        messages = person.messages()
        last = messages[-1] if messages else None
        if last is not None and not (last.inline_buttons or last.reply_buttons) and wizard is not None:
            text = last.text
            if SUBMIT in text:
                return ("text", SUBMIT, "submit", None)
            if DONE in text:
                return ("text", DONE, "done", None)
            if "describe the problem" in text.lower():
                return ("text", wizard.description, "description", None)
            if "/cancel" in text and "middle of something" in text:
                return None if wizard.submits else ("text", "/cancel", "cancel", None)
        latest = person.actionable()
        if latest is None:
            return ("text", f"/start {payload}", "start", None)
        data = [d for _, d in latest.inline_buttons]
        units = [d for d in data if d.startswith("p:u:")]
        categories = [d for d in data if d.startswith("c:")]
        reply = latest.reply_buttons
        if units:
            return ("press", self.rng.choice(units), "unit", latest)
        if any(d.startswith("p:") for d in data):
            return ("text", f"/start {payload}", "start", None)
        if wizard is None:
            return None if REPORT in reply else ("text", f"/start {payload}", "start", None)
        if categories:
            return ("press", self.rng.choice(categories), "category", latest)
        if "describe the problem" in latest.text.lower():
            return ("text", wizard.description, "description", None)
        if SUBMIT in reply:
            return ("text", SUBMIT, "submit", None)
        if DONE in reply:
            added = any("added" in m.text and m.message_id > latest.message_id for m in messages)
            if wizard.photo and not added and not photo_sent:
                return ("photo", None, "photo", None)
            return ("text", DONE, "done", None)
        if wizard.submits:
            return None
        return ("text", "/report", "report", None)

    async def converse(self, person: Person, payload: str, wizard: Wizard | None = None) -> str:
        """Do what the bot asks until the resident is bound (no wizard) or the wizard is over.

        A user who gets the same answer to the same thing three times sends /cancel and starts again, unless
        Submit was pressed already (then the report is taken as sent, or lost).
        """
        photo_sent = False
        seen: list[tuple[Any, ...]] = []
        for _ in range(40):
            if self.elapsed() > self.plan.flows_deadline:
                return "abandoned"
            # A report starts with /report, whatever the last wizard left on the screen.
            started = wizard is None or len(seen) > 0
            action = (
                self.decide(person, payload, wizard, photo_sent) if started else ("text", "/report", "report", None)
            )
            if action is None:
                return "done"
            kind, value, step, on = action
            view = [m.text for m in person.messages()[-1:]]
            seen.append((kind, value, step, *view))
            if wizard is not None and len(seen) >= 3 and len(set(seen[-3:])) == 1:
                if wizard.submits:
                    return "stuck after submit"
                kind, value, step, on = ("text", "/cancel", "cancel", None)
                seen.clear()
            await person.think()
            detail = wizard.description if wizard is not None else payload
            if wizard is not None and (not started or step == "cancel"):  # the report starts (again)
                wizard.described = False
            elif wizard is not None and step == "description":
                wizard.described = True
            elif step == "submit" and wizard is not None and not wizard.described:
                # Pressed on an old keyboard while the answers to this report's first steps are on their way:
                # people do that, and the bot must answer it, but it cannot send a report not described yet.
                step = "stale submit"
            if kind == "press":
                assert on is not None
                scripted = person.press(on, value, step, detail)
            elif kind == "photo":
                scripted = person.send_photo(step)
                photo_sent = True
            else:
                scripted = person.send_text(value, step, detail)
            if step == "submit" and wizard is not None:
                wizard.submits.append(scripted.update_id)
            await person.answer(scripted)
        return "abandoned"

    async def resident_life(self, person: Person, payload: str, number: int) -> None:
        await asyncio.sleep(self.rng.uniform(0, 8))
        async with person.lock:
            if await self.converse(person, payload) != "done":
                return
        count = 0
        while self.elapsed() < self.plan.flows_until:
            count += 1
            tag = f"cb-{number:02d}-{count:02d}-{self.rng.randrange(10**6):06d}"
            wizard = Wizard(person.id, f"[{tag}] the stairwell light on floor {count % 6 + 1} is broken", False)
            wizard.photo = self.rng.random() < 0.33
            self.wizards.append(wizard)
            async with person.lock:
                wizard.outcome = await self.converse(person, payload, wizard)
            await asyncio.sleep(self.rng.uniform(1, 4))

    def _start_work(self, chat_id: int, ticket_id: int, request: Request) -> None:
        if ticket_id in self.worked or not request.messages:
            return
        self.worked.add(ticket_id)
        message = self.fake.chats[chat_id][request.messages[0]["message_id"]]
        person = self.person(chat_id, f"worker{chat_id}")
        self.worker_tasks.append(asyncio.create_task(self.work(person, ticket_id, message)))

    def person(self, user_id: int, name: str) -> Person:
        if user_id not in self.people:
            self.people[user_id] = Person(self, user_id, name)
        return self.people[user_id]

    def button(self, message: BotMessage, data: str) -> str:
        """The card's own button when it shows it (it changes as the ticket moves), else the same data."""
        current = self.fake.chats[message.chat_id].get(message.message_id, message)
        return next((d for _, d in current.inline_buttons if d == data), data)

    async def work(self, person: Person, ticket_id: int, card: BotMessage) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        async with person.lock:
            accept = TicketCb(action=TicketAction.ACCEPT, ticket_id=ticket_id).pack()
            for _ in range(8):
                if self.elapsed() > self.plan.flows_deadline:
                    return
                await person.think()
                current = self.fake.chats[card.chat_id].get(card.message_id, card)
                if await person.answer(person.press(current, self.button(card, accept), "accept", str(ticket_id))):
                    break
            tag = f"t{ticket_id}-{self.rng.randrange(10**6):06d}"
            await self.typed_step(person, ticket_id, card, TicketAction.NOTE, f"note {tag}: called the property office")
            await self.typed_step(person, ticket_id, card, TicketAction.RESOLVE, f"fixed {tag}: a new bulb is in")

    async def typed_step(
        self, person: Person, ticket_id: int, card: BotMessage, action: TicketAction, text: str
    ) -> None:
        """Press Progress note (or Resolve) on the card, then type the text; again until it is acknowledged."""
        step = "note" if action is TicketAction.NOTE else "resolution"
        done = "Note added" if action is TicketAction.NOTE else "is resolved"
        data = TicketCb(action=action, ticket_id=ticket_id).pack()
        for _ in range(6):
            if self.elapsed() > self.plan.flows_deadline:
                return
            await person.think()
            current = self.fake.chats[card.chat_id].get(card.message_id, card)
            pressed = person.press(current, self.button(card, data), f"{step}_press", str(ticket_id))
            if not await person.answer(pressed):
                continue
            acq = self.acq.get(pressed.query_id or "")
            if acq is not None and str(acq.params.get("show_alert", "")).lower() == "true":
                return  # refused: the ticket moved on (already resolved, say)
            asked = self._since(person, pressed, lambda m: f"#{ticket_id}" in m.text and "/cancel" in m.text)
            if not asked:
                continue
            await person.think()
            typed = person.send_text(text, f"{step}_text", text)
            if not await person.answer(typed):
                continue
            said = self._since(person, typed, lambda m: True)
            if any(done in m.text or "out of date" in m.text for m in said):
                return

    def _since(self, person: Person, scripted: Scripted, wanted: Any) -> list[BotMessage]:
        delivered = self.fake.updates[scripted.update_id].first_delivered or 0.0
        return [m for m in person.messages() if m.changed_at >= delivered and wanted(m)]

    async def staff_broadcast(self) -> None:
        """Staff open /broadcasts, preview the agenda and press "Send it now"."""
        await self.until(self.plan.broadcast_at)
        staff = self.person(STAFF_ID, "staff")
        preview = BroadcastCb(action=BroadcastAction.PREVIEW, kind="agenda").pack()
        send_now = BroadcastCb(action=BroadcastAction.SEND_NOW, kind="agenda").pack()
        async with staff.lock:
            for _ in range(20):
                if self.elapsed() > self.plan.flows_deadline:
                    return
                latest = staff.actionable()
                said = " ".join(m.text for m in staff.messages()[-3:])
                if any(done in said for done in ("Queued for", "never sent twice", "went out to")):
                    self.broadcast_done = True
                    return
                await staff.think()
                data = [d for _, d in latest.inline_buttons] if latest is not None else []
                if send_now in data and latest is not None:
                    scripted = staff.press(latest, send_now, "send_now")
                elif preview in data and latest is not None:
                    scripted = staff.press(latest, preview, "preview")
                else:
                    scripted = staff.send_text("/broadcasts", "broadcasts")
                await staff.answer(scripted)

    # --- disturbances ------------------------------------------------------------------------------------

    async def storm(self) -> None:
        await self.until(self.plan.storm[0])
        self.fake.storm_share = self.plan.storm_share
        self.disturbances.append([time.time(), math.inf])
        await self.until(self.plan.storm[1])
        self.fake.storm_share = 0.0
        self.disturbances[-1][1] = time.time()

    async def outage(self) -> None:
        await self.until(self.plan.outage[0])
        self.fake.outage = True
        self.outage_window = [time.time(), math.inf]
        self.disturbances.append(self.outage_window)
        await self.until(self.plan.outage[1])
        self.fake.outage = False
        self.outage_window[1] = time.time()

    async def killer(self, supervisor: Supervisor) -> None:
        for at, kind in kill_schedule(self.plan, self.rng):
            await self.until(at)
            for _ in range(100):  # a live process, even one that is only starting
                if supervisor.alive and supervisor.pending_kill is None:
                    break
                await asyncio.sleep(0.1)
            generation = supervisor.generation
            if kind != "random" and not self.fake.outage:
                self.armed = (kind, generation)
                self.armed_fired.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.armed_fired.wait(), timeout=15)
                if self.armed is None:
                    await asyncio.sleep(0.5)  # the armed kill happens in a moment
                    continue
                self.armed = None
            supervisor.kill("random", generation)
            await asyncio.sleep(0.5)

    # --- the run -----------------------------------------------------------------------------------------

    def unfinished_rows(self) -> int:
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            (count,) = db.execute(
                "SELECT count(*) FROM outbox WHERE status IN ('pending', 'claimed', 'sending') AND not_before <= ?",
                (now,),
            ).fetchone()
        return int(count)

    async def run(self, log: IO[bytes]) -> float:
        places = await self.prepare()
        api = await self.fake.start()
        env = bot_environment(api, self.db_url)
        self.t0 = time.time()
        supervisor = self.supervisor = Supervisor(self, env, log)
        supervising = asyncio.create_task(supervisor.run())
        residents = [
            asyncio.create_task(
                self.resident_life(
                    self.person(FIRST_RESIDENT + n, f"Resident {n}"), places[(n * 7) % len(places)][0], n
                )
            )
            for n in range(self.plan.residents)
        ]
        side = [
            asyncio.create_task(job)
            for job in (self.staff_broadcast(), self.storm(), self.outage(), self.killer(supervisor))
        ]
        await asyncio.wait(residents, timeout=max(1.0, self.t0 + self.plan.flows_deadline - time.time()))
        await asyncio.wait(side[:3], timeout=max(1.0, self.t0 + self.plan.flows_deadline - time.time()))
        side[3].cancel()
        # Worker flows started late may still be going; they stop themselves at flows_deadline.
        while self.worker_tasks and not all(t.done() for t in self.worker_tasks):
            if self.elapsed() > self.plan.flows_deadline:
                break
            await asyncio.sleep(0.5)
        print(f"  flows done at {self.elapsed():.0f} s; draining the outbox", flush=True)
        while self.elapsed() < self.plan.drain_until:
            if not self.unfinished_rows() and not self.fake._unconfirmed:
                break
            await asyncio.sleep(1)
        end = time.time()
        self.finished = True
        for task in [*residents, *side, *self.worker_tasks]:
            task.cancel()
        outcomes = await asyncio.gather(*residents, *side, *self.worker_tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                print("  a benchmark flow failed:", file=sys.stderr)
                traceback.print_exception(outcome)
        await supervisor.stop()
        supervising.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervising
        await self.fake.stop()
        return end

    # --- counting --------------------------------------------------------------------------------------

    def write_trace(self) -> None:
        """What happened, in time order, next to the bot's log: the users' updates, kills, restarts and exits."""
        assert self.supervisor is not None
        lines: list[tuple[float, str]] = []
        for s in self.scripted:
            record = self.fake.updates[s.update_id]
            deliveries = ",".join(f"{t - self.t0:.1f}@g{g}" for t, g in record.deliveries)
            confirmed = f"{record.confirmed_at - self.t0:.1f}" if record.confirmed_at else "-"
            lines.append(
                (
                    record.pushed_at,
                    f"update {s.update_id} user {s.chat_id} {s.step} answered={s.answered} "
                    f"delivered={deliveries or '-'} confirmed={confirmed} {s.detail[:40]!r}",
                )
            )
        for chat_id, requests in self.by_chat.items():
            for r in requests:
                text = request_text(r).replace("\n", " ")[:70]
                buttons = [d for d in _callbacks(request_markup(r))][:4]
                lines.append((r.at, f"  bot -> {chat_id} {r.method} {r.status} g{r.generation} {text!r} {buttons}"))
        for kill in self.supervisor.kills:
            lines.append(
                (
                    kill.at,
                    f"KILL {kill.number} {kill.kind} g{kill.generation} batch={kill.batch} claimed={len(kill.claimed)}",
                )
            )
        for generation, at in self.supervisor.started.items():
            lines.append((at, f"START g{generation}"))
        for generation, at, code in self.supervisor.exits:
            lines.append((at, f"EXIT g{generation} code {code}"))
        with (self.workdir / "trace.txt").open("w", encoding="utf-8") as out:
            for at, line in sorted(lines):
                out.write(f"{at - self.t0:8.2f} {line}\n")

    def write_resumes(self, waits: list[tuple[float, Kill, dict[str, Any], float, bool]], end: float) -> None:
        """resume.txt, next to trace.txt: each claimed row a kill left and where its wait went (the restarted
        process's start, its first getUpdates and first send, the row's first try after the restart). Only a
        reading aid for the resume figure; it counts nothing."""
        first_poll: dict[int, float] = {}
        first_send: dict[int, float] = {}
        for request in self.fake.requests:
            if request.method == "getupdates":
                first_poll.setdefault(request.generation, request.at)
            elif request.method in SENDS or request.method in EDITS:
                first_send.setdefault(request.generation, request.at)

        def rel(t: float | None) -> str:
            return "-" if t is None else f"{t - self.t0:7.1f}"

        storm_outage = ", ".join(f"{a - self.t0:.0f}-{b - self.t0:.0f}" for a, b in self.disturbances)
        with (self.workdir / "resume.txt").open("w", encoding="utf-8") as out:
            out.write(f"# storm and outage at {storm_outage} s; run ended at {end - self.t0:.1f} s\n")
            out.write("# wait_s kill kind at restart +poll +send row kind chat broadcast first_try reclaimed\n")
            for wait, kill, row, stop, reclaimed in sorted(waits, key=lambda w: -w[0]):
                restart = kill.restart_at or kill.at
                generation = next((g for g, t in self.supervisor.started.items() if t == restart), 0)  # type: ignore[union-attr]
                poll, send = first_poll.get(generation), first_send.get(generation)
                since_poll = "-" if poll is None else f"{poll - restart:5.1f}"
                since_send = "-" if send is None else f"{send - restart:5.1f}"
                out.write(
                    f"{wait:6.1f} k{kill.number:<3} {kill.kind:6} {rel(kill.at)} {rel(restart)} "
                    f"{since_poll} {since_send} "
                    f"{row['id']:6} {row['kind']:22} {row['chat_id']} {'B' if row['broadcast_id'] else 'P'} "
                    f"{rel(stop)} {'R' if reclaimed else '-'}\n"
                )

    def report(self, end: float) -> None:
        assert self.supervisor is not None
        supervisor = self.supervisor
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            outbox = [dict(r) for r in db.execute("SELECT * FROM outbox ORDER BY id")]
            events = {
                r["id"]: dict(r) for r in db.execute("SELECT id, ticket_id, kind, note, actor_id FROM ticket_events")
            }
            tickets = [dict(r) for r in db.execute("SELECT id, description, status FROM tickets")]
            bound = {r["id"] for r in db.execute("SELECT id FROM users WHERE building_id IS NOT NULL")}
            broadcasts = db.execute("SELECT count(*) FROM broadcasts").fetchone()[0]

        notes_by_ticket: dict[int, list[str]] = defaultdict(list)
        for event in events.values():
            if event["kind"] in ("note", "resolved") and event["note"]:
                notes_by_ticket[event["ticket_id"]].append(event["note"])

        def update_key(ticket_id: int, text: str) -> tuple[Any, ...]:
            found = [n for n in notes_by_ticket[ticket_id] if n in text]
            return ("update", ticket_id, max(found, key=len) if found else "")

        # Arrivals at the fake, per recipient and message.
        arrivals: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        for request in self.fake.requests:
            if not request.ok or request.method not in SENDS or request.chat_id is None:
                continue
            sig = request_signature(request)
            if sig is None:
                continue
            key: tuple[Any, ...] = update_key(sig[1], request_text(request)) if sig[0] == "update" else sig
            arrivals[(request.chat_id, *key)].append(request.at)

        # Attempts, whatever Telegram answered (429, 502, a dropped connection): when a message was tried.
        attempts: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        for request in self.fake.requests:
            if request.method not in SENDS or request.chat_id is None:
                continue
            sig = request_signature(request)
            if sig is not None:
                key = update_key(sig[1], request_text(request)) if sig[0] == "update" else sig
                attempts[(request.chat_id, *key)].append(request.at)

        def row_key(row: dict[str, Any]) -> tuple[Any, ...] | None:
            payload = json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
            if row["broadcast_id"] is not None:
                return (row["chat_id"], "broadcast", 0)
            kind = row["kind"]
            if kind in ("ticket_card", "deadline_reminder"):
                return (row["chat_id"], "card", payload["ticket_id"])
            if kind == "ticket_photos":
                return (row["chat_id"], "photos", payload["ticket_id"])
            if kind == "ticket_update":
                event = events.get(payload.get("event_id"))
                note = event["note"] if event and event["kind"] in ("note", "resolved") else ""
                return (row["chat_id"], "update", payload["ticket_id"], note or "")
            if kind == "topic_candidate":  # topics waiting for staff, listed in one message: by its first button
                return (row["chat_id"], "topic", payload["topic_ids"][0])
            return None

        # --- messages ---
        due = [r for r in outbox if (_utc(r["not_before"]) or 0) <= end]
        personal = [r for r in due if r["broadcast_id"] is None and (_utc(r["not_before"]) or 0) <= end - LAST_SECONDS]
        late_rows = Counter(
            r["status"] for r in due if r["broadcast_id"] is None and (_utc(r["not_before"]) or 0) > end - LAST_SECONDS
        )
        expected: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        unknown_lost = 0
        for row in personal:
            key = row_key(row)
            if key is None:
                unknown_lost += row["status"] != "sent"
                continue
            expected[key].append(row)
        never_arrived = repeated = failed_lost = 0
        for key, rows in expected.items():
            got = len(arrivals.get(key, []))
            failed = sum(1 for r in rows if r["status"] == "failed" and not r["error"].startswith(CHAT_REASONS))
            missing = max(0, len(rows) - got)
            never_arrived += missing
            failed_lost += max(0, failed - missing)
            repeated += max(0, got - len(rows))
        messages_lost = never_arrived + failed_lost + unknown_lost
        statuses = Counter(r["status"] for r in personal)
        failures = Counter(
            (r["error"] or r["status"])[:60] for r in personal if r["status"] in ("failed", "pending", "claimed")
        )

        # --- broadcast ---
        recipients = Counter(r["chat_id"] for r in outbox if r["broadcast_id"] is not None)
        received = Counter({chat: len(arrivals.get((chat, "broadcast", 0), [])) for chat in recipients})
        broadcast_duplicates = sum(1 for chat, n in recipients.items() if received[chat] > n)
        broadcast_missing = sum(1 for chat in recipients if received[chat] == 0)
        broadcast_statuses = Counter(r["status"] for r in outbox if r["broadcast_id"] is not None)

        # --- tickets ---
        tickets_by_description = Counter(t["description"] for t in tickets)
        confirmed = {u: r.confirmed_at is not None for u, r in self.fake.updates.items()}
        submitted = [w for w in self.wizards if any(confirmed.get(u) for u in w.submits)]
        tickets_missing = sum(1 for w in submitted if tickets_by_description[w.description] == 0)
        tickets_duplicated = sum(1 for n in tickets_by_description.values() if n > 1)
        wizard_outcomes = Counter(w.outcome for w in self.wizards)

        # --- updates ---
        by_user: dict[int, list[Scripted]] = defaultdict(list)
        for scripted in self.scripted:
            by_user[scripted.chat_id].append(scripted)
        accepted = {(e["ticket_id"], e["actor_id"]) for e in events.values() if e["kind"] == "accepted"}
        typed = {(e["kind"], e["note"]) for e in events.values()}
        lost_steps: Counter[str] = Counter()
        lost_ids: list[int] = []
        late_ids: list[int] = []  # of them, matched in order with an answer that came after the next update
        for chat_id, updates in by_user.items():
            delivered = sorted(
                (self.fake.updates[s.update_id].first_delivered or math.inf, s.update_id, s) for s in updates
            )
            runs = answer_runs(self.by_chat[chat_id])
            taken = 0  # in-order matching: answers before this one belong to earlier updates
            for index, (first, _, scripted) in enumerate(delivered):
                if first == math.inf:
                    continue
                until = delivered[index + 1][0] if index + 1 < len(delivered) else math.inf
                before_next = next((n for n in range(taken, len(runs)) if runs[n] >= until), len(runs))
                matched: int | None = None
                if scripted.query_id in self.acq_any:
                    taken = max(taken, before_next)  # answered by its id; it takes what came before the next update
                else:
                    matched = next((n for n in range(taken, len(runs)) if runs[n] >= first), None)
                    if matched is not None:
                        taken = max(matched + 1, before_next)
                if not confirmed.get(scripted.update_id):
                    continue
                # An answer Telegram refused (429, 502) still shows the update was handled.
                if scripted.query_id in self.acq_any or any(
                    first <= r.at < until and r.method != "answercallbackquery" and request_signature(r) is None
                    for r in self.by_chat[chat_id]
                ):
                    continue
                step, detail = scripted.step, scripted.detail
                effect = (
                    (step == "submit" and tickets_by_description[detail] > 0)
                    or (step == "unit" and chat_id in bound)
                    or (step == "accept" and (int(detail), chat_id) in accepted)
                    or (step == "note_text" and ("note", detail) in typed)
                    or (step == "resolution_text" and ("resolved", detail) in typed)
                    or (step == "send_now" and broadcasts > 0)
                )
                if not effect:
                    lost_steps[step] += 1
                    lost_ids.append(scripted.update_id)
                    if matched is not None:
                        late_ids.append(scripted.update_id)
        updates_lost = sum(lost_steps.values())
        redelivered = sum(1 for r in self.fake.updates.values() if len({g for _, g in r.deliveries}) > 1)
        notes_typed = Counter(s.detail for s in self.scripted if s.step in ("note_text", "resolution_text"))
        notes_recorded = Counter(e["note"] for e in events.values() if e["kind"] in ("note", "resolved"))
        notes_twice = sum(1 for note, n in notes_recorded.items() if n > max(1, notes_typed[note]))

        # --- resume after a restart ---
        resumes: list[float] = []  # the seconds Telegram let the bot send into the row's chat
        with_queue: list[float] = []  # the definition until run 53: the chat's queue counted
        with_waits: list[float] = []  # the definition of 2026-12-06: without the outage only
        with_outage: list[float] = []  # the definition before 2026-12-06
        outage = [(self.outage_window[0], self.outage_window[1])] if self.outage_window is not None else []
        told_to_wait = _union(
            [(r.at, r.at + self.fake.storm_retry_after) for r in self.fake.requests if r.status == 429] + outage
        )

        def outside_the_outage(start: float, stop: float) -> float:
            return stop - start - _overlap(outage, start, stop)

        def allowed_to_send(start: float, stop: float) -> float:
            return stop - start - _overlap(told_to_wait, start, stop)

        # Telegram takes about one message a second into a chat: each message the bot put there (outside the
        # storm's waits, already left out) used a second of the chat's turns.
        put_into: dict[str, list[float]] = defaultdict(list)
        for request in self.fake.requests:
            paced = request.method in SENDS or request.method in EDITS
            if request.status == 200 and paced and not _inside(told_to_wait, request.at):
                put_into[str(request.params.get("chat_id"))].append(request.at)

        def allowed_into_chat(chat: str, start: float, stop: float) -> float:
            others = sum(1 for at in put_into.get(chat, []) if start <= at < stop)
            return max(0.0, allowed_to_send(start, stop) - others * CHAT_INTERVAL)

        slowest: list[tuple[float, int, str, int]] = []  # (seconds, kill number, kind, outbox row id)
        waits: list[tuple[float, Kill, dict[str, Any], float, bool]] = []  # for resume.txt (--keep)
        orphaned: set[tuple[int, str]] = set()
        never = 0
        row_by_id = {r["id"]: r for r in outbox}
        for index, kill in enumerate(supervisor.kills):
            if kill.restart_at is None:
                continue
            for claimed in kill.claimed:
                row = row_by_id.get(claimed["id"])
                if row is None or (row["broadcast_id"] is not None and claimed["status"] == "sending"):
                    continue
                if (row["id"], claimed["claimed_at"]) in orphaned:
                    continue  # still the claim an earlier kill left behind: that wait is counted from there
                orphaned.add((row["id"], claimed["claimed_at"]))
                key = row_key(row)
                if key is None:  # not recognisable on the wire: its sent_at stands for both
                    sent = _utc(row["sent_at"])
                    arrived = tried = [sent] if sent is not None else []
                    position = 0
                else:
                    arrived, tried = sorted(arrivals.get(key, [])), sorted(attempts.get(key, []))
                    rows_of_key = [r["id"] for r in expected.get(key, [])]
                    position = rows_of_key.index(row["id"]) if row["id"] in rows_of_key else 0
                if sum(1 for t in arrived if t <= kill.at) > position:
                    resumes.append(0.0)  # it had reached Telegram before the kill
                    with_queue.append(0.0)
                    with_waits.append(0.0)
                    with_outage.append(0.0)
                    continue
                stop = next((t for t in tried if t > kill.restart_at), None)
                reclaimed = False
                for later in supervisor.kills[index + 1 :]:
                    if stop is not None and later.at >= stop:
                        break
                    claims = [_utc(c["claimed_at"]) or 0.0 for c in later.claimed if c["id"] == row["id"]]
                    if claims and claims[0] >= kill.restart_at:
                        stop, reclaimed = later.at, True  # a process after the restart had it when it was killed too
                        break
                if stop is None:
                    never += 1
                    stop = end
                resumes.append(allowed_into_chat(str(row["chat_id"]), kill.restart_at, stop))
                with_queue.append(allowed_to_send(kill.restart_at, stop))
                with_waits.append(outside_the_outage(kill.restart_at, stop))
                with_outage.append(stop - kill.restart_at)
                slowest.append((resumes[-1], index + 1, row["kind"], row["id"]))
                waits.append((resumes[-1], kill, row, stop, reclaimed))
        resume_p99 = _percentile(resumes, 0.99)
        slowest.sort(reverse=True)
        self.write_resumes(waits, end)

        # --- printing ---
        first_poll: dict[int, float] = {}
        for request in self.fake.requests:
            if request.method == "getupdates" and request.generation > 0:
                first_poll.setdefault(request.generation, request.at)
        startups = [first_poll[g] - t for g, t in supervisor.started.items() if g in first_poll]
        kinds = Counter(k.kind for k in supervisor.kills)
        poll_batches = [k.batch for k in supervisor.kills if k.kind == "poll"]
        print(
            f"  run {end - self.t0:.0f} s; {supervisor.generation} bot processes; kills {dict(kinds)} "
            f"(poll batches of {poll_batches}); the child exited by itself {len(supervisor.exits)} times "
            f"(codes {dict(Counter(c for _, _, c in supervisor.exits))})"
        )
        windows = ", ".join(f"{a - self.t0:.0f}-{b - self.t0:.0f} s" for a, b in self.disturbances)
        print(
            f"  storm and outage at {windows}; start-up (process start to first getUpdates): "
            f"p50 {_percentile(startups, 0.5):.1f} s, max {max(startups, default=0):.1f} s "
            f"over {len(startups)} processes that got that far"
        )
        print(
            f"  updates: {len(self.scripted)} scripted, {sum(confirmed.values())} confirmed, "
            f"{redelivered} delivered to two processes; lost by step {dict(lost_steps)} (ids {lost_ids[:12]})"
        )
        print(
            f"  wizards: {len(self.wizards)} ({dict(wizard_outcomes)}), {len(submitted)} with a confirmed Submit, "
            f"{len(tickets)} tickets; worker flows {len(self.worked)}; notes or resolutions recorded twice "
            f"{notes_twice}"
        )
        print(
            f"  personal messages: {len(personal)} rows due {dict(statuses)}; never arrived {never_arrived}, "
            f"failed (not for the chat) {failed_lost}, unrecognised and unsent {unknown_lost}; "
            f"repeated {repeated}"
        )
        if failures:
            print(f"  personal rows not sent, by error: {dict(failures.most_common(6))}")
        if late_rows:
            print(f"  personal rows queued in the run's last {LAST_SECONDS:.0f} s, not counted: {dict(late_rows)}")
        print(
            f"  broadcast: {len(recipients)} recipients {dict(broadcast_statuses)}, staff pressed send "
            f"{'yes' if self.broadcast_done else 'no'}; received by {sum(1 for c in recipients if received[c])}, "
            f"missing {broadcast_missing}, duplicates {broadcast_duplicates}"
        )
        print(
            f"  resume (the seconds Telegram let the bot send into the row's chat): {len(resumes)} claimed rows over "
            f"{len(supervisor.kills)} kills, "
            f"p50 {_percentile(resumes, 0.5):.1f} s, p99 {resume_p99:.1f} s, max {max(resumes, default=0):.1f} s "
            f"(slowest: {', '.join(f'{t:.0f} s kill {k} {kind} row {i}' for t, k, kind, i in slowest[:3])}); "
            f"{never} never sent by the end"
        )
        print(
            f"  resume counting the chat's queue too (the definition until run 53): p50 "
            f"{_percentile(with_queue, 0.5):.1f} s, p99 {_percentile(with_queue, 0.99):.1f} s, "
            f"max {max(with_queue, default=0):.1f} s"
        )
        print(
            f"  resume counting the storm's waits too (the definition of 2026-12-06): p50 "
            f"{_percentile(with_waits, 0.5):.1f} s, p99 {_percentile(with_waits, 0.99):.1f} s, "
            f"max {max(with_waits, default=0):.1f} s"
        )
        print(
            f"  resume counting the outage too (the definition before 2026-12-06): p50 "
            f"{_percentile(with_outage, 0.5):.1f} s, p99 {_percentile(with_outage, 0.99):.1f} s, "
            f"max {max(with_outage, default=0):.1f} s"
        )
        print(
            f"  of the updates counted lost, {len(late_ids)} have an answer when answers are matched to updates in "
            f"order (an answer after the user's next step; ids {late_ids[:12]})"
        )
        print(f"personal messages repeated after a crash: {repeated}")
        print(
            f"crash: trials={len(supervisor.kills)} updates_lost={updates_lost} tickets_missing={tickets_missing} "
            f"tickets_duplicated={tickets_duplicated} messages_lost={messages_lost} "
            f"broadcast_duplicates={broadcast_duplicates} resume_p99_s={resume_p99:.1f}"
        )


def _union(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The same stretch of time as ``windows``, as sorted intervals that do not overlap."""
    merged: list[tuple[float, float]] = []
    for start, stop in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _inside(windows: list[tuple[float, float]], at: float) -> bool:
    return any(a <= at < b for a, b in windows)


def _overlap(windows: list[tuple[float, float]], start: float, stop: float) -> float:
    """Seconds of [start, stop] inside ``windows`` (which do not overlap)."""
    return sum(max(0.0, min(stop, b) - max(start, a)) for a, b in windows)


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


def _workdir(keep: str) -> Path:
    workdir = Path(keep)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("bot.sqlite3", "bot.sqlite3-wal", "bot.sqlite3-shm", "bot.log", "trace.txt"):
        (workdir / stale).unlink(missing_ok=True)
    return workdir


async def main(args: argparse.Namespace) -> None:
    plan = QUICK if args.quick else FULL
    with contextlib.ExitStack() as stack:
        workdir = _workdir(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = stack.enter_context(_open_log(workdir / "bot.log"))
        bench = Bench(plan, args.seed, workdir)
        print(
            f"crash bench ({'quick' if args.quick else 'full'}, seed {args.seed}): {plan.residents} residents, "
            f"{plan.silent} silent ones, {plan.kills} kills, storm {plan.storm[1] - plan.storm[0]:.0f} s, "
            f"outage {plan.outage[1] - plan.outage[0]:.0f} s; work in {workdir}",
            flush=True,
        )
        end = await bench.run(log)
        bench.write_trace()
        bench.report(end)


def parse(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer kills and a 60 s outage: a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="keep the database and the bot's log in this directory")
    return parser.parse_args(None if argv is None else list(argv))


if __name__ == "__main__":
    asyncio.run(main(parse()))
