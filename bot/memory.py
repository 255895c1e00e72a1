"""Garbage collection in a process that runs for weeks: none while it starts, and what start-up made is set aside
once, so that the collector's full passes walk only what was made since.

Python's collector walks every tracked object in a full pass. After start-up (aiogram, its routers and types,
SQLAlchemy's mappers, the translations, the community's records) that is about 300,000 objects that live as long
as the process: a full pass took 150-200 ms on the 2-core machine of bench/scale.py, and fell on whichever update
was being handled (a filing of 3 ms took 200). Frozen, they are never walked again.

While they are being made (the imports: pydantic builds aiogram's ~400 Telegram types), the collector ran some 600
times and found almost nothing to free: 0.5 s of a start's 3.8 s of CPU (bench/startup.py). So a starting bot
pauses it (bot/entry.py) until it is up.
"""

from __future__ import annotations

import gc


def pause_collection() -> None:
    """No collection until :func:`settle_after_start` (or :func:`resume_collection`): start-up makes objects that
    live as long as the process, and little garbage."""
    gc.disable()


def resume_collection() -> None:
    gc.enable()


def settle_after_start() -> None:
    """Collect what start-up left over, then move every object still alive into the collector's permanent
    generation (``gc.freeze``), and collect as usual from then on. Called once, when the bot is up (bot/app.py);
    bench/scale.py calls it too, when a district is ready, so that it measures what the product does."""
    gc.collect()
    gc.freeze()
    gc.enable()
