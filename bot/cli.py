"""Command line: run the bot, import a community file, print QR codes for the stairwell notice boards.

python -m bot                      run the bot (long polling)
python -m bot import FILE          import or update a community file
python -m bot qr [--out DIR]       one QR code image per building
python -m bot register FILE        import the household register (CSV or .xlsx) again; see [register]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError

from bot.app import create_bot, run_polling
from bot.config import Settings
from bot.qr import write_qr_codes
from domain.clock import system_clock
from domain.community_file import CommunityFileError, building_links, import_community, load_community_file
from domain.households import NoPhoneSecret
from domain.register import NoRegisterColumns, RegisterFileError, community_for_register, import_register
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade_database


async def import_file(settings: Settings, path: Path) -> None:
    spec = load_community_file(path)
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        async with create_session_factory(engine)() as session:
            report = await import_community(session, spec, system_clock())
    finally:
        await engine.dispose()
    print(report.summary())


def read_register(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SystemExit(f"register: {path}: cannot read the file: {error.strerror or error}") from error


async def import_register_file(settings: Settings, path: Path, data: bytes, community: str | None) -> None:
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        async with create_session_factory(engine)() as session:
            target = await community_for_register(session, community)
            report = await import_register(
                session,
                community_id=target.id,
                data=data,
                filename=path.name,
                secret=settings.phone_secret(),
                now=system_clock(),
            )
    finally:
        await engine.dispose()
    print(report.summary())


async def print_qr_codes(settings: Settings, out: Path, community: str | None, username: str | None) -> None:
    username = username or settings.bot_username
    if not username:
        bot = create_bot(settings.require_token(), settings.telegram_api_server)
        try:
            username = (await bot.get_me()).username
        finally:
            await bot.session.close()
    if not username:
        raise SystemExit("Could not learn the bot's username: set BOT_USERNAME or pass --bot-username.")
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        async with create_session_factory(engine)() as session:
            links = await building_links(session, community)
    finally:
        await engine.dispose()
    if not links:
        raise SystemExit("No buildings yet: import a community file first (python -m bot import FILE).")
    files = write_qr_codes(links, username, out)
    print(f"{len(files)} QR codes written to {out} (index.csv lists them)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Resident feedback bot")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the bot (the default)")
    importer = commands.add_parser("import", help="import or update a community file")
    importer.add_argument("file", type=Path)
    register = commands.add_parser("register", help="import the household register (CSV or .xlsx) again")
    register.add_argument("file", type=Path)
    register.add_argument("--community", help="the community code; needed only when there are several")
    qr = commands.add_parser("qr", help="write one QR code per building")
    qr.add_argument("--out", type=Path, default=Path("qr"))
    qr.add_argument("--community", help="only this community code")
    qr.add_argument("--bot-username", help="default: BOT_USERNAME, else asked from Telegram")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    try:
        if args.command == "import":
            asyncio.run(import_file(settings, args.file))
        elif args.command == "register":
            asyncio.run(import_register_file(settings, args.file, read_register(args.file), args.community))
        elif args.command == "qr":
            asyncio.run(print_qr_codes(settings, args.out, args.community, args.bot_username))
        else:
            settings.require_token()
            asyncio.run(run_polling(settings))
    except CommunityFileError as error:
        sys.exit(f"community file: {error}")
    except RegisterFileError as error:
        sys.exit(f"register: {args.file}: {error}")
    except NoRegisterColumns as error:
        sys.exit(f"register: {error}. Add a [register] section to the community file and import it first.")
    except NoPhoneSecret:
        sys.exit("register: HOUSEHOLD_PHONE_SECRET is not set: put a long random secret in .env (see .env.example).")
    except TelegramUnauthorizedError:
        sys.exit("Telegram rejected BOT_TOKEN: copy the token again from @BotFather (/mybots → API Token).")
    except TelegramNetworkError as error:
        where = settings.telegram_api_server or "api.telegram.org"
        sys.exit(f"Cannot reach Telegram ({where}): {error.message}. Check the network or TELEGRAM_API_SERVER.")
    except KeyboardInterrupt:
        pass
