"""aiogram FSM storage in the bot's own database, so a half-finished wizard survives a restart.

The process keeps what it read and wrote in memory and writes each update's changes in one transaction when
the update has been handled (:class:`FsmFlushMiddleware`), instead of one transaction per ``set_state`` or
``update_data`` call: on SQLite a transaction costs more than the rest of the update. That makes this storage
right for one bot process (which SQLite implies). Several processes share wizard state through Redis
(``REDIS_URL``, aiogram's RedisStorage) instead.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any

from aiogram import BaseMiddleware
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from aiogram.types import TelegramObject
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.db import SessionFactory
from storage.models import FsmRecord

Record = tuple[str | None, dict[str, Any]]


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

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        storage_key, (_, data) = await self._get(key)
        self._remember(storage_key, (state.state if isinstance(state, State) else state, data))
        self._dirty.add(storage_key)

    async def get_state(self, key: StorageKey) -> str | None:
        return (await self._get(key))[1][0]

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        storage_key, (state, _) = await self._get(key)
        self._remember(storage_key, (state, dict(data)))
        self._dirty.add(storage_key)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return dict((await self._get(key))[1][1])

    async def flush(self) -> None:
        """Write every changed record in one transaction."""
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        records = {key: self._cache[key] for key in keys}
        # An empty record means the same as none: delete it, keep the table small.
        empty = [key for key, (state, data) in records.items() if state is None and not data]
        rows = [{"key": key, "state": s, "data": d} for key, (s, d) in records.items() if key not in empty]
        try:
            async with self._sessions() as session, session.begin():
                if rows:
                    await session.execute(_upsert(session.get_bind().dialect.name), rows)
                if empty:
                    await session.execute(delete(FsmRecord).where(FsmRecord.key.in_(empty)))
            if self._complete:  # a deleted record is what a missing key means already
                for key in empty:
                    if key not in self._dirty:
                        self._cache.pop(key, None)
        except BaseException:
            self._dirty |= keys
            raise

    async def close(self) -> None:
        await self.flush()


@cache
def _upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE, built once so SQLAlchemy's compiled cache serves every flush."""
    statement = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(FsmRecord)
    return statement.on_conflict_do_update(
        index_elements=[FsmRecord.key], set_={"state": statement.excluded.state, "data": statement.excluded.data}
    )


class FsmFlushMiddleware(BaseMiddleware):
    """Writes the update's wizard changes once the update has been handled."""

    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        try:
            return await handler(event, data)
        finally:
            await self.storage.flush()
