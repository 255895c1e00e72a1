"""No garbage collection while the bot starts, and what start-up made is set aside from the collector's passes
(bot/memory.py)."""

from __future__ import annotations

import gc
import inspect
from pathlib import Path

import pytest

from bot import app, cli
from bot.entry import main as front_door
from bot.memory import settle_after_start
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


def test_the_bot_settles_once_it_is_up() -> None:
    source = inspect.getsource(app.run_bot)
    assert source.count("settle_after_start()") == 1
    assert source.index("settle_after_start()") < source.index("await stop.wait()")
