"""SQLite's write-ahead log copied into the database file by a thread of its own, not by a commit.

In WAL mode SQLite copies the log back into the database file (a checkpoint) at the end of the commit that
leaves the log longer than 1,000 pages: that commit then waits while 4 MB are copied and synced. Filing a
ticket writes about 20 pages (the ticket with its indexes, its history, the outbox, the counters), so one
filing in 40-odd took 7-18 ms more than the others: most of bench/scale.py's ``route_p99_ms``.

Here a :class:`Checkpointer` thread with its own connection does it a moment after commits, with a PASSIVE
checkpoint, which never waits for a writer nor makes one wait. When nothing is written while it runs, the
next transaction starts the log from its beginning again, as after any complete checkpoint. Under writes that
never pause, the log keeps growing instead, until a commit leaves it longer than ``FALLBACK_PAGES``: that commit
checkpoints, as SQLite does, but the thread has copied all but the last few pages by then (it follows closely
once the log is past ``CHASE_PAGES``), so the commit waits for little more than two syncs. It then starts
the log again. (A RESTART checkpoint from the thread would start it again too, but holds the write lock while
it copies, and a thread of a loaded machine can lose the processor while holding it: the writer then waited
up to 35 ms.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A commit that leaves the log longer than this checkpoints itself (SQLite's own, at 1,000 by default): 40 MB
# of log at 4 KB pages.
FALLBACK_PAGES = 10_000
# Past this length the thread checkpoints every CHASE_PAUSE, so that the commit that reaches FALLBACK_PAGES
# finds little left to copy.
CHASE_PAGES = 8_000
# Commits within this many seconds share one checkpoint.
PAUSE = 0.25
CHASE_PAUSE = 0.01


@dataclass(frozen=True)
class Round:
    """One checkpoint: the log's length in pages, and how many of them are in the database file now."""

    log_pages: int
    copied_pages: int


class Checkpointer:
    """Checkpoints one SQLite database in a thread; :meth:`committed` after each commit wakes it.

    Started with the first connection of its engine and stopped with the last (storage/db.py).
    """

    def __init__(self, path: str | Path, *, pause: float = PAUSE) -> None:
        self.path = Path(path).resolve()
        self.pause = pause
        self.rounds = 0  # for tests and diagnostics
        self.last: Round | None = None  # the latest round's outcome
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        """A connection of the engine opened: start the thread if it is the first."""
        with self._lock:
            self._users += 1
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"wal-checkpoint {self.path}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """A connection of the engine closed: stop the thread (and close its connection) if it was the last, so
        that the last connection to close is the engine's own, which checkpoints and removes the log."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
            self._wake.set()
        thread.join(timeout=5)

    def committed(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                chasing = self.last is not None and self.last.log_pages >= CHASE_PAGES
                if self._stop.wait(CHASE_PAUSE if chasing else self.pause):  # commits meanwhile share this round
                    return
                self._wake.clear()
                try:
                    if connection is None:
                        # mode=rw: never create the database, should it have been removed meanwhile.
                        connection = sqlite3.connect(
                            f"file:{urllib.parse.quote(str(self.path))}?mode=rw",
                            uri=True,
                            isolation_level=None,
                            check_same_thread=False,
                        )
                    self.last = checkpoint(connection)
                    self.rounds += 1
                except sqlite3.Error as error:
                    log.warning("checkpoint of %s failed (commits checkpoint meanwhile): %s", self.path, error)
                    if connection is not None:
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()


def checkpoint(connection: sqlite3.Connection) -> Round:
    """Copy the log into the database file, without waiting for anyone or making anyone wait."""
    _busy, log_pages, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Round(log_pages, copied)
