"""What start-up made is set aside from the collector's passes (bot/memory.py)."""

from __future__ import annotations

import gc
import inspect

from bot import app
from bot.memory import settle_after_start


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
    finally:
        gc.unfreeze()


def test_the_bot_settles_once_it_is_up() -> None:
    source = inspect.getsource(app.run_bot)
    assert source.count("settle_after_start()") == 1
    assert source.index("settle_after_start()") < source.index("await stop.wait()")
