"""The command line's front door (``resident-bot``, ``python -m bot``): the settings are checked before the
heavy imports (aiogram and SQLAlchemy take seconds on a small machine), so that a bad one is reported at once,
before anything is touched. bot/cli.py does the rest."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["init"] and not {"-h", "--help"} & set(args):
        from bot.config import load_settings

        load_settings()  # SettingsError: one line per bad setting
    from bot.cli import main as cli

    cli(args)
