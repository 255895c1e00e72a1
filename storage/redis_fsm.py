"""Wizard state in Redis: two round trips per update instead of six.

aiogram's RedisStorage makes one round trip per call, and a wizard step calls it four to six times (its state and
its data, read and written), on top of the two of the per-user lock. Here one script takes the user's lock and
reads their state and data; every read after that is served from memory; and one script writes the update's
changes and releases the lock. Nobody else changes that state meanwhile: they wait for the same lock (the key
aiogram's RedisEventIsolation uses, so both can run side by side during an upgrade).

One exception keeps a crash from losing a report: a wizard that ends (its state cleared) is deleted in Redis at
once, as aiogram does, so Submit clears the wizard before the ticket's transaction commits, not after the answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseEventIsolation, StateType, StorageKey
from aiogram.fsm.storage.redis import RedisStorage

LOCK_SECONDS = 60  # a holder that died frees the user after this long (aiogram's default too)
LOCK_RETRY_SECONDS = 0.1

# KEYS: lock, state, data. ARGV: token, lock time in ms. Returns {1, state, data} when the lock was taken.
_TAKE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('get', KEYS[2]), redis.call('get', KEYS[3])}
end
return {0}
"""
# KEYS: lock, state, data. ARGV: token, write ('1' or '0'), state, data ('' deletes), their ttl in ms ('0': none).
# Writes only while the lock is still this update's, or free (it outlived LOCK_SECONDS and nobody took it).
_GIVE_BACK = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  for i = 2, 3 do
    local value, ttl = ARGV[i + 1], ARGV[i + 3]
    if value == '' then redis.call('del', KEYS[i])
    elseif ttl ~= '0' then redis.call('set', KEYS[i], value, 'PX', ttl)
    else redis.call('set', KEYS[i], value) end
  end
end
if holder then redis.call('del', KEYS[1]) end
return 1
"""


@dataclass
class _Record:
    key: StorageKey
    state: str | None
    data: dict[str, Any]
    dirty: bool = False


# The records of the update being handled, by storage key: its own user's, taken under their lock.
_records: ContextVar[dict[str, _Record] | None] = ContextVar("redis_fsm_records", default=None)


def _text(value: Any) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else cast(str | None, value)


class UpdateScopedRedisStorage(RedisStorage):
    """RedisStorage that serves an update's reads from memory and writes its changes once (see the module)."""

    def _ttl_ms(self, ttl: Any) -> str:
        if ttl is None:
            return "0"
        seconds = ttl.total_seconds() if hasattr(ttl, "total_seconds") else float(ttl)
        return str(int(seconds * 1000))

    def _keys(self, key: StorageKey) -> list[str]:
        return [self.key_builder.build(key, part) for part in ("lock", "state", "data")]

    def _record_of(self, key: StorageKey, state: Any, data: Any) -> _Record:
        loaded = _text(data)
        return _Record(key, _text(state), cast(dict[str, Any], self.json_loads(loaded)) if loaded else {})

    async def _record(self, key: StorageKey) -> _Record | None:
        records = _records.get()
        if records is None:
            return None
        name = self.key_builder.build(key)
        if name not in records:  # another chat's state, read inside this update (rare): read it once too
            _lock, state_key, data_key = self._keys(key)
            records[name] = self._record_of(key, *await self.redis.mget(state_key, data_key))
        return records[name]

    async def _write(self, dirty: list[_Record]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in dirty:
                _lock, state_key, data_key = self._keys(record.key)
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

    async def _changed(self, record: _Record) -> None:
        record.dirty = True
        if record.state is None and not record.data:  # a wizard that ends is deleted at once (see the module)
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


class ScopedRedisIsolation(BaseEventIsolation):
    """One update at a time per user across processes, with the user's wizard state read and written inside."""

    def __init__(self, storage: UpdateScopedRedisStorage) -> None:
        self.storage = storage
        self._take = storage.redis.register_script(_TAKE)
        self._give_back = storage.redis.register_script(_GIVE_BACK)

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        storage = self.storage
        keys = storage._keys(key)
        token = uuid.uuid4().hex
        while True:
            taken = await self._take(keys=keys, args=[token, LOCK_SECONDS * 1000])
            if taken[0]:
                break
            await asyncio.sleep(LOCK_RETRY_SECONDS)
        own = storage._record_of(key, taken[1], taken[2])
        records = {storage.key_builder.build(key): own}
        scope = _records.set(records)
        try:
            yield None
        finally:
            _records.reset(scope)
            others = [r for r in records.values() if r.dirty and r is not own]
            if others:
                await storage._write(others)
            await self._give_back(
                keys=keys,
                args=[
                    token,
                    "1" if own.dirty else "0",
                    own.state or "",
                    storage.json_dumps(own.data) if own.data else "",
                    storage._ttl_ms(storage.state_ttl),
                    storage._ttl_ms(storage.data_ttl),
                ],
            )

    async def close(self) -> None:
        pass
