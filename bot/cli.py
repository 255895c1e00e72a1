"""Command line (``resident-bot``, or ``python -m bot``): run the bot and the operator's chores.

resident-bot                      run the bot (long polling; webhook mode when WEBHOOK_URL is set)
resident-bot init [DIR]           write community.toml and .env to start from
resident-bot import FILE          import or update a community file
resident-bot register FILE        import the household register (CSV or .xlsx) again; see [register]
resident-bot qr [--out DIR]       one QR code image per building
resident-bot migrate              bring the database to the newest schema (the bot also does at start)
resident-bot backup OUT           a consistent copy of the SQLite database, also while the bot runs
resident-bot posters [--out DIR] [--a5]
                                  one printable poster page per building, one PDF per compound
resident-bot export --community CODE --month YYYY-MM --out FILE.xlsx
                                  the month's tickets, the ledger and the rate tables as a spreadsheet
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.app import create_bot, run_bot
from bot.config import SAMPLE_COMMUNITY, Settings, hide_password, load_settings
from bot.i18n import LANGUAGES, create_i18n
from bot.logs import setup_logging
from bot.outbound.handover import HandOver
from domain.clock import system_clock
from domain.community_file import CommunityFileError, building_links, import_community, load_community_file
from domain.errors import NotFound
from domain.households import NoPhoneSecret
from domain.menus import queue_menus
from domain.posters import poster_buildings
from domain.register import (
    NoRegisterColumns,
    RegisterFileError,
    RegisterReport,
    community_for_register,
    import_register,
)
from domain.stats import Month, MonthReport, community_by_code, month_report
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade_database

if TYPE_CHECKING:
    from bot.reports.posters import PaperSize

# QR codes (segno), posters (fpdf2), spreadsheets (openpyxl) are imported by the commands that make them: the bot's
# own start (the default command) must not wait for them (docs/delivery.md, "Start-up").

STARTER_ENV = Path(__file__).resolve().parent / "starter.env"
T = TypeVar("T")


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


def read_register(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SystemExit(f"register: {path}: cannot read the file: {error.strerror or error}") from error


async def bot_username(settings: Settings, username: str | None) -> str:
    """--bot-username, else BOT_USERNAME, else asked from Telegram with the token."""
    username = username or settings.bot_username
    if not username:
        bot = create_bot(settings.require_token(), settings.telegram_api_server, settings.telegram_proxy)
        try:
            username = (await bot.get_me()).username
        finally:
            await bot.session.close()
    if not username:
        raise SystemExit("Could not learn the bot's username: set BOT_USERNAME or pass --bot-username.")
    return username


async def read_database(settings: Settings, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Bring the database up to date, then ``read`` from it in one session."""
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        async with create_session_factory(engine)() as session:
            return await read(session)
    finally:
        await engine.dispose()


async def import_register_file(settings: Settings, path: Path, data: bytes, community: str | None) -> None:
    async def read(session: AsyncSession) -> RegisterReport:
        target = await community_for_register(session, community)
        return await import_register(
            session,
            community_id=target.id,
            data=data,
            filename=path.name,
            secret=settings.phone_secret(),
            now=system_clock(),
        )

    print((await read_database(settings, read)).summary())


NO_BUILDINGS = "No buildings yet: import a community file first (resident-bot import FILE)."


async def print_qr_codes(settings: Settings, out: Path, community: str | None, username: str | None) -> None:
    username = await bot_username(settings, username)
    links = await read_database(settings, lambda session: building_links(session, community))
    if not links:
        raise SystemExit(NO_BUILDINGS)
    from bot.qr import write_qr_codes

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


async def export_month(settings: Settings, community: str, month: Month, locale: str | None) -> tuple[bytes, int]:
    """The same spreadsheet /stats sends, for the office's own files or the street office's request; with the
    number of the month's tickets in it."""

    async def read(session: AsyncSession) -> MonthReport:
        try:
            found = await community_by_code(session, community)
        except NotFound:
            raise SystemExit(f"No community with the code {community!r}: import its file first.") from None
        return await month_report(
            session,
            viewer_id=None,
            community_id=found.id,
            month=month,
            now=system_clock(),
            yellow_share=settings.ledger_yellow_share,
        )

    from bot.reports.spreadsheet import month_workbook

    report = await read_database(settings, read)
    i18n = create_i18n(settings.default_locale)
    with i18n.context(), i18n.use_locale(locale or settings.default_locale):
        return month_workbook(report), len(report.tickets)


