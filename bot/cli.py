"""Command line (``resident-bot``, or ``python -m bot``): run the bot and the operator's chores.

resident-bot                      run the bot (long polling; webhook mode when WEBHOOK_URL is set)
resident-bot init [DIR]           write community.toml and .env to start from
resident-bot import FILE          import or update a community file
resident-bot qr [--out DIR]       one QR code image per building
resident-bot migrate              bring the database to the newest schema (the bot also does at start)
resident-bot backup OUT           a consistent copy of the SQLite database, also while the bot runs
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.config import hide_password, load_settings
from bot.logs import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="resident-bot", description="Resident feedback bot")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the bot (the default)")
    starter = commands.add_parser("init", help="write community.toml and .env to start from")
    starter.add_argument("directory", type=Path, nargs="?", default=Path("."))
    importer = commands.add_parser("import", help="import or update a community file")
    importer.add_argument("file", type=Path)
    qr = commands.add_parser("qr", help="write one QR code per building")
    qr.add_argument("--out", type=Path, default=Path("qr"))
    qr.add_argument("--community", help="only this community code")
    qr.add_argument("--bot-username", help="default: BOT_USERNAME, else asked from Telegram")
    commands.add_parser("migrate", help="bring the database to the newest schema")
    saver = commands.add_parser("backup", help="copy the SQLite database consistently, also while the bot runs")
    saver.add_argument("out", type=Path)
    args = parser.parse_args(argv)

    if args.command == "init":
        from bot.commands import init

        init(args.directory)
        return
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    # Only now the heavy imports (aiogram, SQLAlchemy: seconds on a small machine), after the settings passed.
    from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from bot.app import run_bot
    from bot.commands import backup, import_file, migrate, print_qr_codes
    from domain.community_file import CommunityFileError

    try:
        if args.command == "import":
            asyncio.run(import_file(settings, args.file))
        elif args.command == "qr":
            asyncio.run(print_qr_codes(settings, args.out, args.community, args.bot_username))
        elif args.command == "migrate":
            asyncio.run(migrate(settings))
        elif args.command == "backup":
            backup(settings, args.out)
        else:
            settings.require_token()
            asyncio.run(run_bot(settings))
    except CommunityFileError as error:
        sys.exit(f"community file: {error}")
    except TelegramUnauthorizedError:
        sys.exit("Telegram rejected BOT_TOKEN: copy the token again from @BotFather (/mybots → API Token).")
    except TelegramNetworkError as error:
        sys.exit(
            f"Cannot reach Telegram ({settings.telegram_where}): {error.message}. "
            "Check the network, TELEGRAM_PROXY or TELEGRAM_API_SERVER."
        )
    except (OSError, OperationalError, InterfaceError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        sys.exit(f"Cannot use the database {hide_password(settings.database_url)}: {reason}")
    except KeyboardInterrupt:
        pass
