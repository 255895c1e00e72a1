"""The office's monthly report goes out by itself: once per community and month, text, chart and spreadsheet to
staff and the street office, through the outbox, surviving a crash like a worker's card."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import pytest
from aiogram.methods import SendDocument, SendMessage, SendPhoto, TelegramMethod
from openpyxl import load_workbook
from sqlalchemy import select, update

from domain.outbox import Notice
from scheduler.broadcasts import send_due_broadcasts
from storage.models import Broadcast, BroadcastKind, OutboxMessage, OutboxStatus
from tests.conftest import FakeClock
from tests.fake_telegram import ProcessDied, text_of
from tests.harness import Harness

OFFICE = {100001, 100002, 500001, 500002}  # the sample's staff and its street office
FIRST_OF_NOVEMBER = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)  # 08:00 in Yinchuan: the default "0 8 1 * *"


async def fire(harness: Harness, clock: FakeClock) -> list[Any]:
    return await send_due_broadcasts(harness.sessions, clock, timedelta(hours=12), lambda: None)


async def report_rows(harness: Harness) -> list[OutboxMessage]:
    async with harness.sessions() as session:
        return list(
            await session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == Notice.MONTHLY_REPORT).order_by(OutboxMessage.id)
            )
        )


def kinds(requests: list[TelegramMethod[Any]], chat_id: int) -> list[str]:
    return [type(r).__name__ for r in requests if getattr(r, "chat_id", None) == chat_id]


async def test_the_report_goes_out_once_with_its_three_parts(harness: Harness, clock: FakeClock) -> None:
    clock.now = FIRST_OF_NOVEMBER + timedelta(minutes=3)
    started = await fire(harness, clock)
    assert [(s.broadcast.kind, s.broadcast.period, s.broadcast.recipients) for s in started] == [
        (BroadcastKind.REPORT, "2026-10", 4)
    ]
    # Fired again, from the hourly catch-up or a second process: nothing more.
    clock.advance(hours=1)
    assert await fire(harness, clock) == []
    rows = await report_rows(harness)
    assert len(rows) == 12 and {r.chat_id for r in rows} == OFFICE

    sent = await harness.deliver()
    for chat_id in OFFICE:
        assert kinds(sent, chat_id) == ["SendMessage", "SendPhoto", "SendDocument"]
    text = next(r for r in sent if isinstance(r, SendMessage) and r.chat_id == 100001)
    assert "建设巷社区" in text_of(text) and "2026年10月" in text_of(text) and "图表和表格随后发送" in text_of(text)
    photo = next(r for r in sent if isinstance(r, SendPhoto))
    assert photo.photo.data.startswith(b"\x89PNG")  # type: ignore[union-attr]
    document = next(r for r in sent if isinstance(r, SendDocument))
    assert document.document.filename == "jsx-2026-10.xlsx"  # type: ignore[union-attr]
    assert load_workbook(BytesIO(document.document.data)).sheetnames[0] == "工单 2026-10"  # type: ignore[union-attr]
    assert {r.status for r in await report_rows(harness)} == {OutboxStatus.SENT}
    async with harness.sessions() as session:
        reports = list(await session.scalars(select(Broadcast).where(Broadcast.kind == BroadcastKind.REPORT)))
    assert len(reports) == 1


async def test_a_crash_while_sending_the_chart_sends_it_again_and_the_spreadsheet_after(
    harness: Harness, clock: FakeClock
) -> None:
    clock.now = FIRST_OF_NOVEMBER
    await fire(harness, clock)
    async with harness.sessions() as session, session.begin():  # the texts went out in an earlier life
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.kind == Notice.MONTHLY_REPORT, OutboxMessage.payload["part"].as_string() == "text")
            .values(status=OutboxStatus.SENT)
        )
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    first_life = list(harness.telegram.requests)
    # The sender sends to different chats side by side, so up to one chart per person was in flight.
    assert first_life and {type(r).__name__ for r in first_life} == {"SendPhoto"}, "charts, no spreadsheet yet"
    in_flight = [r.chat_id for r in first_life]  # type: ignore[attr-defined]
    assert len(in_flight) == len(set(in_flight)), "one chart per person at a time"

    restarted = Harness(harness.sessions, clock)
    restarted.app.sender.sole = True
    await restarted.app.sender.take_back_claims(everyone=True)
    second_life = await restarted.deliver()
    # At least once: the chart Telegram had is sent again (its "sent" was never written); nobody misses a part.
    for chat_id in OFFICE:
        assert kinds(second_life, chat_id) == ["SendPhoto", "SendDocument"], chat_id
    assert set(in_flight) <= OFFICE
    assert {r.status for r in await report_rows(harness)} == {OutboxStatus.SENT}


async def test_a_community_file_sets_the_schedule(harness: Harness, clock: FakeClock) -> None:
    from domain.community_file import import_community, loads_community
    from tests.conftest import SAMPLE_COMMUNITY

    text = SAMPLE_COMMUNITY.read_text(encoding="utf-8").replace('monthly = "0 8 1 * *"', 'monthly = "30 9 2 * *"')
    async with harness.sessions() as session:
        await import_community(session, loads_community(text), clock())
    clock.now = FIRST_OF_NOVEMBER + timedelta(minutes=3)
    assert await fire(harness, clock) == [], "not the 1st any more"
    clock.now = datetime(2026, 11, 2, 1, 31, tzinfo=UTC)  # 09:31 on the 2nd in Yinchuan
    assert [s.broadcast.period for s in await fire(harness, clock)] == ["2026-10"]
