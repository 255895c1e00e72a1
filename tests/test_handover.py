"""The hand-over (bot/outbound/handover.py): what a killed sender had claimed is sent by the next process before
its own sender starts, over real HTTP to a loopback fake Bot API, and the database learns what the sender would
have learnt. The last test runs the real ``python -m bot``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.fake_api import FakeBotAPI, Request
from bench.residents import add_residents
from bot.config import Settings
from bot.outbound.handover import Handed, hand_over
from bot.outbound.pacing import ChatPacer
from bot.outbound.requests import RECORD_SECONDS
from domain.broadcasts import progress, start_broadcast
from domain.outbox import Notice, enqueue
from storage.models import BroadcastKind, Community, OutboxMessage, OutboxStatus, TicketCardCopy
from tests.conftest import FakeClock
from tests.fake_telegram import ProcessDied, sent_to, text_of
from tests.harness import Harness
from tests.processes import clean_environment, run_until_polling
from tests.test_report_flow import LI_JUAN, STAFF_WANG
from tests.test_sender import filed_with_photo, outbox
from tests.test_several_processes import _async, read, start_bot, until

BOT_ID = 4646


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeBotAPI, str]]:
    fake = FakeBotAPI(BOT_ID)
    api = await fake.start()
    yield fake, api
    await fake.stop()


def settings_for(engine: AsyncEngine, api: str, chat_interval: float = 0.0) -> Settings:
    url = engine.url  # on SQLite, storage.db's own driver: the setting names aiosqlite
    sqlite = url.get_backend_name() == "sqlite"
    return Settings(
        bot_token=SecretStr(f"{BOT_ID}:HANDOVER"),
        database_url=f"sqlite+aiosqlite:///{url.database}" if sqlite else url.render_as_string(hide_password=False),
        telegram_api_server=api,
        # Telegram's pace into one chat is the sender's tests' business, but for the hand-over's last test.
        send_rate_per_chat_seconds=chat_interval,
    )


async def killed_after_the_card(harness: Harness) -> int:
    """Li Juan's card and the report's photo are claimed; the process dies right after the card went out."""
    number = await filed_with_photo(harness)
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.CLAIMED}
    return number


def sends_to(fake: FakeBotAPI, chat_id: int) -> list[tuple[str, dict[str, object]]]:
    return [(r.method, r.params) for r in fake.requests if str(r.params.get("chat_id")) == str(chat_id)]


async def test_the_next_process_sends_the_claimed_card_and_photo_and_keeps_the_card_current(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    number = await killed_after_the_card(harness)

    assert await hand_over(settings_for(engine, api), clock) == Handed(sent=2, left=0)

    (card_method, card), (photo_method, _) = sends_to(fake, LI_JUAN)
    assert (card_method, photo_method) == ("sendmessage", "sendphoto"), "in the order they were queued"
    assert f"#{number}" in str(card["text"]) and card["parse_mode"] == "HTML"
    buttons = [b["callback_data"] for row in json.loads(str(card["reply_markup"]))["inline_keyboard"] for b in row]
    assert buttons, "the card carries its buttons"
    rows = await outbox(harness)
    assert {r.status for r in rows} == {OutboxStatus.SENT} and all(r.request is None for r in rows)
    async with harness.sessions() as session:
        copies = list(await session.scalars(select(TicketCardCopy)))
    assert [(c.chat_id, c.message_id) for c in copies] == [(LI_JUAN, fake.chats[LI_JUAN][1].message_id)], (
        "the card Telegram took is the copy kept current, as when the sender sends it"
    )

    restarted = Harness(harness.sessions, clock)
    assert await restarted.app.sender.take_back_claims(everyone=True) == 0
    assert await restarted.deliver() == [], "the sender that starts next has nothing left of it"


async def test_the_hand_over_goes_on_at_the_chats_pace_until_the_sender_is_ready_and_hands_it_the_pace(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    await killed_after_the_card(harness)  # Li Juan's card and photo, one chat: a second apart
    ready = threading.Event()
    fake.on_request = lambda _: ready.set()  # the bot's sender is ready as the card goes out
    pacer = ChatPacer(1.0)
    loop = asyncio.get_running_loop()
    began = loop.time()

    handed = await hand_over(settings_for(engine, api, chat_interval=1.0), clock, pacer, ready)

    assert handed == Handed(sent=1, left=1) and loop.time() - began < 0.8, "it did not wait for the photo's turn"
    card, photo = await outbox(harness)
    assert (card.status, photo.status, photo.claimed_by) == (OutboxStatus.SENT, OutboxStatus.PENDING, None)
    turn = loop.time()
    await pacer.wait_turn(LI_JUAN)  # the sender's pacer: the chat's next message still waits its second
    assert loop.time() - turn > 0.3


async def test_a_hand_over_killed_in_a_chats_queue_repeats_only_the_message_on_the_wire(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    """What the hand-over sent is written while it goes on at the chat's pace, so the process after it sends
    again only what was on the wire when this one was killed too."""
    fake, api = telegram
    number = await filed_with_photo(harness)
    async with harness.sessions() as session, session.begin():
        enqueue(session, LI_JUAN, Notice.TICKET_CARD, clock(), ticket_id=number)
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    paced = settings_for(engine, api, chat_interval=1.2 * RECORD_SECONDS)
    handing_over = asyncio.create_task(hand_over(paced, clock))
    fake.on_request = lambda _: handing_over.cancel() if len(sends_to(fake, LI_JUAN)) == 3 else None
    with pytest.raises(asyncio.CancelledError):
        await handing_over
    fake.on_request = None
    assert [r.status for r in await outbox(harness)] == [OutboxStatus.SENT, OutboxStatus.SENT, OutboxStatus.CLAIMED]

    assert await hand_over(settings_for(engine, api), clock) == Handed(sent=1, left=0)
    assert len(sends_to(fake, LI_JUAN)) == 4, "the card and photo went once, the message on the wire twice"


async def test_a_429_at_the_hand_over_waits_its_retry_after_and_goes_on(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    """The sender may take seconds more to load on a busy machine: the hand-over does not leave the dead
    process's messages to it at the first 429."""
    fake, api = telegram
    await killed_after_the_card(harness)
    fake.storm_share, fake.storm_retry_after = 1.0, 1
    fake.on_request = lambda request: setattr(fake, "storm_share", 0.0) if request.status == 429 else None

    handed = await hand_over(settings_for(engine, api), clock)

    assert (handed.sent, handed.left) == (2, 0)
    refused, card, photo = (r for r in fake.requests if str(r.params.get("chat_id")) == str(LI_JUAN))
    assert (refused.status, refused.method, card.method, photo.method) == (
        429,
        "sendmessage",
        "sendmessage",
        "sendphoto",
    )
    assert card.at - refused.at >= 1.0, "the card was tried again once the retry_after had passed"
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_a_429_as_the_sender_takes_over_leaves_it_to_wait_the_retry_after(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    """The sender claims the rows in the pause, ready to send: should it be killed before the pause is over, the
    next process's hand-over sends them at its start (bench.crash run 39: given back unclaimed, they waited for
    the next process's whole start-up)."""
    fake, api = telegram
    await killed_after_the_card(harness)
    fake.storm_share, fake.storm_retry_after = 1.0, 5
    ready = threading.Event()
    fake.on_request = lambda request: ready.set() if request.status == 429 else None

    handed = await hand_over(settings_for(engine, api), clock, ready=ready)
    assert handed == Handed(sent=0, left=2, paused_until=clock() + timedelta(seconds=5)), "the sender waits as long"

    assert len(sends_to(fake, LI_JUAN)) == 1, "nothing more was tried in the wait"
    rows = await outbox(harness)
    assert [(r.status, r.claimed_by, r.request) for r in rows] == [(OutboxStatus.PENDING, None, None)] * 2
    assert all(r.not_before == clock() for r in rows), "they keep their places in the queue"

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.pause(5)  # as bot/app.py does with the hand-over's paused_until
    rows, _ = await restarted.app.sender._claim()
    assert [r.chat_id for r in rows] == [LI_JUAN, LI_JUAN], "claimed in the pause"
    assert all(r.request is not None for r in await outbox(harness)), "with their requests"

    fake.storm_share = 0.0  # and the process is killed before the pause is over: the next one hands over
    assert (await hand_over(settings_for(engine, api), clock)).sent == 2
    assert [method for method, _ in sends_to(fake, LI_JUAN)] == ["sendmessage", "sendmessage", "sendphoto"]
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def test_an_outage_at_the_hand_over_backs_off_as_the_sender_would_and_loses_nothing(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    await killed_after_the_card(harness)
    fake.outage, fake.drop_share = True, 0.0

    assert await hand_over(settings_for(engine, api), clock) == Handed(sent=0, left=2)

    card, photo = await outbox(harness)
    assert (card.status, card.attempts, card.not_before) == (OutboxStatus.PENDING, 1, clock() + timedelta(seconds=2))
    assert (photo.status, photo.not_before) == (OutboxStatus.PENDING, card.not_before), "behind its card"
    assert card.error.startswith("502") and card.claimed_by is None

    fake.outage = False
    clock.advance(seconds=2)
    restarted = Harness(harness.sessions, clock)
    assert [type(r).__name__ for r in sent_to(await restarted.deliver(), LI_JUAN)] == ["SendMessage", "SendPhoto"]
    assert {r.status for r in await outbox(harness)} == {OutboxStatus.SENT}


async def agenda_killed_after_its_first_request(harness: Harness, clock: FakeClock) -> int:
    """The agenda to 200 residents (more than `ahead`), its process killed as its first request reached Telegram:
    one claim, the first `ahead` rows marked "sending", the rest only claimed. Returns the broadcast's id."""
    async with harness.sessions() as session, session.begin():
        await add_residents(session, 7_000_000, 200, clock(), english_every=3)
        jsx = await session.scalar(select(Community.id).where(Community.code == "jsx"))
    async with harness.sessions() as session:
        started = await start_broadcast(session, jsx, BroadcastKind.AGENDA, "2026-11", clock())
    harness.telegram.die_after_next_request = True
    with pytest.raises(ProcessDied):
        await harness.deliver()
    return started.broadcast.id


async def test_broadcast_rows_handed_over_are_sent_at_most_once(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    broadcast_id = await agenda_killed_after_its_first_request(harness, clock)
    before = {r.id: r.status for r in await outbox(harness)}
    claimed = [i for i, status in before.items() if status == OutboxStatus.CLAIMED]
    sending = [i for i, status in before.items() if status == OutboxStatus.SENDING]
    assert claimed and sending

    assert await hand_over(settings_for(engine, api), clock) == Handed(sent=len(claimed), left=0)

    assert len(fake.requests) == len(claimed), "the rows caught sending are not the hand-over's"
    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    await restarted.deliver()
    chats = [str(r.params["chat_id"]) for r in fake.requests] + [
        str(m.chat_id) for m in harness.telegram.requests + restarted.telegram.requests if hasattr(m, "chat_id")
    ]
    assert max(Counter(chats).values()) == 1, "no resident got the agenda twice"
    after = {r.id: r.status for r in await outbox(harness)}
    assert {after[i] for i in claimed} == {OutboxStatus.SENT}
    assert {after[i] for i in sending} == {OutboxStatus.IN_DOUBT}
    async with harness.sessions() as session:
        shown = await progress(session, STAFF_WANG, broadcast_id)
    assert (shown.in_doubt, shown.remaining) == (len(sending), 0)


async def test_a_hand_over_killed_mid_broadcast_leaves_only_the_row_on_the_wire_in_doubt(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    broadcast_id = await agenda_killed_after_its_first_request(harness, clock)
    in_doubt_before = sum(1 for r in await outbox(harness) if r.status == OutboxStatus.SENDING)

    handing_over = asyncio.create_task(hand_over(settings_for(engine, api), clock))
    fake.on_request = lambda _: handing_over.cancel()  # killed as its first request reaches Telegram
    with pytest.raises(asyncio.CancelledError):
        await handing_over
    fake.on_request = None

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    await restarted.deliver()
    async with harness.sessions() as session:
        shown = await progress(session, STAFF_WANG, broadcast_id)
    assert (shown.in_doubt, shown.remaining) == (in_doubt_before + 1, 0), "one row was on the wire, no more"
    chats = [str(r.params["chat_id"]) for r in fake.requests] + [
        str(m.chat_id) for m in harness.telegram.requests + restarted.telegram.requests if hasattr(m, "chat_id")
    ]
    assert max(Counter(chats).values()) == 1, "no resident got the agenda twice"


async def test_a_broadcast_row_refused_at_the_hand_over_is_not_in_doubt_through_the_pause(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    """Telegram refused it (429): the row waits out the pause claimed, not "sending", so a hand-over killed in the
    pause leaves it to be sent, once, by the next process."""
    fake, api = telegram
    broadcast_id = await agenda_killed_after_its_first_request(harness, clock)
    in_doubt_before = sum(1 for r in await outbox(harness) if r.status == OutboxStatus.SENDING)

    fake.storm_share, fake.storm_retry_after = 1.0, 30
    refused: list[int] = []

    def note_refusal(request: Request) -> None:
        if request.status == 429:
            refused.append(int(str(request.params["chat_id"])))

    fake.on_request = note_refusal
    handing_over = asyncio.create_task(hand_over(settings_for(engine, api), clock))
    for _ in range(300):  # the hand-over is in its pause once the refused row is claimed again
        await asyncio.sleep(0.01)
        rows = {r.chat_id: r.status for r in await outbox(harness)}
        if refused and rows[refused[0]] == OutboxStatus.CLAIMED:
            break
    handing_over.cancel()  # killed in the pause
    with contextlib.suppress(asyncio.CancelledError):
        await handing_over
    assert refused and rows[refused[0]] == OutboxStatus.CLAIMED, "refused, it waits claimed"
    fake.storm_share, fake.on_request = 0.0, None

    restarted = Harness(harness.sessions, clock)
    await restarted.app.sender.take_back_claims(everyone=True)
    await restarted.deliver()
    async with harness.sessions() as session:
        shown = await progress(session, STAFF_WANG, broadcast_id)
    assert (shown.in_doubt, shown.remaining) == (in_doubt_before, 0), "none more in doubt"
    assert [m.chat_id for m in restarted.telegram.accepted].count(refused[0]) == 1  # type: ignore[attr-defined]


async def test_rows_queued_before_the_hand_over_existed_wait_for_the_sender(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    fake, api = telegram
    number = await killed_after_the_card(harness)
    async with harness.sessions() as session, session.begin():
        for row in await session.scalars(select(OutboxMessage)):
            row.request = None  # claimed by an older version, which kept no request

    assert await hand_over(settings_for(engine, api), clock) == Handed()

    assert fake.requests == []
    restarted = Harness(harness.sessions, clock)
    assert await restarted.app.sender.take_back_claims(everyone=True) == 2
    second_life = sent_to(await restarted.deliver(), LI_JUAN)
    assert f"#{number}" in text_of(second_life[0])


async def test_a_database_not_migrated_yet_has_nothing_to_hand_over(
    harness: Harness, clock: FakeClock, engine: AsyncEngine, telegram: tuple[FakeBotAPI, str]
) -> None:
    """The first start after an upgrade runs the hand-over before the migrations: it finds no requests, and the
    sender sends everything after its start, as before."""
    fake, api = telegram
    await killed_after_the_card(harness)
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE outbox DROP COLUMN request"))

    assert await hand_over(settings_for(engine, api), clock) == Handed()
    assert fake.requests == []


async def test_the_real_process_hands_over_before_its_sender_starts(
    tmp_path: Path, telegram: tuple[FakeBotAPI, str]
) -> None:
    """``python -m bot``: a message its killed predecessor had claimed is sent once, by the hand-over."""
    fake, api = telegram
    environment = {"BOT_TOKEN": f"{BOT_ID}:HANDOVER", "TELEGRAM_API_SERVER": api}
    code, logged = await asyncio.to_thread(run_until_polling, tmp_path, **environment)
    assert code == 0, logged
    chat_id = 777001
    request = {"chat_id": str(chat_id), "text": "hand-over", "parse_mode": "HTML"}
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as database:  # a claim a SIGKILL left behind
        database.execute(
            "INSERT INTO outbox (chat_id, kind, payload, status, priority, attempts, not_before, created_at,"
            " claimed_at, claimed_by, error, request) VALUES (?, 'ticket_update', '{}', 'claimed', 0, 0,"
            " datetime('now'), datetime('now'), datetime('now'), 'dead', '', ?)",
            (chat_id, json.dumps({"method": "sendMessage", "fields": request, "asks_if_fixed": False, "photo": False})),
        )

    log = (tmp_path / "bot.log").open("w+", encoding="utf-8")
    bot = start_bot(tmp_path, clean_environment(**environment), log)
    try:
        await until(_async(lambda: "polling for updates" in read(log)), "the bot to poll")
    finally:
        bot.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(bot.wait, 60) == 0, read(log)
    assert "1 sent at start-up, 0 left to the sender" in read(log)
    assert [params["text"] for _, params in sends_to(fake, chat_id)] == ["hand-over"], "once, not again by the sender"
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as database:
        assert database.execute("SELECT status, request FROM outbox WHERE chat_id = ?", (chat_id,)).fetchall() == [
            ("sent", None)
        ]
