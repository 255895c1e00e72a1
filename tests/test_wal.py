"""SQLite's log is checkpointed by a thread of its own, not at the end of a commit (storage/wal.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from storage.db import create_engine, wal_checkpointer
from storage.wal import FALLBACK_PAGES, Checkpointer, checkpoint


async def _until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _exists(path: Path) -> bool:
    return path.exists()


def _log_pages(path: Path) -> int:
    """The log's length in pages (a checkpoint answers it, and copies them too)."""
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


async def test_a_file_database_is_checkpointed_by_a_thread_and_commits_leave_it(tmp_path: Path) -> None:
    database = tmp_path / "wal.sqlite3"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    checkpointer = wal_checkpointer(engine)
    assert checkpointer is not None and not checkpointer.running  # nothing opened yet
    async with engine.begin() as conn:
        # The engine's connection checkpoints at its commits only as a backstop, far later than SQLite's 1,000.
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == FALLBACK_PAGES
        await conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
    assert checkpointer.running
    for k in range(20):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (:x)"), [{"x": f"{k}-{n}" * 50} for n in range(200)])
    await _until(lambda: checkpointer.last is not None and checkpointer.last.log_pages > 100)
    last = checkpointer.last
    assert last is not None and last.copied_pages == last.log_pages  # the thread copied what the commits wrote
    await engine.dispose()
    assert not checkpointer.running
    # The engine's own connection closed last: SQLite checkpointed and removed the log as it always does.
    assert not _exists(Path(f"{database}-wal"))
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (4000,)


async def test_a_commit_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    """synchronous=FULL: a power cut loses nothing committed, such as the inbox's record of updates, written before
    Telegram is told they arrived (it does not send them again), or a report its resident was told was sent."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'durable.sqlite3'}")
    try:
        async with engine.begin() as conn:
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        await engine.dispose()


async def test_the_thread_starts_again_with_a_new_connection(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'again.sqlite3'}")
    checkpointer = wal_checkpointer(engine)
    assert checkpointer is not None
    for _ in range(2):
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x)")
        assert checkpointer.running
        await engine.dispose()
        assert not checkpointer.running


def test_only_sqlite_files_have_one() -> None:
    assert wal_checkpointer(create_engine("sqlite+aiosqlite:///:memory:")) is None
    assert wal_checkpointer(create_engine("postgresql+asyncpg://bot@127.0.0.1:9/nothing")) is None


def test_a_checkpoint_waits_for_no_writer_and_a_complete_one_starts_the_log_again(tmp_path: Path) -> None:
    database = tmp_path / "restart.sqlite3"
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x TEXT)")

    def write(rows: int, *, commit: bool = True) -> None:
        writer.execute("BEGIN IMMEDIATE")
        writer.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(rows)])
        if commit:
            writer.execute("COMMIT")

    write(400)
    other = sqlite3.connect(database, isolation_level=None, timeout=30)
    write(10, commit=False)  # a writer in the middle of its transaction
    began = time.monotonic()
    done = checkpoint(other)
    assert time.monotonic() - began < 5  # did not wait for the writer (its busy timeout is 30 s)
    assert done.log_pages > 20 and done.copied_pages == done.log_pages  # everything committed is copied
    writer.execute("COMMIT")
    assert checkpoint(other).copied_pages > done.log_pages
    write(10)
    # Nothing was written after that complete checkpoint: this transaction wrote the log from its beginning.
    assert _log_pages(database) < done.log_pages / 4
    other.close()
    writer.close()


async def test_a_checkpointer_of_a_removed_database_creates_nothing(tmp_path: Path) -> None:
    database = tmp_path / "gone.sqlite3"
    checkpointer = Checkpointer(database, pause=0.01)
    checkpointer.open()
    checkpointer.committed()
    await asyncio.sleep(0.1)
    checkpointer.close()
    assert not _exists(database) and checkpointer.rounds == 0
