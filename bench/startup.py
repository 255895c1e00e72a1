"""Start-up benchmark: how long the real ``python -m bot`` takes from ``exec`` to its first ``getUpdates``, to its
first answer, and to sending what a killed predecessor had claimed; with baselines measured in the same run.

    .venv/bin/python -m bench.startup                       # 10 rounds
    .venv/bin/python -m bench.startup --runs 5 --tree . --tree ../startup-base   # two source trees, alternating

It is not a test. Each round starts, in a rotating order:

- ``import``: ``python -c "import aiogram, sqlalchemy"``, wall and CPU seconds (the libraries' own floor);
- ``bare``: a bare aiogram bot (``Dispatcher``, one ``/start`` handler, ``start_polling``, SQLAlchemy's asyncio
  extension imported too) against the same loopback fake;
- ``bot`` (one per ``--tree``): the real ``python -m bot`` as bench/crash.py starts it (its helpers), on a copy
  of a SQLite file with the sample community that a bot has run on and stopped (a restart, not a first start),
  with one outbox row left claimed, its request kept, by a "killed" predecessor.

Before each start a ``/start <building>`` update is queued at the fake Bot API (bench/fake_api.py). Measured from
just before ``exec``: the first ``getUpdates`` (``poll``), the first message to that resident (``answer``), the
claimed row's request (``handover``), and the child's CPU seconds (user + system, from ``/proc``) at the first
two. The child is then killed. Printed: median and range per figure, the ratios to ``bare``, and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.crash import FIRST_RESIDENT, ROOT, bot_environment, prepare_sample, start_bot
from bench.fake_api import SENDS, FakeBotAPI, Request

HANDOVER_CHAT = 777_001  # the chat of the row the "killed" predecessor left claimed
TRIAL_SECONDS = 120.0  # a start that takes longer is given up (and printed as missing)
TICK = os.sysconf("SC_CLK_TCK")

BARE_BOT = """
import asyncio, os
import sqlalchemy.ext.asyncio  # noqa: F401  (the bot's other big library)
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import CommandStart
from aiogram.types import Message

dispatcher = Dispatcher()


@dispatcher.message(CommandStart())
async def start(message: Message) -> None:
    await message.answer("Welcome")


async def main() -> None:
    api = TelegramAPIServer.from_base(os.environ["TELEGRAM_API_SERVER"])
    bot = Bot(os.environ["BOT_TOKEN"], session=AiohttpSession(api=api))
    await dispatcher.start_polling(bot)


asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14 and 15 of the line


@dataclass
class Trial:
    variant: str
    load: float
    poll: float | None = None
    answer: float | None = None
    handover: float | None = None
    cpu_poll: float | None = None
    cpu_answer: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def start_update(payload: str) -> dict[str, Any]:
    text = f"/start {payload}"
    user = {"id": FIRST_RESIDENT, "is_bot": False, "first_name": "Resident", "language_code": "en"}
    return {
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": FIRST_RESIDENT, "type": "private", "first_name": "Resident"},
            "from": user,
            "text": text,
            "entities": [{"type": "bot_command", "offset": 0, "length": len("/start")}],
        }
    }


def leave_a_claim(db_path: Path) -> None:
    """An outbox row claimed by a process that was killed, its request kept (as tests/test_handover.py does)."""
    fields = {"chat_id": str(HANDOVER_CHAT), "text": "handed over", "parse_mode": "HTML"}
    request = {"method": "sendMessage", "fields": fields, "asks_if_fixed": False, "photo": False}
    with contextlib.closing(sqlite3.connect(db_path)) as database, database:
        database.execute(
            "INSERT INTO outbox (chat_id, kind, payload, status, priority, attempts, not_before, created_at,"
            " claimed_at, claimed_by, error, request) VALUES (?, 'ticket_update', '{}', 'claimed', 0, 0,"
            " datetime('now'), datetime('now'), datetime('now'), 'dead', '', ?)",
            (HANDOVER_CHAT, json.dumps(request)),
        )


