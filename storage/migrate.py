"""Schema migrations with Alembic, the same on SQLite and PostgreSQL.

    python -m storage.migrate [upgrade]            bring DATABASE_URL to the newest schema
    python -m storage.migrate revision -m "what"   after changing storage/models.py: write the next migration

Both read DATABASE_URL as the bot does: from the environment, else from ``.env``, else the default SQLite file.

The bot calls :func:`upgrade_database` at every start; on an up-to-date database it only reads the version, and
without Alembic: importing it and reading the migration scripts cost a restarted bot a tenth of a second of CPU
(docs/delivery.md, "Start-up"). :data:`HEAD` names the newest revision (tests/test_migrations.py checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision in storage/migrations/versions: a database at it needs nothing from Alembic.
HEAD = "0016_ticket_counts"
# Serialises bot processes that start at once against one PostgreSQL database.
_PG_LOCK_KEY = 0x66656564626F74  # "feedbot"


def alembic_config() -> Config:
    """Alembic's configuration, built in code so no alembic.ini is needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if importlib.util.find_spec("ruff") is not None:  # tidy generated revisions (ruff is a dev dependency)
        hooks = {"ruff_format": "format --quiet", "ruff_fix": "check --fix --quiet"}
        hooks = {name: f"{options} REVISION_SCRIPT_FILENAME" for name, options in hooks.items()}
        config.set_section_option("post_write_hooks", "hooks", ", ".join(hooks))
        for hook, options in hooks.items():
            for key, value in (("type", "module"), ("module", "ruff"), ("options", options)):
                config.set_section_option("post_write_hooks", f"{hook}.{key}", value)
    return config


async def upgrade_database(engine: AsyncEngine) -> None:
    """Migrate the database to the newest schema, in one transaction; safe to call on every start."""
    if await current_revision(engine) == HEAD:
        return

    from alembic import command

    await run_alembic(engine, lambda config: command.upgrade(config, "head"))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision as Alembic wrote it; None when there is none (a new database)."""
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except DBAPIError:  # no such table
        return None


@contextlib.asynccontextmanager
async def exclusive(engine: AsyncEngine) -> AsyncIterator[None]:
    """Processes starting at once take turns here (a PostgreSQL advisory lock, the migrations' own); SQLite's
    transactions take turns by themselves (BEGIN IMMEDIATE)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
            await conn.commit()


async def make_revision(engine: AsyncEngine, message: str) -> None:
    """Write the next migration by comparing the models with the (up-to-date) database."""

    from alembic import command
    from alembic.script import ScriptDirectory

    def revision(config: Config) -> None:
        revisions = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
        numbers = [int(r) for r in revisions if r.isdigit()]
        command.revision(config, message, autogenerate=True, rev_id=f"{max(numbers, default=0) + 1:04d}")

    await run_alembic(engine, revision)


async def run_alembic(engine: AsyncEngine, action: Callable[[Config], Any]) -> None:
    """Run an Alembic command (``action(config)``) in one transaction on a connection of ``engine``."""
    config = alembic_config()

    def call(connection: Connection) -> None:
        config.attributes["connection"] = connection
        action(config)

    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying and dropping it, which foreign keys would block. The pragma
            # only works outside a transaction; foreign_key_check below verifies the result instead.
            await _sqlite_pragma(conn, "PRAGMA foreign_keys=OFF")
        try:
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                await conn.run_sync(call)
                if sqlite and (broken := (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()):
                    raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                await _sqlite_pragma(conn, "PRAGMA foreign_keys=ON")


async def _sqlite_pragma(conn: AsyncConnection, sql: str) -> None:
    def run(sync_conn: Connection) -> None:
        # On the DBAPI connection, so SQLAlchemy does not open a transaction (BEGIN IMMEDIATE) first.
        cursor = sync_conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    await conn.run_sync(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.migrate", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("upgrade", help="migrate DATABASE_URL to the newest schema (the default)")
    revision = commands.add_parser("revision", help="autogenerate the next migration from the models")
    revision.add_argument("-m", "--message", required=True, help="what the migration changes")
    args = parser.parse_args(argv)

    from bot.config import load_settings  # the bot's own settings and checks; storage needs them only here

    url = load_settings().database_url
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def run() -> None:
        engine = create_engine(url)
        try:
            if args.command == "revision":
                await make_revision(engine, args.message)
            else:
                await upgrade_database(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


if __name__ == "__main__":
    main()
