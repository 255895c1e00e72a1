"""What the command line does (bot/cli.py reads the arguments and settings first, so that a mistake there is
reported before this module's heavy imports)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.app import create_bot
from bot.config import SAMPLE_COMMUNITY, Settings, hide_password
from bot.qr import write_qr_codes
from domain.clock import system_clock
from domain.community_file import building_links, import_community, load_community_file
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
