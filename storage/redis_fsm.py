"""Wizard state in Redis, read once and written once per update.

aiogram's RedisStorage makes one round trip per call, and a wizard step calls it four to six times (its state and
its data, read and written), on top of the per-user lock. Here the update's state and data are read together,
with one MGET, right after the lock is taken; every read after that is served from memory, and the update's
changes are written in one pipeline just before the lock is released. No other process can change them
meanwhile: they hold the same lock.

One exception keeps a crash from losing a report: a wizard that ends (its state cleared) is deleted in Redis at
once, as before, so Submit clears the wizard before the ticket's transaction commits, never after the answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import StateType, StorageKey
from aiogram.fsm.storage.redis import RedisEventIsolation, RedisStorage


@dataclass
class _Record:
    key: StorageKey
    state: str | None
    data: dict[str, Any]
    dirty: bool = field(default=False)


# The records of the update being handled, by storage key (the update's own, taken under its lock).
_records: ContextVar[dict[str, _Record] | None] = ContextVar("redis_fsm_records", default=None)


class UpdateScopedRedisStorage(RedisStorage):
    """RedisStorage that, inside :meth:`update_scope`, reads once and writes once (see the module's docstring)."""

    @asynccontextmanager
    async def update_scope(self, key: StorageKey) -> AsyncGenerator[None, None]:
        records: dict[str, _Record] = {}
        token = _records.set(records)
        try:
            await self._read(records, key)
            yield
        finally:
            _records.reset(token)
            await self._write([r for r in records.values() if r.dirty])

    async def _read(self, records: dict[str, _Record], key: StorageKey) -> _Record:
        state, data = await self.redis.mget(self.key_builder.build(key, "state"), self.key_builder.build(key, "data"))
        if isinstance(state, bytes):
            state = state.decode("utf-8")
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        loaded = cast(dict[str, Any], self.json_loads(data)) if data else {}
        record = records[self.key_builder.build(key)] = _Record(key, cast(str | None, state), loaded)
        return record

    async def _write(self, dirty: list[_Record]) -> None:
        if not dirty:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in dirty:
                state_key = self.key_builder.build(record.key, "state")
                data_key = self.key_builder.build(record.key, "data")
                if record.state is None:
                    pipe.delete(state_key)
                else:
                    pipe.set(state_key, record.state, ex=self.state_ttl)
                if record.data:
                    pipe.set(data_key, self.json_dumps(record.data), ex=self.data_ttl)
                else:
                    pipe.delete(data_key)
            await pipe.execute()
        for record in dirty:
            record.dirty = False

    async def _record(self, key: StorageKey) -> _Record | None:
        records = _records.get()
        if records is None:
            return None
        record = records.get(self.key_builder.build(key))
        if record is None:  # another chat's state, read inside this update (rare): read it once too
            record = await self._read(records, key)
        return record

    async def _changed(self, record: _Record) -> None:
        record.dirty = True
        if record.state is None and not record.data:  # a wizard that ends is deleted at once (see above)
            await self._write([record])

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        record = await self._record(key)
        if record is None:
            return await super().set_state(key, state)
        record.state = state.state if isinstance(state, State) else state
        return await self._changed(record)

    async def get_state(self, key: StorageKey) -> str | None:
        record = await self._record(key)
        return await super().get_state(key) if record is None else record.state

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        record = await self._record(key)
        if record is None:
            return await super().set_data(key, data)
        record.data = dict(data)
        return await self._changed(record)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        record = await self._record(key)
        return await super().get_data(key) if record is None else dict(record.data)


class ScopedRedisIsolation(RedisEventIsolation):
    """The per-user Redis lock of aiogram, with the update's wizard state read and written inside it."""

    def __init__(self, storage: UpdateScopedRedisStorage) -> None:
        super().__init__(redis=storage.redis, key_builder=storage.key_builder)
        self.storage = storage

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        async with super().lock(key), self.storage.update_scope(key):
            yield None
