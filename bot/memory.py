"""Garbage collection in a process that runs for weeks: what start-up made is set aside once, so that the
collector's full passes walk only what was made since.

Python's collector walks every tracked object in a full pass. After start-up (aiogram, its routers and types,
SQLAlchemy's mappers, the translations, the community's records) that is about 300,000 objects that live as long
as the process: a full pass took 150-200 ms on the 2-core machine of bench/scale.py, and fell on whichever update
was being handled (a filing of 3 ms took 200). Frozen, they are never walked again.
"""

from __future__ import annotations

import gc


def settle_after_start() -> None:
    """Collect what start-up left over, then move every object still alive into the collector's permanent
    generation (``gc.freeze``). Called once, when the bot is up (bot/app.py); bench/scale.py calls it too, when a
    district is ready, so that it measures what the product does."""
    gc.collect()
    gc.freeze()
