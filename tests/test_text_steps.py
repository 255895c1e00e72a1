"""Every step that waits for text has a way out (bot/steps.py), through the real dispatcher on both backends:
a command or a menu button ends the step and does what it says, a step left too long ends by itself and what
comes after it is taken as new, and the wizard's own buttons typed outside it start nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.storage.redis import RedisStorage
from redis.asyncio import Redis
from sqlalchemy import select

from bot.callbacks import FeedbackAction, FeedbackCb, TicketAction, TicketCb
from bot.steps import ExpiringSteps
from storage.models import EventKind, Ticket, TicketEvent, TicketStatus
from tests.conftest import FakeClock, require_redis
from tests.fake_telegram import BOT_ID, buttons_of, reply_buttons_of
from tests.harness import Harness, Person
from tests.households import verify
from tests.test_report_flow import LI_JUAN, bind, file_report, texts, ticket

RESIDENT = 940001


async def state_of(harness: Harness, person: Person) -> str | None:
    key = StorageKey(bot_id=BOT_ID, chat_id=person.id, user_id=person.id)
    return await harness.app.dispatcher.fsm.storage.get_state(key)


async def tickets(harness: Harness) -> list[Ticket]:
    async with harness.sessions() as session:
        return list(await session.scalars(select(Ticket).order_by(Ticket.id)))


async def in_progress(harness: Harness, resident: Person) -> int:
    """A report of ``resident``, delivered to Li Juan and accepted by her."""
    number = await file_report(resident, "管道", "楼下雨水管堵了")
    await harness.deliver()
    await harness.person(LI_JUAN).press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    return number


async def test_a_command_in_the_middle_of_a_step_ends_it_and_then_runs(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await resident.tap(await resident.send("/report"), "楼顶")
    assert await state_of(harness, resident) is not None, "waiting for the description"

    answer = await resident.send("/my")
    assert "还没有反映过问题" in texts(answer), "/my answered as anywhere else"
    assert await state_of(harness, resident) is None, "and the wizard is over"
    # What comes next is new: a report of its own, not the old wizard's description.
    answer = await resident.send("电梯按钮失灵")
    assert "类别" in texts(answer)
    answer = await resident.send("/nonsense@feedback_test_bot")
    assert "/help" in texts(answer) and await state_of(harness, resident) is None


async def test_a_menu_button_in_the_middle_of_a_step_ends_it_and_does_what_it_says(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    number = await in_progress(harness, resident)
    worker = harness.person(LI_JUAN)
    answer = await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    assert "/cancel" in texts(answer)

    answer = await worker.send("🗂 待办工单")
    assert f"#{number}" in texts(answer), "the button's list, not a progress note reading “🗂 待办工单”"
    assert await state_of(harness, worker) is None
    async with harness.sessions() as session:
        notes = await session.scalars(select(TicketEvent).where(TicketEvent.kind == EventKind.NOTE))
        assert list(notes) == []

    # /cancel still says what it ended.
    await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    assert "已取消" in texts(await worker.send("/cancel"))


async def test_a_step_left_too_long_ends_and_what_comes_later_is_new(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    await verify(resident)  # a verified household may say "not fixed"
    number = await in_progress(harness, resident)
    worker = harness.person(LI_JUAN)

    # Within the time (30 minutes by default) the note is taken.
    await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    clock.advance(minutes=29)
    assert "添加进展" in texts(await worker.send("已联系物业"))

    # Resolved; the resident says "not fixed", and comes back the next day with another problem.
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("已疏通")
    answer = await resident.press(FeedbackCb(action=FeedbackAction.NOT_FIXED, ticket_id=number).pack())
    assert "/cancel" in texts(answer)
    clock.advance(minutes=31)
    answer = await resident.send("3号楼的路灯不亮了")
    assert "类别" in texts(answer), "a new report starts with it"
    assert "重新" not in texts(answer)
    saved = await ticket(harness, number)
    assert saved.status == TicketStatus.RESOLVED and saved.reopen_count == 0, "not taken as the old reason"


async def test_the_wizards_buttons_typed_outside_it_start_nothing(harness: Harness) -> None:
    resident = harness.person(RESIDENT)
    await bind(resident)
    english = harness.person(RESIDENT + 1, language="en")
    await bind(english)
    typed = [(resident, "✅ 完成"), (resident, "📍 发送我的位置"), (resident, "📨 提交"), (english, "✅ Done")]
    for person, text in typed:
        answer = await person.send(text)
        assert "/report" in texts(answer) and "/my" in texts(answer), text
        assert reply_buttons_of(answer[-1]), "with the main menu"
        assert await state_of(harness, person) is None
    assert await tickets(harness) == []


async def _expiring_steps(storage: MemoryStorage | RedisStorage, clock: FakeClock) -> None:
    steps = ExpiringSteps(storage, timedelta(minutes=5), clock)
    key = StorageKey(bot_id=BOT_ID, chat_id=1, user_id=1)
    step = State("reason", group_name="Probe")
    await steps.set_state(key, step)
    await steps.set_data(key, {"ticket_id": 7})
    clock.advance(minutes=4)
    assert await steps.get_state(key) == "Probe:reason" and await steps.get_data(key) == {"ticket_id": 7}
    clock.advance(minutes=2)
    assert await steps.get_state(key) is None
    assert await storage.get_state(key) is None and await steps.get_data(key) == {}, "cleared, not hidden"
    # A state stored before steps carried their time stays until it ends.
    await storage.set_state(key, "Probe:reason")
    clock.advance(days=30)
    assert await steps.get_state(key) == "Probe:reason"
    await steps.set_state(key, None)
    assert await storage.get_state(key) is None


async def test_steps_expire_in_memory_and_in_redis() -> None:
    clock = FakeClock(datetime(2026, 12, 6, 8, 0, tzinfo=UTC))
    await _expiring_steps(MemoryStorage(), clock)
    redis = Redis.from_url(require_redis())
    try:
        await redis.flushdb()
        await _expiring_steps(RedisStorage(redis), clock)
    finally:
        await redis.flushdb()
        await redis.aclose()


async def test_a_keyboards_button_is_never_taken_as_the_words_a_step_waits_for(harness: Harness) -> None:
    """An old keyboard stays on the screen (an answer lost in a crash, a step left another way): its buttons,
    in either language, pressed where the bot waits for a description or a note, get that step's question again."""
    resident = harness.person(RESIDENT)
    await bind(resident)
    answer = await resident.send("/report")
    for pressed in ("📨 提交", "✅ Done"):  # at the category question: asked again, with the categories
        again = await resident.send(pressed)
        assert "类别" in texts(again) and any("楼顶" in text for text, _ in buttons_of(again[-1])), pressed
    await resident.tap(answer, "楼顶")
    for pressed in ("📨 提交", "📍 发送我的位置", "✖️ Cancel", "➡️ 不加照片，直接提交"):
        again = await resident.send(pressed)
        assert "描述" in texts(again), f"{pressed}: asked for the description again, {texts(again)}"
    assert await state_of(harness, resident) is not None, "still in the wizard"
    await resident.send("楼顶堆满了建筑垃圾")
    await resident.send("📨 提交")  # at the photos step: not a photo, not Done
    done = await resident.tap(await resident.send("✅ 完成"), "提交")
    assert "#" in texts(done)
    assert [t.description for t in await tickets(harness)] == ["楼顶堆满了建筑垃圾"]

    # A worker's progress note: the reply-keyboard buttons are not a note either.
    await harness.deliver()
    number = (await tickets(harness))[0].id
    worker = harness.person(LI_JUAN)
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.NOTE, ticket_id=number).pack())
    answer = await worker.send("✅ 完成")
    assert "添加进展" not in texts(answer) and await state_of(harness, worker) is not None, texts(answer)
    async with harness.sessions() as session:
        notes = await session.scalars(select(TicketEvent).where(TicketEvent.kind == EventKind.NOTE))
        assert list(notes) == []
    assert "添加进展" in texts(await worker.send("已联系物业"))

    # Outside any step, a household step's button starts no report.
    answer = await resident.send("✍️ 改由网格员核验")
    assert await state_of(harness, resident) is None and reply_buttons_of(answer[-1]), texts(answer)
    assert len(await tickets(harness)) == 1
