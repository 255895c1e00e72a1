"""The report wizard under bad input, and surviving a restart of the bot (database or Redis FSM storage)."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy import select

from storage.db import SessionFactory
from storage.models import Ticket
from tests.conftest import FakeClock, require_redis
from tests.fake_telegram import text_of
from tests.harness import Harness
from tests.test_report_flow import LI_JUAN, bind, texts


async def tickets_in(harness: Harness) -> list[Ticket]:
    async with harness.sessions() as session:
        return list(await session.scalars(select(Ticket)))


async def test_bad_input_gets_a_clear_answer_and_loses_nothing(harness: Harness) -> None:
    resident = harness.person(920001)
    await bind(resident)
    answer = await resident.send("/report")
    answer = await resident.tap(answer, "楼顶")

    answer = await resident.send("长" * 801)
    assert "800" in texts(answer), "an over-long description is refused with the limit"
    answer = await resident.send_sticker()
    assert "文字" in texts(answer) or "描述" in texts(answer)

    # None of that lost the wizard: the description step still takes the text.
    answer = await resident.send("11号楼楼顶堆了建筑垃圾，下雨天漏水")
    assert "照片" in texts(answer)
    answer = await resident.send("这里不是照片")
    assert "完成" in texts(answer)
    for n in range(4):
        answer = await resident.send_photo(f"roof-{n}")
    assert "3" in texts(answer), "the fourth photo is refused with the limit"
    summary = await resident.send("✅ 完成")
    assert "照片：3" in texts(summary) or "3" in texts(summary)
    await resident.tap(summary, "提交")
    [ticket] = await tickets_in(harness)
    assert len(ticket.photos) == 3 and "漏水" in ticket.description


async def test_cancel_always_works_and_sends_nothing(harness: Harness) -> None:
    resident = harness.person(920002)
    await bind(resident)
    answer = await resident.send("/report")
    answer = await resident.tap(answer, "噪声")
    answer = await resident.send("/cancel")
    assert "取消" in texts(answer)
    assert await tickets_in(harness) == []
    answer = await resident.send("📨 提交")
    assert "已经" in texts(answer) or "取消" in texts(answer), "a stale Submit is answered, not filed"
    assert await tickets_in(harness) == []
    assert await harness.deliver() == []


async def test_unknown_commands_and_unsupported_media_outside_the_wizard(harness: Harness) -> None:
    resident = harness.person(920003)
    assert "/help" in texts(await resident.send("/frobnicate"))
    assert "/help" in texts(await resident.send_sticker())


async def test_free_text_starts_a_report_with_a_suggested_category(harness: Harness) -> None:
    resident = harness.person(920004)
    await bind(resident)
    answer = await resident.send("楼下有人拉飞线给电动车充电，太危险了")
    assert "飞线充电" in texts(answer)
    answer = await resident.tap(answer, "✅")
    assert "照片" in texts(answer), "the text already typed is the description"
    summary = await resident.send("✅ 完成")
    assert "太危险了" in texts(summary)
    await resident.tap(summary, "提交")
    [ticket] = await tickets_in(harness)
    assert ticket.category.code == "flying-lead"


async def test_half_finished_wizard_survives_a_restart(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(920005)
    await bind(resident)
    answer = await resident.send("/report")
    await resident.tap(answer, "路灯")
    await resident.send("单元门口的灯坏了")

    restarted = Harness(harness.sessions, clock)  # a new process on the same database
    again = restarted.person(920005)
    await again.send_photo("light-1")
    summary = await again.send("✅ 完成")
    assert "单元门口的灯坏了" in texts(summary)
    await again.tap(summary, "提交")
    assert len(await tickets_in(restarted)) == 1
    assert any(getattr(r, "chat_id", None) == LI_JUAN for r in await restarted.deliver())


async def test_wizard_state_in_redis_survives_a_restart(
    session_factory: SessionFactory, clock: FakeClock, community: None
) -> None:
    url = require_redis()
    redis = Redis.from_url(url)
    await redis.flushdb()
    first = Harness(session_factory, clock, redis_url=url)
    resident = first.person(920006)
    await bind(resident)
    answer = await resident.send("/report")
    await resident.tap(answer, "停车")
    await resident.send("消防通道被占")
    assert await redis.dbsize() > 0, "the wizard lives in Redis"

    restarted = Harness(session_factory, clock, redis_url=url)
    summary = await restarted.person(920006).send("✅ 完成")
    assert "消防通道被占" in text_of(summary[-1])
    await restarted.person(920006).tap(summary, "提交")
    assert len(await tickets_in(restarted)) == 1
    await redis.flushdb()
    await redis.aclose()
