"""Writes a commit hook adds ride in the commit (storage.db.execute_at_commit): written exactly when the
transaction commits, on SQLite in the COMMIT's own trip to aiosqlite's thread."""

from __future__ import annotations

import pytest
from sqlalchemy import Table, exc, insert, select
from sqlalchemy.orm import Session

from storage.db import SessionFactory, SessionHooks, add_hooks, execute_at_commit
from storage.models import FsmRecord

_TABLE = FsmRecord.__table__
assert isinstance(_TABLE, Table)


class Writes(SessionHooks):
    def __init__(self, key: str) -> None:
        self.key = key
        self.wrote_seen = False

    def wrote(self) -> None:
        self.wrote_seen = True

    def before_commit(self, session: Session) -> None:
        execute_at_commit(session, insert(_TABLE), [{"key": self.key, "state": "s", "data": {}}])


async def keys(session_factory: SessionFactory) -> list[str]:
    async with session_factory() as session:
        return list(await session.scalars(select(FsmRecord.key).order_by(FsmRecord.key)))


async def test_a_write_at_commit_is_written_with_the_transaction(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        hooks = Writes("hooked")
        add_hooks(session, hooks)
        async with session.begin():
            session.add(FsmRecord(key="own", state="x", data={}))
        assert hooks.wrote_seen, "the commit hooks hear of it as a change"
    assert await keys(session_factory) == ["hooked", "own"]


async def test_a_failing_write_at_commit_fails_the_commit_and_keeps_nothing(session_factory: SessionFactory) -> None:
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="taken", state="x", data={}))
    async with session_factory() as session:
        add_hooks(session, Writes("taken"))  # the primary key exists: the commit must fail
        with pytest.raises(exc.IntegrityError):
            async with session.begin():
                session.add(FsmRecord(key="own", state="x", data={}))
    assert await keys(session_factory) == ["taken"], "neither the transaction's own row nor the hook's"
    async with session_factory() as session, session.begin():
        session.add(FsmRecord(key="after", state="x", data={}))
    assert await keys(session_factory) == ["after", "taken"], "the connection is fine afterwards"


async def test_a_rolled_back_transaction_drops_its_writes_at_commit(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                session.add(FsmRecord(key="own", state="x", data={}))
                await session.flush()
                held = [{"key": "held", "state": "s", "data": {}}]
                await session.run_sync(lambda sync: execute_at_commit(sync, insert(_TABLE), held))
                raise RuntimeError("the domain refused")
        async with session.begin():
            session.add(FsmRecord(key="next", state="x", data={}))
    assert await keys(session_factory) == ["next"], "the held write went with its transaction"
