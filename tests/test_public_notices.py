"""Public notices (公示) in the community's own channel or group: the execution feedback, a topic's public notice
and, when switched on, closed tickets, as one post each, never who reported; retried like every message."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from aiogram.methods import GetMe, SendMessage, SendPhoto, TelegramMethod
from aiogram.types import Chat, ChatMemberLeft, ChatMemberMember, User
from sqlalchemy import select, update

from bot.callbacks import BroadcastAction, BroadcastCb
from domain import confirmation, deliberation, tickets
from domain.broadcasts import start_broadcast
from domain.community_file import import_community, loads_community
from domain.outbox import Notice
from storage.models import BroadcastKind, Community, OutboxMessage, Topic, TopicSource, TopicStatus, TopicTask
from storage.models import User as UserRecord
from tests.conftest import SAMPLE_COMMUNITY, FakeClock
from tests.fake_telegram import SERVER_ERROR, buttons_of, sent_to, text_of
from tests.harness import Harness
from tests.households import verify_household
from tests.test_escalation import texts
from tests.test_odd_input import membership
from tests.test_routing import report, resident_in

PUBLIC_CHAT = -1001234567890
STAFF_WANG, RESIDENT = 100001, 950001


async def with_public_chat(harness: Harness, clock: FakeClock, closed_tickets: bool = True) -> None:
    text = SAMPLE_COMMUNITY.read_text(encoding="utf-8").replace(
        "public_closed_tickets = false",
        f"public_chat_id = {PUBLIC_CHAT}\npublic_closed_tickets = {'true' if closed_tickets else 'false'}",
    )
    async with harness.sessions() as session:
        await import_community(session, loads_community(text), clock())


def buttons(requests: list[TelegramMethod[Any]]) -> list[str]:
    return [label for request in requests for label, _ in buttons_of(request)]


def to_public_chat(requests: list[TelegramMethod[Any]]) -> list[Any]:
    return [r for r in requests if getattr(r, "chat_id", None) == PUBLIC_CHAT]


async def resolved_ticket(harness: Harness, clock: FakeClock) -> int:
    """A resident named 张三丰 reports; the grid worker accepts and resolves it with an "after" photo."""
    async with harness.sessions() as session:
        known = await session.get(UserRecord, RESIDENT)
    if known is None:
        await resident_in(harness.sessions, clock, RESIDENT, "yinba/1")
        await verify_household(harness.sessions, RESIDENT, clock())  # only a verified household confirms
    async with harness.sessions() as session, session.begin():
        await session.execute(update(UserRecord).where(UserRecord.id == RESIDENT).values(full_name="张三丰"))
    filed = await report(harness.sessions, clock, RESIDENT, code="light")
    number = filed.ticket.id
    assert filed.decision.assignee is not None
    worker = filed.decision.assignee.user_id
    async with harness.sessions() as session:
        await tickets.accept(session, actor_id=worker, ticket_id=number, now=clock())
    async with harness.sessions() as session:
        await tickets.resolve(
            session, actor_id=worker, ticket_id=number, note="更换了楼道灯泡", photo="after-photo", now=clock()
        )
    await harness.deliver()
    return number


async def test_a_closed_ticket_is_posted_with_its_after_photo_never_its_reporter(
    harness: Harness, clock: FakeClock
) -> None:
    await with_public_chat(harness, clock)
    number = await resolved_ticket(harness, clock)
    async with harness.sessions() as session:
        await confirmation.confirm_fixed(session, actor_id=RESIDENT, ticket_id=number, now=clock())
    [post] = to_public_chat(await harness.deliver())
    assert isinstance(post, SendPhoto) and post.photo == "after-photo"
    assert "路灯/楼道灯" in post.caption and "银巴小区 1号楼" in post.caption and "更换了楼道灯泡" in post.caption
    assert "张三丰" not in post.caption and str(RESIDENT) not in post.caption and "单元" not in post.caption
    assert post.reply_markup is None


async def test_auto_closed_tickets_are_posted_and_nothing_without_the_switch(
    harness: Harness, clock: FakeClock
) -> None:
    await with_public_chat(harness, clock, closed_tickets=False)
    number = await resolved_ticket(harness, clock)
    clock.advance(days=8)
    async with harness.sessions() as session:
        await confirmation.close_unconfirmed(session, clock())
    assert to_public_chat(await harness.deliver()) == [], "closed tickets are posted only when switched on"

    await with_public_chat(harness, clock, closed_tickets=True)
    second = await resolved_ticket(harness, clock)
    clock.advance(days=8)
    async with harness.sessions() as session:
        await confirmation.close_unconfirmed(session, clock())
    [post] = to_public_chat(await harness.deliver())
    assert f"#{second}" in text_of(post) and f"#{number}" not in text_of(post)


async def test_the_execution_feedback_is_one_post_and_is_retried(harness: Harness, clock: FakeClock) -> None:
    await with_public_chat(harness, clock)
    async with harness.sessions() as session:
        community_id = await session.scalar(select(Community.id))
    assert community_id is not None
    async with harness.sessions() as session:
        await start_broadcast(session, community_id, BroadcastKind.FEEDBACK, "2026-10", clock())
    harness.telegram.fail_next(PUBLIC_CHAT, SERVER_ERROR)
    assert len(to_public_chat(await harness.deliver())) == 1  # refused with a 502
    clock.advance(seconds=3)
    [post] = to_public_chat(await harness.deliver())
    assert isinstance(post, SendMessage) and "执行反馈" in post.text and post.reply_markup is None
    async with harness.sessions() as session:
        rows = list(await session.scalars(select(OutboxMessage).where(OutboxMessage.chat_id == PUBLIC_CHAT)))
    assert [(r.kind, r.status, r.attempts) for r in rows] == [(Notice.PUBLIC_POST, "sent", 1)]


async def test_with_a_public_chat_only_residents_who_ask_get_a_private_copy_of_the_feedback(
    harness: Harness, clock: FakeClock
) -> None:
    wants_copy, reads_channel, turned_off = 950011, 950012, 950013
    for user_id in (wants_copy, reads_channel, turned_off):
        await resident_in(harness.sessions, clock, user_id, "yinba/11")
    copy_asker = harness.person(wants_copy, language="en")
    await copy_asker.tap(await copy_asker.send("/settings"), "Turn off")
    async with harness.sessions() as session:
        community_id = await session.scalar(select(Community.id))
    assert community_id is not None

    # Without a public chat there is nothing to copy: no such button, and everyone who wants it gets it privately.
    settings = await harness.person(reads_channel, language="en").send("/settings")
    assert "public" not in texts(settings) and "private copy" not in str(buttons(settings))
    await copy_asker.tap(await copy_asker.send("/settings"), "Turn on")
    async with harness.sessions() as session:
        await start_broadcast(session, community_id, BroadcastKind.FEEDBACK, "2026-10", clock())
    delivered = await harness.deliver()
    assert to_public_chat(delivered) == []
    for user_id in (wants_copy, reads_channel, turned_off):
        assert re.search("Execution feedback|执行反馈", texts(sent_to(delivered, user_id)))

    # With one: the feedback is one public post; a resident asks for a private copy in /settings, another
    # does not, a third turned the broadcasts off and asked for a copy before (off wins).
    await with_public_chat(harness, clock)
    off = harness.person(turned_off, language="en")
    await off.tap(await off.send("/settings"), "Send me a private copy")
    await off.tap(await off.send("/settings"), "Turn off")
    settings = await copy_asker.send("/settings")
    assert "public notice channel" in texts(settings) and "A private copy: <b>off</b>" in texts(settings)
    answer = await copy_asker.tap(settings, "Send me a private copy")
    assert "You will get a private copy" in texts(answer) and "A private copy: <b>on</b>" in texts(answer)
    async with harness.sessions() as session:
        stored = await session.get(UserRecord, wants_copy)
        assert stored is not None and stored.public_copy and not stored.broadcasts_off
    channel = harness.person(reads_channel)  # Chinese
    assert "私下" in texts(await channel.send("/settings"))

    async with harness.sessions() as session:
        started = await start_broadcast(session, community_id, BroadcastKind.FEEDBACK, "2026-11", clock())
    assert started.broadcast.recipients == 1
    delivered = await harness.deliver()
    [post] = to_public_chat(delivered)
    assert "执行反馈" in post.text and "/settings" in post.text and post.reply_markup is None
    assert "Execution feedback" in texts(sent_to(delivered, wants_copy))
    assert sent_to(delivered, reads_channel) == [] and sent_to(delivered, turned_off) == []

    # The agenda is not posted publicly: it still goes to everyone who wants broadcasts.
    async with harness.sessions() as session:
        agenda = await start_broadcast(session, community_id, BroadcastKind.AGENDA, "2026-12", clock())
    assert agenda.broadcast.recipients == 2
    assert to_public_chat(await harness.deliver()) == []

    # Turned off again: no copy. Staff sending the feedback by hand are told where it went.
    answer = await copy_asker.tap(await copy_asker.send("/settings"), "No private copy")
    assert "no private copy" in texts(answer)
    clock.advance(days=64)  # 5 January: the feedback about the meeting of 28 December is not out yet
    staff = harness.person(STAFF_WANG, language="en")
    queued = await staff.press(BroadcastCb(action=BroadcastAction.SEND_NOW, kind=BroadcastKind.FEEDBACK).pack())
    assert "Queued for 0 residents" in texts(queued) and "one post in the community's public notice chat" in texts(
        queued
    )
    delivered = await harness.deliver()
    assert len(to_public_chat(delivered)) == 1 and sent_to(delivered, wants_copy) == []


async def test_a_topics_public_notice_is_posted(harness: Harness, clock: FakeClock) -> None:
    await with_public_chat(harness, clock)
    now = clock()
    async with harness.sessions() as session, session.begin():
        community_id = await session.scalar(select(Community.id))
        topic = Topic(
            community_id=community_id,
            status=TopicStatus.FEEDBACK,
            source=TopicSource.STAFF,
            title="银巴小区充电棚选址",
            decision="在小区南门建充电棚",
            votes_for=23,
            votes_against=2,
            votes_abstain=1,
            decided_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(topic)
        await session.flush()
        session.add(
            TopicTask(
                topic_id=topic.id,
                title="建充电棚",
                responsible="鑫盛物业",
                due_on=date(2026, 12, 20),
                progress=100,
                created_at=now,
                updated_at=now,
            )
        )
    async with harness.sessions() as session:
        await deliberation.publish_notice(session, actor_id=STAFF_WANG, topic_id=topic.id, now=clock())
    [post] = to_public_chat(await harness.deliver())
    assert "公示" in post.text and "银巴小区充电棚选址" in post.text and "在小区南门建充电棚" in post.text
    assert "建充电棚 — 鑫盛物业" in post.text and "100%" in post.text


async def test_added_to_its_public_group_the_bot_says_what_it_will_post(harness: Harness, clock: FakeClock) -> None:
    await with_public_chat(harness, clock)
    me = User(id=42, is_bot=True, first_name="bot")
    admin = User(id=STAFF_WANG, is_bot=False, first_name="王书记")
    left, member = ChatMemberLeft(user=me), ChatMemberMember(user=me)
    public = Chat(id=PUBLIC_CHAT, type="supergroup", title="建设巷社区公示")
    other = Chat(id=-1009999, type="supergroup", title="楼栋群")
    [welcome] = [r for r in await harness.feed(membership(public, admin, left, member)) if not isinstance(r, GetMe)]
    assert "建设巷社区" in welcome.text and "执行反馈" in welcome.text
    [plain] = [r for r in await harness.feed(membership(other, admin, left, member)) if not isinstance(r, GetMe)]
    assert "执行反馈" not in plain.text


def test_a_public_chat_id_must_be_a_chat_and_closed_tickets_need_one() -> None:
    import pytest

    from domain.community_file import CommunityFileError

    base = SAMPLE_COMMUNITY.read_text(encoding="utf-8")
    with pytest.raises(CommunityFileError, match="public_chat_id must be between"):
        loads_community(base.replace("public_closed_tickets = false", "public_chat_id = 12345"))
    with pytest.raises(CommunityFileError, match="needs public_chat_id"):
        loads_community(base.replace("public_closed_tickets = false", "public_closed_tickets = true"))
