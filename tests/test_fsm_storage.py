"""The database-backed FSM storage: what is flushed survives, nothing is read twice, eviction stays correct."""

from __future__ import annotations

import pytest
from aiogram.fsm.storage.base import StorageKey
from sqlalchemy import select

from storage.db import SessionFactory
from storage.fsm import SqlStorage
from storage.models import FsmRecord


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
    await storage.set_state(key(1), "Wizard:confirm")
    async with session_factory() as session:
        storage.write_along(session)
        with pytest.raises(RuntimeError):
            async with session.begin():
                session.add(FsmRecord(key="other", state="x", data={}))
                raise RuntimeError("the domain refused")
        assert await stored(session_factory) == {}, "a rolled-back transaction takes nothing along"

        async with session.begin():
            session.add(FsmRecord(key="other", state="x", data={}))
    assert (await stored(session_factory))[storage._keys.build(key(1))] == ("Wizard:confirm", {})
    assert not storage._dirty, "nothing is left for the end-of-update flush"
