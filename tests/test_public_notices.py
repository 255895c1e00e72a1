"""Public notices (公示) in the community's own channel or group: the execution feedback, a topic's public notice
and, when switched on, closed tickets, as one post each, never who reported; retried like every message."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from aiogram.methods import GetMe, SendMessage, SendPhoto, TelegramMethod
from aiogram.types import Chat, ChatMemberLeft, ChatMemberMember, User
from sqlalchemy import select, update

from bot.callbacks import BroadcastAction, BroadcastCb
from domain import confirmation, deliberation, tickets
from domain.broadcasts import start_broadcast
from domain.community_file import import_community, loads_community
from domain.outbox import Notice
from storage.models import (
    BroadcastKind,
    Community,
    OutboxMessage,
    Ticket,
    Topic,
    TopicSource,
    TopicStatus,
    TopicTask,
)
from storage.models import User as UserRecord
from tests.conftest import ROOT, SAMPLE_COMMUNITY, FakeClock
from tests.fake_telegram import SERVER_ERROR, buttons_of, sent_to, text_of
from tests.harness import Harness
from tests.households import verify_household
from tests.test_escalation import texts
from tests.test_odd_input import membership
from tests.test_routing import report, resident_in

PUBLIC_CHAT = -1001234567890
HEPING = ROOT / "tests" / "communities" / "heping.toml"
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


def decided_topic(community_id: int, now: datetime, **what: Any) -> Topic:
    """A topic voted on and decided, at its last step but one (feedback), for its public notice."""
    return Topic(
        community_id=community_id,
        status=TopicStatus.FEEDBACK,
        decision="在小区南门建充电棚",
        votes_for=23,
        votes_against=2,
        votes_abstain=1,
        decided_at=now,
        created_at=now,
        updated_at=now,
        **what,
    )


async def test_a_topics_public_notice_is_posted(harness: Harness, clock: FakeClock) -> None:
    await with_public_chat(harness, clock)
    now = clock()
    async with harness.sessions() as session, session.begin():
        community_id = await session.scalar(select(Community.id))
        topic = decided_topic(community_id, now, source=TopicSource.STAFF, title="银巴小区充电棚选址")
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


async def topic_in_feedback(harness: Harness, title: str, suggester: int, reporter: int) -> int:
    """A topic at its last step but one, suggested by ``suggester`` and taking in a ticket ``reporter`` filed: both
    are behind it (and were told of its decision and progress privately)."""
    clock = harness.clock
    filed = await report(harness.sessions, clock, reporter, code="light")
    now = clock()
    async with harness.sessions() as session, session.begin():
        community_id = await session.scalar(select(Community.id).where(Community.code == "jsx"))
        topic = decided_topic(community_id, now, source=TopicSource.SUGGESTION, raised_by=suggester, title=title)
        session.add(topic)
        await session.flush()
        await session.execute(update(Ticket).where(Ticket.id == filed.ticket.id).values(topic_id=topic.id))
        return topic.id


async def test_a_topics_public_notice_goes_privately_to_those_behind_it_and_to_who_asked_for_a_copy(
    harness: Harness, clock: FakeClock
) -> None:
    # Who is who: two residents behind the topics (the suggester, who also asked for copies, and the reporter
    # of its ticket, who turned the monthly broadcasts off); one who asked for copies; one who asked but then
    # turned the broadcasts off (off wins, as for the feedback); one who asked nothing; and one who asked for
    # copies in another community.
    suggester, reporter, asker, asked_then_off, plain, elsewhere = 950021, 950022, 950023, 950024, 950025, 950026
    for user_id in (suggester, reporter, asker, asked_then_off, plain):
        await resident_in(harness.sessions, clock, user_id, "yinba/11")
    async with harness.sessions() as session:
        await import_community(session, loads_community(HEPING.read_text(encoding="utf-8")), clock())
    await resident_in(harness.sessions, clock, elsewhere, "heping/1")
    async with harness.sessions() as session, session.begin():
        await session.execute(
            update(UserRecord)
            .where(UserRecord.id.in_([suggester, asker, asked_then_off, elsewhere]))
            .values(public_copy=True)
        )
        await session.execute(
            update(UserRecord).where(UserRecord.id.in_([reporter, asked_then_off])).values(broadcasts_off=True)
        )
    everyone = (suggester, reporter, asker, asked_then_off, plain, elsewhere)

    async def notice(topic_id: int) -> tuple[list[TelegramMethod[Any]], dict[int, int]]:
        async with harness.sessions() as session:
            await deliberation.publish_notice(session, actor_id=STAFF_WANG, topic_id=topic_id, now=clock())
        delivered = await harness.deliver()
        return delivered, {user_id: len(sent_to(delivered, user_id)) for user_id in everyone}

    # Without a public chat nothing changes: the two behind the topic are told, nobody else, nothing is posted.
    first = await topic_in_feedback(harness, "南门充电棚", suggester, reporter)
    delivered, received = await notice(first)
    assert to_public_chat(delivered) == []
    assert received == {suggester: 1, reporter: 1, asker: 0, asked_then_off: 0, plain: 0, elsewhere: 0}
    assert "南门充电棚" in texts(sent_to(delivered, reporter))

    # With one: one post; privately, those behind the topic (their own matter, whatever their settings) and the
    # community's residents who asked for a private copy, each once.
    await with_public_chat(harness, clock)
    second = await topic_in_feedback(harness, "北门车棚", suggester, reporter)
    delivered, received = await notice(second)
    [post] = to_public_chat(delivered)
    assert "北门车棚" in post.text and "/settings" in post.text and post.reply_markup is None
    assert received == {suggester: 1, reporter: 1, asker: 1, asked_then_off: 0, plain: 0, elsewhere: 0}
    for user_id in (suggester, reporter, asker):
        assert "北门车棚" in texts(sent_to(delivered, user_id))
    async with harness.sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage.chat_id).where(
                OutboxMessage.kind == Notice.TOPIC_UPDATE, OutboxMessage.payload["topic_id"].as_integer() == second
            )
        )
        assert sorted(rows) == [suggester, reporter, asker]

    # /settings says so.
    settings = texts(await harness.person(plain, language="en").send("/settings"))
    assert "the public notices of its decisions" in settings and "A private copy: <b>off</b>" in settings


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
