"""The outbox sender: Telegram's 429, 403 and 5xx answers, outages, leases, and what a crash may repeat."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import timedelta
from typing import Any

import pytest
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods import (
    DeleteMyCommands,
    EditMessageReplyMarkup,
    EditMessageText,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SetMyCommands,
)
from aiogram.types import BotCommand, BotCommandScopeChat, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.fake_api import FakeBotAPI
from bench.residents import add_residents
from bot.app import create_bot
from bot.outbound import sender as sender_module
from bot.outbound.handover import claimed as claimed_for_the_hand_over
from bot.outbound.notices import as_request
from bot.outbound.pacing import TokenBucket
from bot.outbound.sender import OutboxSender, SenderSettings
from domain.broadcasts import progress, start_broadcast
from domain.outbox import Notice, enqueue
from storage.models import BroadcastKind, Community, OutboxMessage, OutboxStatus, TicketCardCopy, User
from tests.conftest import FakeClock
from tests.fake_telegram import BLOCKED, BOT_ID, SERVER_ERROR, TOO_MANY_REQUESTS, ProcessDied, sent_to, text_of
from tests.harness import Harness
from tests.test_report_flow import LI_JUAN, STAFF_WANG, bind, file_report


async def outbox(harness: Harness) -> list[OutboxMessage]:
    async with harness.sessions() as session:
        return list(await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


async def filed_with_photo(harness: Harness) -> int:
    resident = harness.person(900100)
    await bind(resident)
    return await file_report(resident, "楼道杂物", "楼道里堆满了纸箱", photos=1)


async def test_429_waits_retry_after_then_sends_each_message_once_in_the_chats_order(
    harness: Harness, clock: FakeClock
) -> None:
    await filed_with_photo(harness)  # a card and a photo for Li Juan
    harness.telegram.fail_next(LI_JUAN, TOO_MANY_REQUESTS)  # retry_after=7
    started = clock()

    delivered = sent_to(await harness.deliver(), LI_JUAN)

    kinds = [type(r).__name__ for r in delivered]
    assert kinds == ["SendMessage", "SendMessage", "SendPhoto"], "the card refused, tried again, then its photo"
    assert harness.sender_rate.waited == [7.0] and clock() - started == timedelta(seconds=7), "it waited retry_after"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}
    assert await harness.deliver() == []


async def test_a_process_killed_in_a_429_pause_leaves_its_rows_claimed_with_their_requests(
    harness: Harness, clock: FakeClock
) -> None:
    """What is due stays claimed, ready to send, through Telegram's pause: the next process's hand-over sends it
    within a second or two of its start, before the bot has loaded (bench.crash run 39: rows given back for the
    pause waited a whole start-up)."""
    await filed_with_photo(harness)
    harness.telegram.fail_next(LI_JUAN, TOO_MANY_REQUESTS)

    async def killed(_seconds: float) -> None:
        raise ProcessDied()

    harness.app.sender.bucket = TokenBucket(10_000, lambda: clock().timestamp(), killed)
    with pytest.raises(ProcessDied):
        await harness.deliver()

    rows = await outbox(harness)
    assert [(r.status, r.not_before) for r in rows] == [(OutboxStatus.CLAIMED, r.created_at) for r in rows]
    assert [r.id for r in await claimed_for_the_hand_over(harness.sessions)] == [r.id for r in rows]


async def test_403_marks_the_worker_unreachable_and_stops_sending(harness: Harness) -> None:
    await filed_with_photo(harness)
    harness.telegram.fail_next(LI_JUAN, BLOCKED)
    delivered = await harness.deliver()
    assert len(sent_to(delivered, LI_JUAN)) == 1
    rows = await outbox(harness)
    assert {r.status for r in rows} == {OutboxStatus.FAILED}
    assert "403" in rows[0].error
    async with harness.sessions() as session:
        worker = await session.get(User, LI_JUAN)
        assert worker is not None and worker.unreachable_at is not None
    ledger = await harness.person(STAFF_WANG, language="en").send("/ledger")
    assert "cannot reach: 李娟" in " ".join(text_of(r) for r in ledger), "staff see who is unreachable"

    # Later messages to them are not even tried, until they talk to the bot again.
    async with harness.sessions() as session, session.begin():
        enqueue(session, LI_JUAN, Notice.TICKET_CARD, harness.app.sender.clock(), ticket_id=1)
    assert sent_to(await harness.deliver(), LI_JUAN) == []
    await harness.person(LI_JUAN).send("/help")
    async with harness.sessions() as session:
        worker = await session.get(User, LI_JUAN)
        assert worker is not None and worker.unreachable_at is None


async def test_server_errors_are_retried_with_backoff(harness: Harness, clock: FakeClock) -> None:
    await filed_with_photo(harness)
    harness.telegram.fail_next(LI_JUAN, SERVER_ERROR, SERVER_ERROR)
    await harness.deliver()
    rows = await outbox(harness)
    assert rows[0].attempts == 1 and rows[0].status == OutboxStatus.PENDING
    clock.advance(seconds=2)
    await harness.deliver()
    rows = await outbox(harness)
    assert rows[0].attempts == 2 and rows[0].status == OutboxStatus.PENDING
    clock.advance(seconds=4)
    delivered = sent_to(await harness.deliver(), LI_JUAN)
    assert len(delivered) == 2
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_a_crash_before_sending_loses_nothing_and_doubles_nothing(harness: Harness, clock: FakeClock) -> None:
    number = await filed_with_photo(harness)
    # The process dies right after the report was committed: its sender never ran.
    restarted = Harness(harness.sessions, clock)
    delivered = await restarted.deliver()
    cards = [r for r in sent_to(delivered, LI_JUAN) if isinstance(r, SendMessage)]
    assert len(cards) == 1 and f"#{number}" in cards[0].text
    assert await restarted.deliver() == []
    assert sent_to(harness.telegram.requests, LI_JUAN) == [], "the process that died sent nothing"


async def test_a_restart_takes_its_predecessors_claims_back_at_once(harness: Harness, clock: FakeClock) -> None:
    number = await filed_with_photo(harness)  # the card, then the photo, for Li Juan
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    first_life = sent_to(harness.telegram.requests, LI_JUAN)
    assert len(first_life) == 1 and f"#{number}" in text_of(first_life[0]), "the card reached Telegram"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.CLAIMED}

    # The polling bot's only process restarts at once, on the same database and the same clock.
    restarted = Harness(harness.sessions, clock)
    restarted.app.sender.sole = True
    assert await restarted.app.sender.take_back_claims(everyone=True) == 2
    second_life = sent_to(await restarted.deliver(), LI_JUAN)
    # At least once: Telegram had the card but "sent" was never written, so the worker gets it again.
    assert [type(r).__name__ for r in second_life] == ["SendMessage", "SendPhoto"]
    assert f"#{number}" in text_of(second_life[0])
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}
    assert await restarted.deliver() == [], "and nothing more"


async def test_with_several_senders_a_silent_holders_claims_lapse_within_seconds(
    harness: Harness, clock: FakeClock
) -> None:
    await filed_with_photo(harness)
    dead = harness.app.sender
    claimed, _ = await dead._claim()
    assert len(claimed) == 2  # claimed, and then the process stops renewing its lease

    other = Harness(harness.sessions, clock).app.sender  # another live process, not the only one
    assert await other.take_back_claims() == 0, "a fresh lease may belong to a live process"
    assert await other.deliver_due() == 0
    clock.advance(seconds=5)
    assert await other.take_back_claims() == 0
    clock.advance(seconds=6)  # the lease (10 s) has lapsed
    assert await other.take_back_claims() == 2
    assert await other.deliver_due() == 2
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_a_live_sender_keeps_its_claims(harness: Harness, clock: FakeClock) -> None:
    await filed_with_photo(harness)
    live = harness.app.sender
    await live._claim()
    other = Harness(harness.sessions, clock).app.sender
    for _ in range(5):  # a minute of renewals by the live one
        clock.advance(seconds=8)
        await live.take_back_claims()
        assert await other.take_back_claims() == 0
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.CLAIMED}


async def test_a_ten_minute_outage_delays_the_card_and_never_gives_it_up(harness: Harness, clock: FakeClock) -> None:
    number = await filed_with_photo(harness)
    harness.telegram.fail_next(LI_JUAN, *[SERVER_ERROR] * 1000)
    started = clock()
    tries: list[float] = []
    while clock() - started < timedelta(minutes=10):
        before = len(harness.telegram.requests)
        await harness.deliver()
        if len(harness.telegram.requests) > before:
            tries.append((clock() - started).total_seconds())
        clock.advance(seconds=1)
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.PENDING}, "nothing is given up"
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert max(gaps) <= 61 and len(tries) >= 12, f"retried at most a minute apart: {gaps}"

    harness.telegram.errors[LI_JUAN].clear()  # Telegram is back
    clock.advance(seconds=60)
    delivered = sent_to(await harness.deliver(), LI_JUAN)
    assert [type(r).__name__ for r in delivered] == ["SendMessage", "SendPhoto"]
    assert f"#{number}" in text_of(delivered[0])
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def through_an_outage(harness: Harness, clock: FakeClock) -> None:
    """Li Juan's card fails six times: it now waits out a minute's backoff."""
    harness.telegram.fail_next(LI_JUAN, *[SERVER_ERROR] * 6)
    for _ in range(200):
        await harness.deliver()
        if not harness.telegram.errors[LI_JUAN]:
            break
        clock.advance(seconds=1)


async def run_until_all_sent(harness: Harness, sender: OutboxSender) -> float:
    """Run ``sender`` as the bot does until every row is sent (10 s at most); returns how long it took."""
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(1000):
        if {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}:
            break
        await asyncio.sleep(0.01)
    took = loop.time() - began
    stop.set()
    sender.wake()
    await running
    return took


async def test_once_telegram_answers_again_a_card_waiting_out_its_backoff_goes_at_once(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = await filed_with_photo(harness)
    await through_an_outage(harness, clock)
    [card] = [r for r in await outbox(harness) if r.kind == "ticket_card"]
    assert card.status == OutboxStatus.PENDING and card.not_before - clock() == timedelta(seconds=60)

    # Telegram answers again (the errors are used up). The sender asks it (getMe) and sends at once, with the
    # clock standing still: not a minute later.
    monkeypatch.setattr(sender_module, "PROBE_SECONDS", 0.01)
    await run_until_all_sent(harness, harness.app.sender)
    delivered = sent_to(harness.telegram.accepted, LI_JUAN)
    assert [type(r).__name__ for r in delivered] == ["SendMessage", "SendPhoto"]
    assert f"#{number}" in text_of(delivered[0])


async def test_a_restarted_sender_asks_telegram_at_once_and_sends_what_waited_out_an_outage(
    harness: Harness, clock: FakeClock
) -> None:
    await filed_with_photo(harness)
    await through_an_outage(harness, clock)

    restarted = Harness(harness.sessions, clock)  # the process restarts as Telegram answers again
    took = await run_until_all_sent(harness, restarted.app.sender)
    assert took < sender_module.PROBE_SECONDS / 2, "asked at its start, not a probe interval later"
    assert [type(r).__name__ for r in sent_to(restarted.telegram.accepted, LI_JUAN)] == ["SendMessage", "SendPhoto"]


async def test_after_the_retry_horizon_the_card_fails_and_staff_see_it_in_the_ledger(
    harness: Harness, clock: FakeClock
) -> None:
    number = await filed_with_photo(harness)
    harness.telegram.fail_next(LI_JUAN, *[SERVER_ERROR] * 5000)
    for _ in range(25):  # a day and an hour of outage
        await harness.deliver()
        clock.advance(hours=1)
        await harness.deliver()
    rows = await outbox(harness)
    assert rows[0].status == OutboxStatus.FAILED and rows[0].error.startswith("gave up after 24 h")
    ledger = await harness.person(STAFF_WANG, language="en").send("/ledger")
    text = " ".join(text_of(r) for r in ledger)
    assert "Not delivered" in text
    assert f"card of #{number} → 李娟: Telegram could not be reached for too long" in text


async def test_a_broadcast_row_caught_sending_is_in_doubt_never_repeated(harness: Harness, clock: FakeClock) -> None:
    resident = harness.person(900100)
    await bind(resident)
    async with harness.sessions() as session:
        jsx = await session.scalar(select(Community.id).where(Community.code == "jsx"))
        assert jsx is not None
    async with harness.sessions() as session:
        started = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    before = len(harness.telegram.requests)
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    assert len(sent_to(harness.telegram.requests[before:], resident.id)) == 1, "the agenda reached Telegram"

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    assert sent_to(await restarted.deliver(), resident.id) == [], "at most once"
    rows = [r for r in await outbox(harness) if r.broadcast_id is not None]
    assert [r.status for r in rows] == [OutboxStatus.IN_DOUBT]
    async with harness.sessions() as session:
        shown = await progress(session, STAFF_WANG, started.broadcast.id)
    assert (shown.in_doubt, shown.sent, shown.remaining) == (1, 0, 0)


async def test_token_bucket_spaces_sends_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=25, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(50):
        await bucket.take()
    assert abs(now[0] - 49 / 25) < 1e-9
    await bucket.pause(5)
    await bucket.take()
    assert abs(now[0] - (49 / 25 + 5)) < 1e-9


async def test_one_message_per_second_into_one_chat(harness: Harness, clock: FakeClock) -> None:
    number = await filed_with_photo(harness)
    await harness.deliver()
    now = [0.0]
    sent_at: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    record = harness.telegram.make_request

    async def timed(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        sent_at.append(now[0])
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = timed  # type: ignore[method-assign]
    sender = OutboxSender(
        harness.bot,
        harness.sessions,
        harness.app.sender.renderer,
        clock,
        SenderSettings(rate_per_second=100, chat_interval=1.0),
        monotonic=lambda: now[0],
        sleep=sleep,
    )
    async with harness.sessions() as session, session.begin():
        for _ in range(3):
            enqueue(session, LI_JUAN, Notice.TICKET_CARD, clock(), ticket_id=number)
    assert await sender.deliver_due() == 3
    assert [round(b - a, 6) for a, b in itertools.pairwise(sent_at)] == [1.0, 1.0]


@pytest.mark.parametrize("woken", [True, False], ids=["queued-by-this-process", "queued-by-another"])
async def test_a_chats_new_message_does_not_wait_for_another_chats_queue(
    harness: Harness, clock: FakeClock, woken: bool
) -> None:
    """A worker has ten cards going one by one; a resident's notice queued meanwhile goes at once, not after the
    worker's queue (bench.crash run 52: residents' notices waited behind a worker's cards, 24 never sent). A row
    of the busy chat queued meanwhile keeps its place in that chat's order."""
    resident = 900100
    number = await filed_with_photo(harness)
    await harness.deliver()
    sender = OutboxSender(
        harness.bot,
        harness.sessions,
        harness.app.sender.renderer,
        clock,
        SenderSettings(chat_interval=0, rate_per_second=10_000, idle_poll_seconds=0.05),
    )
    async with harness.sessions() as session, session.begin():
        for _ in range(10):
            enqueue(session, LI_JUAN, Notice.TICKET_CARD, clock(), ticket_id=number)
    received: list[int] = []
    resident_served = asyncio.Event()
    record = harness.telegram.make_request

    async def worker_busy(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        if method.chat_id == LI_JUAN and received.count(LI_JUAN) == 2:
            async with harness.sessions() as session, session.begin():
                enqueue(session, resident, Notice.TICKET_PHOTOS, clock(), ticket_id=number)
                enqueue(session, LI_JUAN, Notice.TICKET_PHOTOS, clock(), ticket_id=number)
            if woken:
                sender.wake()  # as the update's middleware or a job does
            # The worker's third card is on its way until the resident has had the notice.
            await asyncio.wait_for(resident_served.wait(), timeout=5)
        received.append(method.chat_id)
        if method.chat_id == resident:
            resident_served.set()
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = worker_busy  # type: ignore[method-assign]
    while await sender.deliver_due():
        pass
    assert received == [LI_JUAN, LI_JUAN, resident, *[LI_JUAN] * 9]
    assert [type(r).__name__ for r in sent_to(harness.telegram.requests, LI_JUAN)][-1] == "SendPhoto"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_a_crash_in_a_chats_queue_repeats_only_the_message_on_the_wire(
    harness: Harness, clock: FakeClock
) -> None:
    """Three cards for one worker go a second's pace apart; the process dies as the third reaches Telegram. The
    two before it were written as sent while the round went on, so the restart sends only the third again."""
    number = await filed_with_photo(harness)
    await harness.deliver()
    harness.app.sender = OutboxSender(
        harness.bot,
        harness.sessions,
        harness.app.sender.renderer,
        clock,
        SenderSettings(rate_per_second=100, chat_interval=3 * sender_module.RECORD_SECONDS),
    )
    async with harness.sessions() as session, session.begin():
        for _ in range(3):
            enqueue(session, LI_JUAN, Notice.TICKET_CARD, clock(), ticket_id=number)
    record = harness.telegram.make_request

    async def dies_at_the_third(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        harness.telegram.die_after_next_request = len(sent_to(harness.telegram.requests, LI_JUAN)) == 4
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = dies_at_the_third  # type: ignore[method-assign]
    with pytest.raises(ProcessDied):
        await harness.deliver()
    written = [r.status for r in await outbox(harness)][-3:]
    assert written == [OutboxStatus.SENT, OutboxStatus.SENT, OutboxStatus.CLAIMED]

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    again = await restarted.deliver()
    assert len(sent_to(again, LI_JUAN)) == 1, "only the card on the wire at the crash comes again"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_what_a_failed_commit_would_have_written_goes_with_the_next(
    harness: Harness, engine: AsyncEngine
) -> None:
    """The database refuses the first write of "sent" (it went away for a moment): the card is not left claimed
    by this live process, never sent again nor written, but written as sent with the sender's next commit."""
    await filed_with_photo(harness)  # a card and a photo for Li Juan
    refused: list[str] = []

    def goes_away_once(_conn, _cursor, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if not refused and statement.startswith("UPDATE outbox SET status") and "sent_at" in statement:
            refused.append(statement)
            raise ConnectionError("the database went away")

    event.listen(engine.sync_engine, "before_cursor_execute", goes_away_once)
    try:
        delivered = await harness.deliver()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", goes_away_once)
    assert refused, "the write was refused"
    assert len(sent_to(delivered, LI_JUAN)) == 2, "each went once"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_concurrent_senders_share_one_rate() -> None:
    """Chats are served concurrently; the bucket still hands out one slot per 1/rate seconds."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    bucket = TokenBucket(rate=4, monotonic=lambda: 0.0, sleep=sleep)
    await asyncio.gather(*(bucket.take() for _ in range(8)))
    assert sorted(waits) == [0.25 * n for n in range(1, 8)], "the first goes at once, each next 0.25 s later"


async def test_a_short_stall_is_made_up_and_a_long_one_is_not() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(rate=100, monotonic=lambda: now[0], sleep=sleep, catch_up=0.05)
    for _ in range(10):
        await bucket.take()
    assert now[0] == pytest.approx(0.09)
    now[0] += 0.03  # a stall shorter than catch_up: the three slots it missed are used at once
    for _ in range(4):
        await bucket.take()
    assert now[0] == pytest.approx(0.13)  # the fourth waited for its own slot, exactly on the rate again
    now[0] += 1.0  # a long stall: only catch_up's worth goes at once (5 missed slots and the current one)
    start = now[0]
    for _ in range(6):
        await bucket.take()
    assert now[0] == start
    await bucket.take()
    assert now[0] == pytest.approx(start + 0.01)  # then the rate again, never a second's burst


async def agenda_for(harness: Harness, clock: FakeClock, residents: int) -> None:
    """The sample community's agenda broadcast, to so many more residents."""
    async with harness.sessions() as session, session.begin():
        await add_residents(session, 7_000_000, residents, clock(), english_every=3)
        jsx = await session.scalar(select(Community.id).where(Community.code == "jsx"))
    async with harness.sessions() as session:
        await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())


def unpaced_sender(harness: Harness, clock: FakeClock, **settings: int) -> OutboxSender:
    """A sender with no pause between a chat's messages and hardly a rate limit, its other settings given."""
    return OutboxSender(
        harness.bot,
        harness.sessions,
        harness.app.sender.renderer,
        clock,
        SenderSettings(chat_interval=0, rate_per_second=10_000, **settings),
    )


async def test_a_crash_mid_broadcast_leaves_few_rows_in_doubt_and_repeats_none(
    harness: Harness, clock: FakeClock
) -> None:
    await agenda_for(harness, clock, residents=40)
    ahead = 4
    harness.app.sender = unpaced_sender(harness, clock, ahead=ahead)
    # Telegram takes the 13th message, and the process dies before it hears back: nothing after that runs.
    record = harness.telegram.make_request

    async def dies_at_the_thirteenth(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        if len(harness.telegram.requests) >= 12:
            harness.telegram.die_after_next_request = True
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = dies_at_the_thirteenth  # type: ignore[method-assign]
    with pytest.raises(ProcessDied):
        await harness.deliver()
    first_life = [m.chat_id for m in harness.telegram.requests]  # type: ignore[attr-defined]

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    second_life = [m.chat_id for m in await restarted.deliver()]  # type: ignore[attr-defined]
    received = first_life + second_life
    assert len(received) == len(set(received)), "at most once: nobody gets the agenda twice"
    rows = [r for r in await outbox(harness) if r.broadcast_id is not None]
    in_doubt = [r.chat_id for r in rows if r.status == OutboxStatus.IN_DOUBT]
    assert 1 <= len(in_doubt) <= 2 * ahead, "in doubt: what was prepared or on the wire, no more"
    assert {r.status for r in rows if r.chat_id not in in_doubt} == {OutboxStatus.SENT}
    assert set(received) >= {r.chat_id for r in rows if r.status == OutboxStatus.SENT}


async def test_a_process_killed_in_a_429_pause_mid_broadcast_leaves_no_row_in_doubt(
    harness: Harness, clock: FakeClock
) -> None:
    """Rows marked "sending" ahead of their turns when Telegram asks to wait are claimed again for the pause: the
    process killed in it leaves them to the next, not in doubt (bench.crash run 55: sixteen agenda messages lost
    so in a 429 storm). The message refused is not in doubt either."""
    await agenda_for(harness, clock, residents=12)
    sender = harness.app.sender = unpaced_sender(harness, clock, ahead=8)

    async def killed_in_the_pause(_seconds: float) -> None:
        await asyncio.sleep(0.2)  # the process lives on a moment into the pause
        raise ProcessDied()

    sender.bucket = TokenBucket(10_000, lambda: clock().timestamp(), killed_in_the_pause)
    first = min(r.chat_id for r in await outbox(harness) if r.broadcast_id is not None)
    harness.telegram.fail_next(first, TOO_MANY_REQUESTS)
    with pytest.raises(ProcessDied):
        await harness.deliver()
    assert len(harness.telegram.requests) < 12, "killed before the broadcast was through"
    rows = [r for r in await outbox(harness) if r.broadcast_id is not None]
    assert OutboxStatus.SENDING not in {r.status for r in rows}, "nothing marked while no request of it went"

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    await restarted.deliver()
    rows = [r for r in await outbox(harness) if r.broadcast_id is not None]
    assert {r.status for r in rows} == {OutboxStatus.SENT}, "none in doubt: each resident has the agenda"
    accepted = [m.chat_id for m in harness.telegram.accepted + restarted.telegram.accepted]  # type: ignore[attr-defined]
    assert sorted(accepted) == sorted(r.chat_id for r in rows), "each once"


async def test_a_stop_in_the_middle_of_a_broadcast_ends_the_round_and_gives_back_the_rest(
    harness: Harness, clock: FakeClock
) -> None:
    """A round goes on while there is work, but not past a stop: the bot shuts down in moments, not when the
    broadcast is through, and whoever sends next has the rest at once."""
    await agenda_for(harness, clock, residents=300)
    sender = OutboxSender(
        harness.bot, harness.sessions, harness.app.sender.renderer, clock, SenderSettings(rate_per_second=50)
    )
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    sender.wake()  # as bot/app.py does
    await asyncio.wait_for(running, timeout=3)  # six seconds of sending were left
    rows = [r for r in await outbox(harness) if r.broadcast_id is not None]
    statuses = {r.status for r in rows}
    assert OutboxStatus.SENT in statuses and OutboxStatus.PENDING in statuses
    assert statuses <= {OutboxStatus.SENT, OutboxStatus.PENDING}, "nothing left claimed or in doubt"


async def test_the_next_batch_is_claimed_while_the_last_rows_of_a_full_one_go_out(
    harness: Harness, clock: FakeClock
) -> None:
    await agenda_for(harness, clock, residents=12)
    sender = harness.app.sender = unpaced_sender(harness, clock, batch_size=5, ahead=2)
    events: list[str] = []
    claim, deliver_due = sender._claim, sender.deliver_due

    async def logged_claim(**kwargs):  # type: ignore[no-untyped-def]
        events.append("claim")
        return await claim(**kwargs)

    async def logged_round() -> int:
        handled = await deliver_due()
        events.append(f"round of {handled}")
        return handled

    record = harness.telegram.make_request

    async def logged_send(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)  # the request on its way
        events.append("send")
        return await record(bot, method, **kwargs)

    sender._claim = logged_claim  # type: ignore[method-assign]
    sender.deliver_due = logged_round  # type: ignore[method-assign]
    harness.telegram.make_request = logged_send  # type: ignore[method-assign]
    delivered = await harness.deliver()
    assert sorted(m.chat_id for m in delivered) == list(range(7_000_000, 7_000_012))  # type: ignore[attr-defined]
    assert {r.status for r in await outbox(harness) if r.broadcast_id} == {OutboxStatus.SENT}
    # Each full batch's successor is claimed before the batch is done, not after: the sending does not stop for
    # a claim every batch. The short last batch asks for no more; the next round's claim finds nothing.
    claims = [i for i, event in enumerate(events) if event == "claim"]
    sends = [i for i, event in enumerate(events) if event == "send"]
    assert len(claims) == 4 and claims[1] < sends[4] and claims[2] < sends[9], events
    assert [event for event in events if event.startswith("round")] == ["round of 12", "round of 0"], events


async def test_over_http_the_request_kept_with_the_claim_goes_and_telegrams_answer_is_judged_as_before(
    harness: Harness, clock: FakeClock
) -> None:
    fake = FakeBotAPI(BOT_ID)
    bot = create_bot(f"{BOT_ID}:SENDER", await fake.start())  # the bot's real aiohttp session
    try:
        number = await filed_with_photo(harness)
        sender = OutboxSender(
            bot, harness.sessions, harness.app.sender.renderer, clock, SenderSettings(chat_interval=0)
        )
        while await sender.deliver_due():
            pass
        sends = [(r.method, r.params) for r in fake.requests if str(r.params.get("chat_id")) == str(LI_JUAN)]
        assert [method for method, _ in sends] == ["sendmessage", "sendphoto"]
        card = sends[0][1]
        assert f"#{number}" in str(card["text"]) and card["parse_mode"] == "HTML"
        assert json.loads(str(card["reply_markup"]))["inline_keyboard"], "the card carries its buttons"
        assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}
        async with harness.sessions() as session:
            copies = list(await session.scalars(select(TicketCardCopy)))
        assert [(c.chat_id, c.message_id) for c in copies] == [(LI_JUAN, fake.chats[LI_JUAN][1].message_id)], (
            "the message id in Telegram's answer is the card's copy kept current"
        )

        fake.outage, fake.drop_share = True, 0.0  # every request answered 502
        async with harness.sessions() as session, session.begin():
            enqueue(session, LI_JUAN, Notice.TICKET_CARD, clock(), ticket_id=number)
        assert await sender.deliver_due() == 1
        waiting = (await outbox(harness))[-1]
        assert (waiting.status, waiting.attempts) == (OutboxStatus.PENDING, 1), "a 5xx: it waits a backoff"
        assert "Bad Gateway" in waiting.error and waiting.not_before > clock()
    finally:
        await bot.session.close()
        await fake.stop()


def test_a_request_kept_with_the_claim_has_the_fields_aiogram_would_post() -> None:
    """The sender posts the request kept with the claim as it is: its fields must be the form aiogram builds from
    the same method (a chat id, the bot's default parse mode, a keyboard, a scope, media), prepared once or
    taken from what the batch prepared already."""
    bot = create_bot(f"{BOT_ID}:SENDER", "http://127.0.0.1:9")  # the real aiohttp session, never connected
    assert isinstance(bot.session, AiohttpSession)
    keyboard = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="✅", callback_data="fb:1")]])
    methods = [
        SendMessage(chat_id=7_000_001, text="<b>议事会</b>", reply_markup=keyboard),
        SendMessage(chat_id=-1001234, text="公示", disable_notification=True, protect_content=False),
        SendPhoto(chat_id=7_000_002, photo="photo-file-id", caption="楼道", reply_markup=keyboard),
        EditMessageText(chat_id=7_000_003, message_id=55, text="已解决", reply_markup=keyboard),
        EditMessageReplyMarkup(chat_id=7_000_003, message_id=55, reply_markup=None),
        SetMyCommands(
            commands=[BotCommand(command="ledger", description="台账")], scope=BotCommandScopeChat(chat_id=7_000_004)
        ),
        DeleteMyCommands(scope=BotCommandScopeChat(chat_id=7_000_004)),
        SendMediaGroup(
            chat_id=7_000_005, media=[InputMediaPhoto(media="p1", caption="一"), InputMediaPhoto(media="p2")]
        ),
    ]
    row = OutboxMessage(chat_id=7_000_001, kind=Notice.TICKET_UPDATE, payload={"ticket_id": 1})
    shared: dict[int, Any] = {}
    for method in [*methods, *methods]:  # the second time, what the batch prepared already
        form = bot.session.build_form_data(bot, method)
        posted = {options["name"]: value for options, _headers, value in form._fields}
        assert as_request(bot, row, method, shared)["fields"] == posted, method


