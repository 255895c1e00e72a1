"""The command line's front door (``resident-bot``, ``python -m bot``): the settings are checked before the
heavy imports (aiogram and SQLAlchemy take seconds on a small machine), so that a bad one is reported at once,
before anything is touched, and a polling bot starts handing over what a killed predecessor had claimed
(bot/outbound/handover.py) while it loads the rest. bot/cli.py does the rest."""

from __future__ import annotations

import sys

from bot import memory


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    handover = None
    running = args[:1] in ([], ["run"]) and not {"-h", "--help"} & set(args)
    if running:  # the bot itself: no garbage collection until it is up (bot/memory.py)
        memory.pause_collection()
    try:
        if args[:1] != ["init"] and not {"-h", "--help"} & set(args):
            from bot.config import load_settings

            settings = load_settings()  # SettingsError: one line per bad setting
            if running and settings.webhook_url is None and settings.bot_token is not None:
                # What a killed predecessor had claimed goes out while the rest of the bot loads (its sender waits).
                from bot.outbound.handover import HandOver

                handover = HandOver.start(settings)
        from bot.lazy_types import import_aiogram

        import_aiogram()  # half of aiogram's import is building validators most bots never use
        from bot.cli import main as cli

        cli(args, handover)
    finally:
        memory.resume_collection()  # a bot that stopped before it was up, or the tests' own process
