"""No garbage collection while the bot starts, and what start-up made is set aside from the collector's passes
(bot/memory.py); the start's work that can wait comes after the first answers (bot/app.py, ``warm_up``)."""

from __future__ import annotations

import asyncio
import gc
import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import app, cli
from bot.config import Settings
from bot.entry import main as front_door
from bot.i18n import create_i18n
from bot.memory import settle_after_start
from scheduler.jobs import create_scheduler, stop_scheduler
from storage.db import SessionFactory
from tests.processes import SETTINGS


def test_start_up_objects_are_frozen_and_garbage_collected_first() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    Cycle()  # garbage that only the collector frees
    alive = Cycle()
    try:
        settle_after_start()
        assert gc.get_freeze_count() > 0
        assert not any(isinstance(o, Cycle) and o is not alive for o in gc.get_objects())  # collected first
        assert not any(o is alive for o in gc.get_objects())  # frozen: no longer in the generations walked
        assert gc.isenabled()
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(("args", "paused"), [([], True), (["run"], True), (["migrate"], False), (["qr"], False)])
def test_the_collector_is_paused_only_while_the_bot_itself_starts(
    args: list[str], paused: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOT_TOKEN", "1:TOKEN")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'none.sqlite3'}")  # nothing to hand over
    monkeypatch.chdir(tmp_path)
    seen: list[bool] = []
    monkeypatch.setattr(cli, "main", lambda *_: seen.append(gc.isenabled()))
    assert gc.isenabled()
    front_door(args)
    assert seen == [not paused]
    assert gc.isenabled(), "on again once the command is over, however it ended"


def test_the_collector_is_on_again_when_the_start_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def fail(*_: object) -> None:
        raise SystemExit("Cannot use the database")

    monkeypatch.setattr(cli, "main", fail)
    with pytest.raises(SystemExit):
        front_door([])
    assert gc.isenabled()


async def test_the_warm_up_starts_the_jobs_at_once_and_settles_the_collector(
    engine: AsyncEngine, session_factory: SessionFactory, community: None
) -> None:
    scheduler = create_scheduler()
    settings = Settings(bot_token=SecretStr("1:TOKEN"))
    gc.disable()
    try:
        before = datetime.now(UTC)
        await app.warm_up(settings, scheduler, session_factory, engine, lambda: None, create_i18n())
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.enable()
        gc.unfreeze()
        await stop_scheduler(scheduler)
    for name in ("deadline-sweep", "confirmation-sweep", "topic-candidates", "month-summaries", "broadcast-catch-up"):
        assert jobs[name].next_run_time <= before + timedelta(seconds=5), f"{name}: run once as the warm-up comes"
    assert {"statistics", "draw-charts-ahead"} <= set(jobs)
    assert any(name.startswith("broadcast-jsx-") for name in jobs), "the community's crontabs"


async def test_the_warm_up_waits_for_its_seconds_and_not_for_a_stop() -> None:
    stop = asyncio.Event()
    ran: list[str] = []

    async def then() -> None:
        ran.append("warm-up")

    await app.after(0.01, stop, then)
    assert ran == ["warm-up"]
    stop.set()
    await app.after(10, stop, then)
    assert ran == ["warm-up"], "a bot stopping before its warm-up does not start its jobs"


def test_the_bot_polls_before_it_warms_up() -> None:
    source = inspect.getsource(app.run_bot)
    assert "settle_after_start()" not in source and "settle_after_start()" in inspect.getsource(app.warm_up)
    assert source.index("inbox.poll(stop)") < source.index("after(") < source.index("await stop.wait()")
    assert app.WARM_UP_AFTER <= 10