async def test_while_telegram_stalls_at_most_half_of_ahead_is_on_the_wire(harness: Harness, clock: FakeClock) -> None:
    await agenda_for(harness, clock, residents=12)
    harness.app.sender = unpaced_sender(harness, clock, ahead=8)
    answering = asyncio.Event()
    on_wire, most = [0], [0]
    record = harness.telegram.make_request

    async def stalls(bot, method, **kwargs):  # type: ignore[no-untyped-def]
        on_wire[0] += 1
        most[0] = max(most[0], on_wire[0])
        await answering.wait()  # Telegram answers nothing for now
        on_wire[0] -= 1
        return await record(bot, method, **kwargs)

    harness.telegram.make_request = stalls  # type: ignore[method-assign]
    delivering = asyncio.create_task(harness.deliver())
    while on_wire[0] < 4:  # noqa: ASYNC110 - the sender's requests arrive as it goes
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # When Telegram goes on, what is on the wire and the turns a stall may make up reach it at once: half of
    # ``ahead`` each, so together they stay within what the rate allows in a tenth of a second.
    assert most[0] == 4, "half of `ahead` on the wire, not all of it"
    answering.set()
    assert len(await delivering) == 12 and most[0] == 4
    assert {r.status for r in await outbox(harness) if r.broadcast_id} == {OutboxStatus.SENT}