def write_export(settings: Settings, community: str, month: Month, out: Path, locale: str | None) -> None:
    workbook, tickets = asyncio.run(export_month(settings, community, month, locale))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(workbook)
    print(f"{community} {month}: {tickets} tickets written to {out}")


async def print_posters(
    settings: Settings, out: Path, community: str | None, username: str | None, paper: PaperSize
) -> None:
    username = await bot_username(settings, username)
    posters = await read_database(settings, lambda session: poster_buildings(session, community))
    if not posters:
        raise SystemExit(NO_BUILDINGS)
    from bot.reports.posters import write_posters

    files = await asyncio.to_thread(write_posters, posters, username, out, create_i18n(), paper)
    print(f"{len(posters)} {paper.name} posters in {len(files)} files (one per compound) written to {out}")


def _month(text: str) -> Month:
    try:
        return Month.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None, handover: HandOver | None = None) -> None:
    parser = argparse.ArgumentParser(prog="resident-bot", description="Resident feedback bot")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the bot (the default)")
    starter = commands.add_parser("init", help="write community.toml and .env to start from")
    starter.add_argument("directory", type=Path, nargs="?", default=Path("."))
    importer = commands.add_parser("import", help="import or update a community file")
    importer.add_argument("file", type=Path)
    register = commands.add_parser("register", help="import the household register (CSV or .xlsx) again")
    register.add_argument("file", type=Path)
    register.add_argument("--community", help="the community code; needed only when there are several")
    qr = commands.add_parser("qr", help="write one QR code per building")
    qr.add_argument("--out", type=Path, default=Path("qr"))
    qr.add_argument("--community", help="only this community code")
    qr.add_argument("--bot-username", help="default: BOT_USERNAME, else asked from Telegram")
    commands.add_parser("migrate", help="bring the database to the newest schema")
    saver = commands.add_parser("backup", help="copy the SQLite database consistently, also while the bot runs")
    saver.add_argument("out", type=Path)
    posters = commands.add_parser("posters", help="one printable PDF page per building, one file per compound")
    posters.add_argument("--out", type=Path, default=Path("posters"))
    posters.add_argument("--a5", action="store_true", help="A5 pages instead of A4")
    posters.add_argument("--community", help="only this community code")
    posters.add_argument("--bot-username", help="default: BOT_USERNAME, else asked from Telegram")
    export = commands.add_parser("export", help="the month's spreadsheet: tickets, ledger, rate tables")
    export.add_argument("--community", required=True, help="the community's code, e.g. jsx")
    export.add_argument("--month", required=True, type=_month, help="YYYY-MM")
    export.add_argument("--out", required=True, type=Path, help="the .xlsx file to write")
    export.add_argument("--language", choices=sorted(LANGUAGES), help="default: DEFAULT_LOCALE")
    args = parser.parse_args(argv)

    if args.command == "init":
        init(args.directory)
        return
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "import":
            asyncio.run(import_file(settings, args.file))
        elif args.command == "posters":
            from bot.reports.posters import A4, A5

            paper = A5 if args.a5 else A4
            asyncio.run(print_posters(settings, args.out, args.community, args.bot_username, paper))
        elif args.command == "export":
            write_export(settings, args.community, args.month, args.out, args.language)
        elif args.command == "register":
            asyncio.run(import_register_file(settings, args.file, read_register(args.file), args.community))
        elif args.command == "qr":
            asyncio.run(print_qr_codes(settings, args.out, args.community, args.bot_username))
        elif args.command == "migrate":
            asyncio.run(migrate(settings))
        elif args.command == "backup":
            backup(settings, args.out)
        else:
            settings.require_token()
            asyncio.run(run_bot(settings, handover))
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
        sys.exit(
            f"Cannot reach Telegram ({settings.telegram_where}): {error.message}. "
            "Check the network, TELEGRAM_PROXY or TELEGRAM_API_SERVER."
        )
    except (OSError, OperationalError, InterfaceError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        sys.exit(f"Cannot use the database {hide_password(settings.database_url)}: {reason}")
    except KeyboardInterrupt:
        pass
