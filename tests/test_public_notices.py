"""Public notices (公示) in the community's own channel or group: the execution feedback, a topic's public notice
and, when switched on, closed tickets, as one post each, never who reported; retried like every message."""

from __future__ import annotations

from datetime import date
from typing import Any

from aiogram.methods import GetMe, SendMessage, SendPhoto, TelegramMethod
from aiogram.types import Chat, ChatMemberLeft, ChatMemberMember, User
from sqlalchemy import select, update

from domain import confirmation, deliberation, tickets
from domain.broadcasts import start_broadcast
from domain.community_file import import_community, loads_community
from domain.outbox import Notice
from storage.models import BroadcastKind, Community, OutboxMessage, Topic, TopicSource, TopicStatus, TopicTask
from storage.models import User as UserRecord
from tests.conftest import SAMPLE_COMMUNITY, FakeClock
from tests.fake_telegram import SERVER_ERROR, text_of
from tests.harness import Harness
from tests.households import verify_household
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
