"""aiogram FSM storage in the bot's own database, so a half-finished wizard survives a restart.

The process keeps what it read and wrote in memory and writes each update's changes in one transaction when
the update has been handled (:class:`FsmFlushMiddleware`), instead of one transaction per ``set_state`` or
``update_data`` call: on SQLite a transaction costs more than the rest of the update. That makes this storage
right for one bot process (which SQLite implies). Several processes share wizard state through Redis
(``REDIS_URL``, aiogram's RedisStorage) instead.

Each update writes only the records it changed itself, in key order. On PostgreSQL one process handles many
updates at once; when every commit wrote every pending record of the process, two commits locked each other's
rows in opposite orders and deadlocked.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from itertools import groupby
from typing import Any, cast

from aiogram import BaseMiddleware
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from aiogram.types import TelegramObject
from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.db import SessionFactory, SessionHooks, add_hooks, execute_pipelined, remove_hooks
from storage.models import FsmRecord

Record = tuple[str | None, dict[str, Any]]

# The keys the update being handled has changed (see SqlStorage.tracking_update): its commits write these only.
_changed_by_update: ContextVar[set[str] | None] = ContextVar("fsm_changed_by_update", default=None)
# Saves the update's unwritten wizard changes (FsmFlushMiddleware); see save_before_speaking.
_save_pending: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("fsm_save_pending", default=None)


async def save_before_speaking() -> None:
    """Called before every Bot API call made while an update is handled (bot/outbound/replies.py).

    The update's wizard changes are committed first, with the update's "handled" (bot/intake.py): a reply that
    Telegram makes the bot retry for long (a 429, an outage), or a crash while the bot speaks, can then not leave
    the step undone while the person has seen its answer, nor keep the update unfinished for the restart to redo.
    """
    save = _save_pending.get()
    if save is not None:
        await save()


class SqlStorage(BaseStorage):
    def __init__(
        self, session_factory: SessionFactory, key_builder: KeyBuilder | None = None, cache_size: int = 50_000
    ) -> None:
        self._sessions = session_factory
        self._keys = key_builder or DefaultKeyBuilder()
        self._cache: OrderedDict[str, Record] = OrderedDict()
        self._dirty: set[str] = set()
        self._cache_size = cache_size
        self._loading = asyncio.Lock()
        self._loaded = False
        # True while the cache holds every stored record: then a key it lacks has no record, and nobody's
        # first update costs a database read. The first eviction ends that.
        self._complete = False

    async def _load_all(self) -> None:
        async with self._loading:
            if self._loaded:
                return
            async with self._sessions() as session, session.begin():
                rows = list(await session.scalars(select(FsmRecord).limit(self._cache_size + 1)))
            for row in rows[: self._cache_size]:
                self._cache.setdefault(row.key, (row.state, dict(row.data)))
            self._complete = len(rows) <= self._cache_size
            self._loaded = True

    async def _get(self, key: StorageKey) -> tuple[str, Record]:
        if not self._loaded:
            await self._load_all()
        storage_key = self._keys.build(key)
        record = self._cache.get(storage_key)
        if record is not None:
            self._cache.move_to_end(storage_key)
            return storage_key, record
        if self._complete:
            return storage_key, (None, {})
        async with self._sessions() as session, session.begin():
            row = await session.get(FsmRecord, storage_key)
        record = (row.state, dict(row.data)) if row else (None, {})
        self._remember(storage_key, record)
        return storage_key, record

    def _remember(self, storage_key: str, record: Record) -> None:
        self._cache[storage_key] = record
        self._cache.move_to_end(storage_key)
        while len(self._cache) > self._cache_size:
            oldest = next(iter(self._cache))
            if oldest in self._dirty:  # never forget what is not yet written
                break
            del self._cache[oldest]
            self._complete = False

    def _changed(self, storage_key: str) -> None:
        self._dirty.add(storage_key)
        changes = _changed_by_update.get()
        if changes is not None:
            changes.add(storage_key)

    @contextmanager
    def tracking_update(self, key: StorageKey | None) -> Iterator[set[str]]:
        """Collects the keys changed inside the block: the update's own, for its commits to write.

        The update's own ``key`` is in from the start: if an earlier update of the same chat left it unwritten
        (its write failed), this one takes it along rather than leaving it to :meth:`close`. No other update
        can be changing it meanwhile, as the dispatcher's event isolation holds that key's lock.
        """
        changes = {self._keys.build(key)} if key is not None else set()
        token = _changed_by_update.set(changes)
        try:
            yield changes
        finally:
            _changed_by_update.reset(token)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        storage_key, (_, data) = await self._get(key)
        self._remember(storage_key, (state.state if isinstance(state, State) else state, data))
        self._changed(storage_key)

    async def get_state(self, key: StorageKey) -> str | None:
        return (await self._get(key))[1][0]

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        storage_key, (state, _) = await self._get(key)
        self._remember(storage_key, (state, dict(data)))
        self._changed(storage_key)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return dict((await self._get(key))[1][1])

    def _pending(self, keys: Collection[str]) -> dict[str, Record]:
        return {key: self._cache[key] for key in keys if key in self._dirty}

    async def flush(self, keys: Collection[str] | None = None) -> None:
        """Write the changed records among ``keys`` (all of them when None) in one transaction of its own."""
        records = self._pending(self._dirty if keys is None else keys)
        if not records:
            return
        async with self._sessions() as session, session.begin():
            for statement, params in _writes(records, session.get_bind().dialect.name):
                await session.execute(statement, params)
        self._written(records)

    def write_along(self, session: AsyncSession, keys: Collection[str]) -> SessionHooks:
        """Write the pending changes among ``keys`` inside every transaction ``session`` commits, not in one more.

        ``keys`` are the update's own (:meth:`tracking_update`), read at each commit. A wizard step that changes
        state and then calls the domain (filing the ticket, say) thus commits both at once; what is written is
        marked clean only when that transaction has committed. Returns the hooks, for ``remove_hooks``.
        """
        hooks = _WriteAlong(self, keys)
        add_hooks(session, hooks)
        return hooks

    def _written(self, records: dict[str, Record]) -> None:
        """These values are in the database now; a key changed again since stays dirty."""
        for key, record in records.items():
            if self._cache.get(key) is record:
                self._dirty.discard(key)
                if self._complete and _is_empty(record):
                    del self._cache[key]  # a deleted record is what a missing key means already

    async def close(self) -> None:
        await self.flush()


class _WriteAlong(SessionHooks):
    def __init__(self, storage: SqlStorage, keys: Collection[str]) -> None:
        self.storage, self.keys = storage, keys
        self.written: dict[str, Record] = {}

    def before_commit(self, session: Session) -> None:
        records = self.storage._pending(self.keys)
        if not records:
            return
        for statement, params in _writes(records, session.get_bind().dialect.name):
            execute_pipelined(session, statement, params)
        self.written.update(records)

    def after_commit(self) -> None:
        if self.written:
            self.storage._written(self.written)
            self.written = {}

    def after_rollback(self) -> None:
        self.written = {}


def _writes(records: dict[str, Record], dialect: str) -> list[tuple[Any, Any]]:
    """The statements that store ``records``; an empty record is deleted, keeping the table small.

    Rows are written (and so locked) in key order, also across the upserts and deletes: two transactions
    writing some of the same keys then wait for each other at most one way round, never in a cycle.
    """
    writes: list[tuple[Any, Any]] = []
    for empty, run in groupby(sorted(records.items()), key=lambda item: _is_empty(item[1])):
        if empty:
            writes.append((_DELETE, [{"key": key} for key, _ in run]))
        else:
            writes.append((_upsert(dialect), [{"key": key, "state": s, "data": d} for key, (s, d) in run]))
    return writes


def _is_empty(record: Record) -> bool:
    state, data = record
    return state is None and not data


# Plain table statements, built once: ORM-enabled ones cost several times more per call here, and these
# run in most updates.
_TABLE = cast(Table, FsmRecord.__table__)
_DELETE = delete(_TABLE).where(_TABLE.c.key == bindparam("key"))


@cache
def _upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE."""
    statement = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(_TABLE)
    return statement.on_conflict_do_update(
        index_elements=[_TABLE.c.key], set_={"state": statement.excluded.state, "data": statement.excluded.data}
    )


class FsmFlushMiddleware(BaseMiddleware):
    """Writes the update's own wizard changes with the update's commits, else once it has been handled.

    Registered inside SessionMiddleware, so the update's session exists.
    """

    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        state: FSMContext | None = data.get("state")
        session: AsyncSession = data["session"]
        with self.storage.tracking_update(state.key if state is not None else None) as changes:
            hooks = self.storage.write_along(session, changes)

            async def save_pending() -> None:
                if self.storage._pending(changes):
                    await session.commit()  # write_along writes them

            token = _save_pending.set(save_pending)
            try:
                outcome = await handler(event, data)
            except Exception:
                await self.storage.flush(changes)
                raise
            finally:
                _save_pending.reset(token)
                remove_hooks(session, hooks)
            # Not on cancellation or a crash: these changes belong with a transaction that never committed.
            await self.storage.flush(changes)
            return outcome