async def test_turns_missed_in_a_stall_do_not_all_go_at_once() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        wake = now[0] + seconds
        while now[0] < wake:  # noqa: ASYNC110 - the test moves this clock, a millisecond per loop turn
            await asyncio.sleep(0)

    bucket = TokenBucket(rate=100, monotonic=lambda: now[0], sleep=sleep, catch_up=0.05)
    sent: list[float] = []

    async def one() -> None:
        await bucket.take()
        sent.append(now[0])

    waiting = [asyncio.create_task(one()) for _ in range(30)]  # thirty messages, each with its turn
    for step in itertools.count():
        await asyncio.sleep(0)
        if all(task.done() for task in waiting):
            break
        # Time passes a millisecond at a time, but at 0.05 s the machine is busy for half a second.
        now[0] += 0.5 if step == 50 else 0.001
    after_stall = [t for t in sent if t > 0.5]
    at_once = max(after_stall.count(t) for t in after_stall)
    assert at_once <= 6, f"after a stall only catch_up's worth goes at once, then the rate again: {sent}"


async def test_a_429_moves_turns_already_waiting_behind_the_pause() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)
        now[0] += seconds

    bucket = TokenBucket(rate=10, monotonic=lambda: now[0], sleep=sleep)
    await bucket.take()  # at 0.0
    waiting = asyncio.create_task(bucket.take())  # its turn is at 0.1
    await asyncio.sleep(0)
    await bucket.pause(3)  # a 429 with retry_after 3 came meanwhile
    await waiting
    assert now[0] >= 3, "the waiting turn went after the pause, not into another 429"
