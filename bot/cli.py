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
import os
import shutil
import sqlite3
import sys
from pathlib import Path

from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from bot.app import create_bot, run_bot
from bot.config import SAMPLE_COMMUNITY, Settings, hide_password, load_settings
from bot.logs import setup_logging
from bot.qr import write_qr_codes
from domain.clock import system_clock
from domain.community_file import CommunityFileError, building_links, import_community, load_community_file
from domain.menus import queue_menus
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade_database

STARTER_ENV = Path(__file__).resolve().parent / "starter.env"


async def import_file(settings: Settings, path: Path) -> None:
    spec = load_community_file(path)
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        async with create_session_factory(engine)() as session:
            report = await import_community(session, spec, system_clock())
            # A running bot sets the menus of those whose duties changed (its sender reads the outbox).
            await queue_menus(session, system_clock())
    finally:
        await engine.dispose()
    print(report.summary())


async def print_qr_codes(settings: Settings, out: Path, community: str | None, username: str | None) -> None:
    username = username or settings.bot_username
    if not username:
        bot = create_bot(settings.require_token(), settings.telegram_api_server, settings.telegram_proxy)
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
        raise SystemExit("No buildings yet: import a community file first (resident-bot import FILE).")
    files = write_qr_codes(links, username, out)
    print(f"{len(files)} QR codes written to {out} (index.csv lists them)")


async def migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
    finally:
        await engine.dispose()
    print(f"{hide_password(settings.database_url)}: the schema is up to date")


def init(directory: Path) -> None:
    """Write a community file and a .env to start from; an existing file is never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    for source, name in ((SAMPLE_COMMUNITY, "community.toml"), (STARTER_ENV, ".env")):
        target = directory / name
        if target.exists():
            print(f"{target} exists: left as it is")
            continue
        shutil.copyfile(source, target)
        print(f"{target} written")
    print(
        "Next: put the bot's token in .env (BOT_TOKEN=...), replace the sample's people and buildings in "
        "community.toml with your community's, then run resident-bot in this directory."
    )


def backup(settings: Settings, out: Path) -> None:
    """Copy the SQLite database with SQLite's online backup API: a consistent copy while the bot writes."""
    url = make_url(settings.database_url)
    if not url.drivername.startswith("sqlite"):
        server = url.set(drivername="postgresql").render_as_string(hide_password=True)
        raise SystemExit(
            "DATABASE_URL is PostgreSQL: back it up with pg_dump, e.g. "
            f"pg_dump --format=custom --file={out} '{server}' (see docs/operators.md, Backups)"
        )
    database = Path(url.database or "")
    if not url.database or url.database == ":memory:" or not database.is_file():
        raise SystemExit(f"DATABASE_URL={settings.database_url}: there is no database file {database} to back up")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(database, timeout=30)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)
        (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
    finally:
        copy.close()
        source.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise SystemExit(f"backup of {database} failed its integrity check: {verdict}")
    os.replace(partial, out)  # a finished copy or none: never half a file under the name asked for
    print(f"{database} backed up to {out} ({out.stat().st_size / 1e6:.1f} MB, integrity ok)")


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
        init(args.directory)
        return
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
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
