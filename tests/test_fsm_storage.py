"""The database-backed FSM storage: what is flushed survives, nothing is read twice, eviction stays correct, and
an update's commits write that update's changes only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import TelegramObject, Update
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import SessionFactory
from storage.fsm import FsmFlushMiddleware, SqlStorage, _writes
from storage.models import FsmRecord

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[None]]


def key(user_id: int) -> StorageKey:
    return StorageKey(bot_id=42, chat_id=user_id, user_id=user_id)


async def stored(session_factory: SessionFactory) -> dict[str, tuple[str | None, dict[str, object]]]:
    async with session_factory() as session:
        return {r.key: (r.state, r.data) for r in await session.scalars(select(FsmRecord))}


async def test_changes_are_written_on_flush_and_read_by_a_new_process(session_factory: SessionFactory) -> None:
    storage = SqlStorage(session_factory)
    await storage.set_state(key(1), "Wizard:photos")
    await storage.set_data(key(1), {"photos": ["a"]})
    assert await stored(session_factory) == {}, "nothing is written before the update ends"
    await storage.flush()
    assert list((await stored(session_factory)).values()) == [("Wizard:photos", {"photos": ["a"]})]

    restarted = SqlStorage(session_factory)
    assert await restarted.get_state(key(1)) == "Wizard:photos"
    assert await restarted.get_data(key(1)) == {"photos": ["a"]}
    assert await restarted.get_state(key(2)) is None


async def test_a_cleared_wizard_leaves_no_row(session_factory: SessionFactory) -> None:
    storage = SqlStorage(session_factory)
    await storage.set_state(key(1), "Wizard:photos")
    await storage.flush()
    await storage.set_state(key(1), None)
    await storage.set_data(key(1), {})
    await storage.flush()
    assert await stored(session_factory) == {}
    assert await storage.get_state(key(1)) is None


async def test_after_eviction_misses_are_read_from_the_database(session_factory: SessionFactory) -> None:
    writer = SqlStorage(session_factory)
    for user_id in range(1, 6):
        await writer.set_state(key(user_id), f"S:{user_id}")
    await writer.flush()

    small = SqlStorage(session_factory, cache_size=2)  # holds less than the table
    for user_id in range(1, 6):
        assert await small.get_state(key(user_id)) == f"S:{user_id}"
    assert await small.get_state(key(99)) is None


async def test_a_failed_flush_keeps_the_changes_for_the_next_one(session_factory: SessionFactory) -> None:
    storage = SqlStorage(session_factory)
    await storage.set_state(key(1), "S:1")
    real_sessions = storage._sessions

    def broken() -> object:
        raise ConnectionError("database went away")

    storage._sessions = broken  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await storage.flush()
    storage._sessions = real_sessions
    await storage.flush()
    assert list((await stored(session_factory)).values()) == [("S:1", {})]


async def test_changes_ride_along_with_a_commit_of_the_update(session_factory: SessionFactory) -> None:
    storage = SqlStorage(session_factory)
    async with session_factory() as session:
        with storage.tracking_update(key(1)) as changes:
            await storage.set_state(key(1), "Wizard:confirm")
            storage.write_along(session, changes)
            with pytest.raises(RuntimeError):
                async with session.begin():
                    session.add(FsmRecord(key="other", state="x", data={}))
                    raise RuntimeError("the domain refused")
            assert await stored(session_factory) == {}, "a rolled-back transaction takes nothing along"

            async with session.begin():
                session.add(FsmRecord(key="other", state="x", data={}))
    assert (await stored(session_factory))[storage._keys.build(key(1))] == ("Wizard:confirm", {})
    assert not storage._dirty, "nothing is left for the end-of-update flush"


def update_of(storage: SqlStorage, session: AsyncSession, user_id: int) -> dict[str, Any]:
    """The handler data FsmFlushMiddleware sees for an update from ``user_id``."""
    return {"session": session, "state": FSMContext(storage, key(user_id))}


async def test_a_commit_writes_only_its_own_updates_changes(session_factory: SessionFactory) -> None:
    """Two updates in flight at once: the second one's commit leaves the first one's change alone."""
    storage = SqlStorage(session_factory)
    middleware = FsmFlushMiddleware(storage)
    first_changed, second_done = asyncio.Event(), asyncio.Event()
    first_key, second_key = storage._keys.build(key(1)), storage._keys.build(key(2))

    async def first(_event: TelegramObject, data: dict[str, Any]) -> None:
        await data["state"].set_state("Wizard:photos")
        first_changed.set()
        await second_done.wait()
        assert first_key not in await stored(session_factory), "the other update's flush did not write it either"

    async def second(_event: TelegramObject, data: dict[str, Any]) -> None:
        await first_changed.wait()
        await data["state"].set_state("Wizard:confirm")
        async with data["session"].begin():  # the domain's transaction, which the change rides along with
            await data["session"].execute(select(FsmRecord.key))
        assert await stored(session_factory) == {second_key: ("Wizard:confirm", {})}

    async def run(handler: Handler, user_id: int, done: asyncio.Event | None = None) -> None:
        async with session_factory() as session:
            await middleware(handler, Update(update_id=user_id), update_of(storage, session, user_id))
        if done is not None:
            done.set()

    await asyncio.gather(run(first, 1), run(second, 2, second_done))
    assert await stored(session_factory) == {
        first_key: ("Wizard:photos", {}),
        second_key: ("Wizard:confirm", {}),
    }, "each update wrote its own change"


async def test_a_change_left_unwritten_goes_with_the_same_chats_next_update(session_factory: SessionFactory) -> None:
    storage = SqlStorage(session_factory)
    middleware = FsmFlushMiddleware(storage)
    real_sessions = storage._sessions

    async def change(_event: TelegramObject, data: dict[str, Any]) -> None:
        await data["state"].set_state("Wizard:photos")

    async def look(_event: TelegramObject, data: dict[str, Any]) -> None:
        await data["state"].get_state()

    def broken() -> object:
        raise ConnectionError("database went away")

    await storage.get_state(key(1))  # the table is read; only the write at the end of the update fails
    storage._sessions = broken  # type: ignore[assignment]
    async with session_factory() as session:
        with pytest.raises(ConnectionError):
            await middleware(change, Update(update_id=1), update_of(storage, session, 1))
    storage._sessions = real_sessions

    async with session_factory() as session:
        await middleware(look, Update(update_id=2), update_of(storage, session, 2))
    assert await stored(session_factory) == {}, "someone else's update leaves it alone"
    async with session_factory() as session:
        await middleware(look, Update(update_id=3), update_of(storage, session, 1))
    assert await stored(session_factory) == {storage._keys.build(key(1)): ("Wizard:photos", {})}


def test_records_are_written_in_key_order_across_upserts_and_deletes() -> None:
    """So two transactions writing some of the same records lock them in the same order."""
    records = {"fsm:3:3": ("S", {}), "fsm:1:1": ("S", {}), "fsm:2:2": (None, {}), "fsm:4:4": ("S", {"a": 1})}
    writes = _writes(records, "postgresql")
    assert [[row["key"] for row in rows] for _, rows in writes] == [["fsm:1:1"], ["fsm:2:2"], ["fsm:3:3", "fsm:4:4"]]