class Bench:
    def __init__(self, workdir: Path, trees: list[Path], log: IO[bytes]) -> None:
        self.workdir = workdir
        self.trees = trees
        self.payload = ""  # a building with several units: /start with it is answered with the unit question
        self.log = log
        self.template = workdir / "template.sqlite3"

    def db_url(self, path: Path) -> str:
        return f"sqlite+aiosqlite:///{path}"

    async def prepare(self) -> None:
        places = await prepare_sample(self.db_url(self.template))
        self.payload = places[0][0]
        for tree in self.trees:  # compiles each tree's bytecode; the database is then one a bot has run on
            if not await self.warm_up(tree):
                raise SystemExit(f"the bot of {tree} did not start; see {self.workdir / 'bot.log'}")

    async def warm_up(self, tree: Path) -> bool:
        """Start the bot of ``tree`` on the template until it polls, then stop it as an operator would."""
        fake = FakeBotAPI(4242)
        api = await fake.start()
        polled = asyncio.Event()
        fake.on_request = lambda request: polled.set() if request.method == "getupdates" else None
        self.log.write(f"\n===== warm-up {tree} at {time.time():.3f} =====\n".encode())
        process = await start_bot(bot_environment(api, self.db_url(self.template), tree), self.log, tree)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(polled.wait(), timeout=TRIAL_SECONDS)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            await process.wait()
            await fake.stop()
        return polled.is_set()

    async def bot(self, tree: Path, database: Path, label: str) -> Trial:
        """One start of ``python -m bot`` from ``tree`` on ``database``."""
        leave_a_claim(database)
        fake = FakeBotAPI(4242)
        api = await fake.start()
        fake.push_update(start_update(self.payload))
        self.log.write(f"\n===== {label} at {time.time():.3f} =====\n".encode())
        self.log.flush()
        try:
            return await self.measure(
                label, fake, lambda: start_bot(bot_environment(api, self.db_url(database), tree), self.log, tree)
            )
        finally:
            await fake.stop()

    async def bare(self) -> Trial:
        fake = FakeBotAPI(4242)
        api = await fake.start()
        fake.push_update(start_update(self.payload))
        env = bot_environment(api, "sqlite+aiosqlite:///unused")
        self.log.write(f"\n===== bare at {time.time():.3f} =====\n".encode())
        self.log.flush()
        try:
            return await self.measure(
                "bare",
                fake,
                lambda: asyncio.create_subprocess_exec(
                    sys.executable, "-c", BARE_BOT, cwd=self.workdir, env=env, stdout=self.log, stderr=self.log
                ),
            )
        finally:
            await fake.stop()

    async def measure(self, variant: str, fake: FakeBotAPI, spawn: Any) -> Trial:
        trial = Trial(variant, os.getloadavg()[0])
        done = asyncio.Event()
        pid = 0
        started = 0.0

        def seen(request: Request) -> None:
            at = request.at - started
            if request.method == "getupdates" and trial.poll is None:
                trial.poll, trial.cpu_poll = at, cpu_seconds(pid)
            elif request.method in SENDS and request.chat_id == FIRST_RESIDENT and trial.answer is None:
                trial.answer, trial.cpu_answer = at, cpu_seconds(pid)
            elif request.method in SENDS and request.chat_id == HANDOVER_CHAT and trial.handover is None:
                trial.handover = at
            if trial.answer is not None and (trial.handover is not None or not variant.startswith("bot")):
                done.set()

        fake.on_request = seen
        started = time.time()
        process = await spawn()
        pid = process.pid
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=TRIAL_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()
        return trial

    def imports(self) -> Trial:
        trial = Trial("import", os.getloadavg()[0])
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", "import aiogram, sqlalchemy"], cwd=self.workdir)
        _, _, usage = os.wait4(child.pid, 0)
        child.returncode = 0
        trial.poll = time.monotonic() - started  # printed as the wall time of the import
        trial.cpu_poll = usage.ru_utime + usage.ru_stime
        return trial

    async def round(self, number: int) -> list[Trial]:
        variants: list[Any] = ["import", "bare", *self.trees]
        shift = number % len(variants)
        trials = []
        for variant in variants[shift:] + variants[:shift]:
            if variant == "import":
                trials.append(await asyncio.to_thread(self.imports))
            elif variant == "bare":
                trials.append(await self.bare())
            else:
                database = self.workdir / f"trial-{number}.sqlite3"
                shutil.copyfile(self.template, database)
                trials.append(await self.bot(variant, database, label=name_of(variant, self.trees)))
                remove_database(database)
        return trials


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def name_of(tree: Path, trees: list[Path]) -> str:
    """``bot`` for one tree; ``bot@<branch or commit>`` for several."""
    if len(trees) == 1:
        return "bot"
    found = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if found in ("", "HEAD"):
        found = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return f"bot@{found or tree.name}"


def spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    missing = f" ({len(values) - len(got)} missing)" if len(got) < len(values) else ""
    return f"{statistics.median(got):5.2f} ({min(got):.2f}-{max(got):.2f}){missing}"


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def report(trials: list[Trial], loads: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    by: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        by[trial.variant].append(trial)
    print(f"load (1, 5, 15 min) at the start {loads[0]}, at the end {loads[1]}")
    print("seconds from exec: median (min-max) over the rounds")
    header = f"{'':14} {'first getUpdates':>22} {'first answer':>22} {'hand-over send':>22}"
    print(f"{header} {'CPU at getUpdates':>22} {'CPU at answer':>22} {'load':>10}")
    for variant, group in by.items():
        if variant == "import":
            continue
        row = f"{variant:14} {spread([t.poll for t in group]):>22} {spread([t.answer for t in group]):>22}"
        row += f" {spread([t.handover for t in group]):>22} {spread([t.cpu_poll for t in group]):>22}"
        loads_ = [t.load for t in group]
        print(f"{row} {spread([t.cpu_answer for t in group]):>22} {min(loads_):4.1f}-{max(loads_):4.1f}")
    if "import" in by:
        group = by["import"]
        print(
            f"{'import':14} python -c 'import aiogram, sqlalchemy': wall {spread([t.poll for t in group])} s, "
            f"CPU {spread([t.cpu_poll for t in group])} s"
        )
    bare = by.get("bare")
    imports = by.get("import")
    for variant, group in by.items():
        if not variant.startswith("bot"):
            continue
        parts = []
        if bare:
            for what, get in (("answer", "answer"), ("CPU at answer", "cpu_answer"), ("getUpdates", "poll")):
                ours, theirs = median([getattr(t, get) for t in group]), median([getattr(t, get) for t in bare])
                if ours is not None and theirs:
                    parts.append(f"{what} {ours / theirs:.2f}x bare")
        if imports:
            ours, theirs = median([t.cpu_answer for t in group]), median([t.cpu_poll for t in imports])
            if ours is not None and theirs:
                parts.append(f"CPU at answer {ours / theirs:.2f}x the import")
        print(f"{variant}: " + ", ".join(parts))


async def run(bench: Bench, runs: int) -> None:
    before = os.getloadavg()
    await bench.prepare()
    trials: list[Trial] = []
    for number in range(runs):
        round_ = await bench.round(number)
        trials += round_
        shown = ", ".join(
            f"{t.variant} {t.answer if t.answer is not None else t.poll or float('nan'):.2f}s" for t in round_
        )
        print(f"  round {number + 1} (load {os.getloadavg()[0]:.1f}): {shown}", flush=True)
    report(trials, (before, os.getloadavg()))


def main(args: argparse.Namespace) -> None:
    trees = [Path(tree).resolve() for tree in args.tree] or [ROOT]
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
            remove_database(workdir / "template.sqlite3")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = stack.enter_context((workdir / "bot.log").open("ab"))
        print(f"start-up bench: {args.runs} rounds of {', '.join(['import', 'bare'] + [str(t) for t in trees])}")
        print(f"work in {workdir}", flush=True)
        asyncio.run(run(Bench(workdir, trees, log), args.runs))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="rounds (each starts every variant once)")
    parser.add_argument(
        "--tree", action="append", default=[], help="a source tree to run python -m bot from (repeatable)"
    )
    parser.add_argument("--keep", help="keep the databases and the children's log in this directory")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse())
