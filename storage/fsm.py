"""aiogram FSM storage in the bot's own database, so a half-finished wizard survives a restart.

Redis (aiogram's RedisStorage) replaces it when several bot processes share the load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey

from storage.db import SessionFactory
from storage.models import FsmRecord


class SqlStorage(BaseStorage):
    def __init__(self, session_factory: SessionFactory, key_builder: KeyBuilder | None = None) -> None:
        self._sessions = session_factory
        self._keys = key_builder or DefaultKeyBuilder()

    async def _load(self, key: StorageKey) -> FsmRecord | None:
        async with self._sessions() as session, session.begin():
            return await session.get(FsmRecord, self._keys.build(key))

    async def _save(self, key: StorageKey, *, state: Any = ..., data: Any = ...) -> None:
        """Write state and/or data (``...`` keeps the stored value)."""
        storage_key = self._keys.build(key)
        async with self._sessions() as session, session.begin():
            record = await session.get(FsmRecord, storage_key)
            new_state = (record.state if record else None) if state is ... else state
            new_data = (record.data if record else {}) if data is ... else data
            if new_state is None and not new_data:
                # An empty record means the same as none; keep the table small.
                if record is not None:
                    await session.delete(record)
            elif record is None:
                session.add(FsmRecord(key=storage_key, state=new_state, data=new_data))
            else:
                record.state, record.data = new_state, new_data

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        await self._save(key, state=state.state if isinstance(state, State) else state)

    async def get_state(self, key: StorageKey) -> str | None:
        record = await self._load(key)
        return record.state if record else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self._save(key, data=dict(data))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        record = await self._load(key)
        return dict(record.data) if record else {}

    async def close(self) -> None:
        """The engine belongs to the application, which disposes of it."""
