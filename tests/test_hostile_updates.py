"""Random and forged updates through the real dispatcher: nothing reaches aiogram's error path, nothing the bot
sends would be refused by Telegram, and nothing about a ticket is posted into a group.

Hypothesis builds updates of every kind Telegram sends a bot (messages of every content type in private chats,
groups, supergroups and channels, edits, channel posts, buttons with random, truncated, oversized and forged
data, inline queries, membership changes, reactions, join requests, poll answers), from residents, workers,
strangers and bot accounts, with text full of NUL, control and invisible characters. They are mixed with real
flows: the bound resident's /report wizard and a worker pressing the buttons of real tickets. One world (a
database with the sample community, one harness) serves all examples of a backend, so the hostile updates land
in the middle of the real flows' wizards, and the outbox's cards are rendered from what they filed.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import TelegramMethod
from aiogram.types import (
    Animation,
    Audio,
    CallbackQuery,
    Chat,
    ChatJoinRequest,
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberUpdated,
    Contact,
    Dice,
    Document,
    ErrorEvent,
    InaccessibleMessage,
    InlineQuery,
    Location,
    Message,
    MessageReactionUpdated,
    PhotoSize,
    Poll,
    PollAnswer,
    PollOption,
    ReactionTypeEmoji,
    Update,
    User,
    Venue,
    Video,
    VideoNote,
    Voice,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.callbacks import (
    BroadcastAction,
    BroadcastCb,
    CategoryCb,
    EscalateCb,
    FeedbackAction,
    FeedbackCb,
    HouseholdAction,
    HouseholdCb,
    LanguageCb,
    MeTooAction,
    MeTooCb,
    PlaceCb,
    PlaceLevel,
    SettingsAction,
    SettingsCb,
    SurveyCb,
    TicketAction,
    TicketCb,
    TopicAction,
    TopicCb,
)
from domain.community_file import import_community, load_community_file
from storage.db import create_engine, create_session_factory
from storage.models import Base, Ticket
from tests.conftest import SAMPLE_COMMUNITY, FakeClock, require_postgresql
from tests.fake_telegram import BOT_ID, buttons_of
from tests.harness import STICKER, Harness
from tests.telegram_rules import request_problems

RESIDENT = 900100  # bound to 银巴小区 1号楼 2单元 (grid 1) before the first example
WORKERS = (200001, 200002, 100001)  # grid-1 workers and a community staff member
STRANGER = 900999  # never bound
GROUP_ANONYMOUS_BOT = User(id=1087968824, is_bot=True, first_name="Group", username="GroupAnonymousBot")
OTHER_BOT = User(id=777000111, is_bot=True, first_name="Helper", username="helper_bot")
GROUPS = (
    Chat(id=-4001, type="group", title="楼栋群"),
    Chat(id=-1001234567890, type="supergroup", title="社区群", username="jsx_residents"),
)
CHANNEL = Chat(id=-1009876543210, type="channel", title="社区通知")
CHATS_NOT_PRIVATE = {chat.id for chat in (*GROUPS, CHANNEL)}

# Characters that break things: NUL and other controls, invisible ones, HTML's specials, a right-to-left
# override, combining marks, emoji sequences, CJK, and the separator of callback data.
NASTY = [
    "\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\r", "\n", "\t", " ", "\u3000",
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u0301", "<", ">", "&", '"', "'",
    "&lt;", "<b>", "</i>", "😀", "👨‍👩‍👧", "楼", "漏水", "a", "/", "@", ":", "#", "1",
]  # fmt: skip
KNOWN_TEXTS = [
    "/start", "/start jsx_yinba_1", "/start jsx_nowhere", "/start \x00", "/report", "/report@feedback_test_bot",
    "/report@other_bot", "/REPORT", "/my", "/tickets", "/tickets@feedback_test_bot", "/ledger", "/suggest",
    "/topics", "/newtopic", "/broadcasts", "/settings", "/home", "/language", "/help", "/cancel", "/nonsense",
    "/", "📝 反映问题", "📋 我的反映", "🗂 待办工单", "🌐 语言 Language", "✅ 完成", "📍 发送我的位置", "📨 提交",
    "✖️ 取消", "📝 Report a problem", "✅ Done", "📨 Submit", "/verify", "/households", "/register",
    "✍️ 改由网格员核验", "➡️ 不加照片，直接提交", "302",
]  # fmt: skip


def _nasty_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(NASTY) | st.characters(codec="utf-8"), max_size=max_size).map("".join)


texts = st.one_of(
    _nasty_text(),
    st.sampled_from(KNOWN_TEXTS),
    st.builds(lambda known, tail: known + tail, st.sampled_from(KNOWN_TEXTS), _nasty_text(10)),
    # Very long: past the description's limit, past Telegram's message limit.
    st.builds(lambda piece, times: piece * times, _nasty_text(8).filter(bool), st.integers(100, 700)),
    st.just(""),
)

_ids = iter(range(10**9, 2 * 10**9))


def next_id() -> int:
    return next(_ids)


def now() -> datetime:
    return datetime.now(UTC)


def person(user_id: int, language: str | None = "zh-hans") -> User:
    return User(id=user_id, is_bot=False, first_name=f"user{user_id}", language_code=language)


senders = st.one_of(
    st.sampled_from([RESIDENT, *WORKERS, STRANGER]).map(person),
    st.integers(1, 2**40).map(lambda user_id: person(user_id, None)),
    st.sampled_from([GROUP_ANONYMOUS_BOT, OTHER_BOT]),
)
# A private chat is the sender's own; a message may also come from a group, supergroup or channel.
places = st.sampled_from(["private", "private", "group", "channel"])

file_ids = st.sampled_from(["AgAD-photo", "file-1", "x" * 200])
CONTENT: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "text": st.builds(lambda text: {"text": text or "…"}, texts),
    "photo": st.builds(
        lambda file_id, caption: {
            "photo": [PhotoSize(file_id=file_id, file_unique_id="u", width=90, height=90)],
            "caption": caption,
        },
        file_ids,
        st.none() | texts,
    ),
    "sticker": st.just({"sticker": STICKER}),
    "location": st.builds(
        lambda lat, lon: {"location": Location(latitude=lat, longitude=lon)},
        st.floats(-90, 90),
        st.floats(-180, 180),
    ),
    "venue": st.just(
        {"venue": Venue(location=Location(latitude=38.47, longitude=106.23), title="<venue>", address="&")}
    ),
    # Someone's contact: without a user id (a phone-book card), the sender's own, another person's, or anything.
    "contact": st.builds(
        lambda name, user_id: {
            "contact": Contact(phone_number="+8613800000000", first_name=name or "x", user_id=user_id)
        },
        texts,
        st.none() | st.sampled_from([RESIDENT, *WORKERS, STRANGER]) | st.integers(-(2**40), 2**40),
    ),
    "document": st.builds(
        lambda caption: {"document": Document(file_id="doc", file_unique_id="d"), "caption": caption},
        st.none() | texts,
    ),
    "voice": st.just({"voice": Voice(file_id="v", file_unique_id="v", duration=3)}),
    "audio": st.just({"audio": Audio(file_id="a", file_unique_id="a", duration=3)}),
    "video": st.just({"video": Video(file_id="vi", file_unique_id="vi", width=1, height=1, duration=1)}),
    "video_note": st.just({"video_note": VideoNote(file_id="vn", file_unique_id="vn", length=1, duration=1)}),
    "animation": st.just({"animation": Animation(file_id="an", file_unique_id="an", width=1, height=1, duration=1)}),
    "dice": st.builds(lambda value: {"dice": Dice(emoji="🎲", value=value)}, st.integers(1, 6)),
    "poll": st.builds(
        lambda question: {
            "poll": Poll(
                id="p",
                question=question or "?",
                options=[
                    PollOption(persistent_id="1", text="A", voter_count=0),
                    PollOption(persistent_id="2", text="B", voter_count=0),
                ],
                total_voter_count=0,
                is_closed=False,
                is_anonymous=True,
                type="regular",
                allows_multiple_answers=False,
                allows_revoting=False,
                members_only=False,
            )
        },
        texts,
    ),
    "new_chat_members": st.builds(lambda user: {"new_chat_members": [user]}, senders),
    "left_chat_member": st.builds(lambda user: {"left_chat_member": user}, senders),
    "new_chat_title": st.builds(lambda title: {"new_chat_title": title or "x"}, texts),
    "group_chat_created": st.just({"group_chat_created": True}),
}
contents = st.one_of(*CONTENT.values())


def chat_for(place: str, user: User, index: int) -> Chat:
    if place == "private":
        return Chat(id=user.id, type="private", first_name=user.first_name)
    if place == "channel":
        return CHANNEL
    return GROUPS[index % len(GROUPS)]


@st.composite
def messages(draw: st.DrawFn) -> Message:
    user = draw(senders)
    place = draw(places)
    chat = chat_for(place, user, draw(st.integers(0, 1)))
    sender: dict[str, Any] = {"from_user": user}
    if place == "channel":
        sender = {"sender_chat": CHANNEL}  # channel posts have no sender
    elif user is GROUP_ANONYMOUS_BOT and chat.type != "private":
        sender["sender_chat"] = chat  # an anonymous admin writes as the group itself
    return Message(message_id=next_id(), date=now(), chat=chat, **sender, **draw(contents))


# --- button data ------------------------------------------------------------------------------------------

HUGE = st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64, 2**70, -1, -(2**31), -(2**70)])
SMALL = st.integers(0, 40)
ids = HUGE | SMALL


def _pack(data: CallbackData) -> str:
    """CallbackData.pack without its checks: what a forged button may carry."""
    values = [data._encode_value(key, value) for key, value in data.model_dump(mode="python").items()]
    return data.__separator__.join([data.__prefix__, *values])


def packed(ids: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """Data laid out as the bot's own buttons are, with these ids: built without validation, so that ids beyond
    the database's range can be packed the way a custom client would send them."""
    return st.one_of(
        st.builds(lambda a, i: TicketCb.model_construct(action=a, ticket_id=i), st.sampled_from(TicketAction), ids),
        st.builds(
            lambda i, level: EscalateCb.model_construct(ticket_id=i, level=level),
            ids,
            st.sampled_from(["community", "street"]),
        ),
        st.builds(lambda i: CategoryCb.model_construct(category_id=i), ids),
        st.builds(
            lambda level, i, unit: PlaceCb.model_construct(level=level, id=i, unit=unit),
            st.sampled_from(PlaceLevel),
            ids,
            ids,
        ),
        st.builds(lambda code: LanguageCb(code=code), st.sampled_from(["en", "zh_CN", "fr"])),
        st.builds(
            lambda a, i, stars: FeedbackCb.model_construct(action=a, ticket_id=i, stars=stars),
            st.sampled_from(FeedbackAction),
            ids,
            st.integers(0, 6) | ids,
        ),
        st.builds(lambda a, i: MeTooCb.model_construct(action=a, ticket_id=i), st.sampled_from(MeTooAction), ids),
        st.builds(
            lambda a, i, t: TopicCb.model_construct(action=a, topic_id=i, task_id=t),
            st.sampled_from(TopicAction),
            ids,
            ids,
        ),
        st.builds(lambda i, option: SurveyCb.model_construct(topic_id=i, option=option), ids, st.integers(-2, 7) | ids),
        st.builds(
            lambda a, kind, i: BroadcastCb.model_construct(action=a, kind=kind, broadcast_id=i),
            st.sampled_from(BroadcastAction),
            st.sampled_from(["agenda", "feedback", "survey", "x"]),
            ids,
        ),
        st.builds(lambda a: SettingsCb(action=a), st.sampled_from(SettingsAction)),
        st.builds(lambda a, i: HouseholdCb.model_construct(action=a, id=i), st.sampled_from(HouseholdAction), ids),
    ).map(_pack)


REAL_DATA = packed(SMALL)


PREFIXES = ["t", "e", "c", "p", "l", "fb", "mt", "tp", "sv", "bc", "st"]
CODES = ["o", "a", "h", "n", "r", "y", "e", "d", "v", "c", "p", "b", "u", "j", "s", "x", "f", "t", "on", "off"]


def _forged(prefix: str, parts: list[Any]) -> str:
    return ":".join([prefix, *(str(part) for part in parts)])


callback_data = st.one_of(
    REAL_DATA,
    packed(ids),
    # A real prefix with a real action and huge, negative or nonsense ids, or the wrong number of parts.
    st.builds(
        _forged,
        st.sampled_from(PREFIXES),
        st.lists(st.one_of(st.sampled_from(CODES), ids, _nasty_text(6)), max_size=5),
    ),
    st.builds(lambda data, cut: data[:cut], REAL_DATA, st.integers(0, 10)),  # truncated
    st.builds(lambda data, times: data * times, REAL_DATA, st.integers(2, 30)),  # oversized
    _nasty_text(80),
)


@st.composite
def button_presses(draw: st.DrawFn) -> CallbackQuery:
    user = draw(senders.filter(lambda u: not u.is_bot))  # only people press buttons
    place = draw(st.sampled_from(["private", "private", "private", "group", "channel"]))
    chat = chat_for(place, user, draw(st.integers(0, 1)))
    bot_user = User(id=BOT_ID, is_bot=True, first_name="bot")
    where = draw(st.sampled_from(["message", "message", "inaccessible", "inline"]))
    extra: dict[str, Any] = {}
    if where == "message":
        extra["message"] = Message(message_id=next_id(), date=now(), chat=chat, from_user=bot_user, text="…")
    elif where == "inaccessible":  # older than 48 hours: Telegram no longer shows the bot its content
        extra["message"] = InaccessibleMessage(chat=chat, message_id=next_id())
    else:
        extra["inline_message_id"] = "inline-1"
    return CallbackQuery(id=str(next_id()), from_user=user, chat_instance="ci", data=draw(callback_data), **extra)


# --- membership and the rest ------------------------------------------------------------------------------

BOT_USER = User(id=BOT_ID, is_bot=True, first_name="Feedback", username="feedback_test_bot")


def _member(status: str, user: User) -> Any:
    if status == "member":
        return ChatMemberMember(user=user)
    if status == "kicked":
        return ChatMemberBanned(user=user, until_date=0)
    if status == "left":
        return ChatMemberLeft(user=user)
    return ChatMemberAdministrator(
        user=user,
        can_be_edited=False,
        is_anonymous=False,
        can_manage_chat=True,
        can_delete_messages=True,
        can_manage_video_chats=False,
        can_restrict_members=False,
        can_promote_members=False,
        can_change_info=False,
        can_invite_users=True,
        can_post_stories=False,
        can_edit_stories=False,
        can_delete_stories=False,
        can_send_welcome_messages=False,
        can_post_messages=True,
    )


statuses = st.sampled_from(["member", "kicked", "left", "administrator"])


@st.composite
def membership_changes(draw: st.DrawFn) -> ChatMemberUpdated:
    user = draw(senders)
    place = draw(places)
    chat = chat_for(place, user, draw(st.integers(0, 1)))
    subject = BOT_USER if draw(st.booleans()) else user
    return ChatMemberUpdated(
        chat=chat,
        from_user=user,
        date=now(),
        old_chat_member=_member(draw(statuses), subject),
        new_chat_member=_member(draw(statuses), subject),
    )


@st.composite
def updates(draw: st.DrawFn) -> Update:
    kind = draw(
        st.sampled_from(
            ["message"] * 6
            + ["callback_query"] * 5
            + ["edited_message", "channel_post", "edited_channel_post", "inline_query", "my_chat_member"]
            + ["my_chat_member", "chat_member", "message_reaction", "chat_join_request", "poll_answer"]
        )
    )
    update_id = next_id()
    if kind in ("message", "edited_message"):
        message = draw(messages())
        if kind == "edited_message":
            message = message.model_copy(update={"edit_date": int(now().timestamp())})
        return Update(update_id=update_id, **{kind: message})
    if kind in ("channel_post", "edited_channel_post"):
        post = Message(message_id=next_id(), date=now(), chat=CHANNEL, sender_chat=CHANNEL, **draw(contents))
        return Update(update_id=update_id, **{kind: post})
    if kind == "callback_query":
        return Update(update_id=update_id, callback_query=draw(button_presses()))
    if kind == "inline_query":
        query = InlineQuery(id=str(next_id()), from_user=draw(senders), query=draw(texts)[:256], offset="")
        return Update(update_id=update_id, inline_query=query)
    if kind in ("my_chat_member", "chat_member"):
        return Update(update_id=update_id, **{kind: draw(membership_changes())})
    user = draw(senders)
    if kind == "message_reaction":
        reaction = MessageReactionUpdated(
            chat=chat_for(draw(places), user, 0),
            message_id=1,
            user=user,
            date=now(),
            old_reaction=[],
            new_reaction=[ReactionTypeEmoji(emoji="👍")],
        )
        return Update(update_id=update_id, message_reaction=reaction)
    if kind == "chat_join_request":
        request = ChatJoinRequest(chat=GROUPS[1], from_user=user, user_chat_id=user.id, date=now())
        return Update(update_id=update_id, chat_join_request=request)
    answer = PollAnswer(poll_id="p", option_ids=[0], option_persistent_ids=["1"], user=user)
    return Update(update_id=update_id, poll_answer=answer)


# --- real flows ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    update: Update


@dataclass(frozen=True)
class ResidentReports:
    """The bound resident files a report through the wizard, with this description (perhaps refused)."""

    description: str
    photos: int
    location: bool


@dataclass(frozen=True)
class WorkerWorks:
    """A worker presses a card button of a real ticket (or a near one), then types."""

    worker: int
    action: TicketAction
    ticket: int  # an index into the tickets filed so far
    text: str
    old: bool  # the card is older than 48 hours: the button comes on an InaccessibleMessage


@dataclass(frozen=True)
class ResidentAnswers:
    """The resident answers "Is it fixed?" or rates one of their tickets, then types."""

    action: FeedbackAction
    ticket: int
    stars: int
    text: str
    old: bool


@dataclass(frozen=True)
class TimePasses:
    """Minutes go by: steps that wait for text run out, held notices fall due."""

    minutes: int


steps = st.one_of(
    st.builds(TimePasses, st.sampled_from([1, 31, 24 * 60])),
    st.builds(Hostile, updates()),
    st.builds(Hostile, updates()),
    st.builds(Hostile, updates()),
    st.builds(ResidentReports, texts, st.integers(0, 2), st.booleans()),
    st.builds(
        WorkerWorks, st.sampled_from(WORKERS), st.sampled_from(TicketAction), st.integers(0, 50), texts, st.booleans()
    ),
    st.builds(
        ResidentAnswers, st.sampled_from(FeedbackAction), st.integers(0, 50), st.integers(1, 5), texts, st.booleans()
    ),
)


def where(error: BaseException) -> str:
    """An exception's class and the innermost frame of this project's code that it passed through."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename]
    place = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
    first_line = str(error).strip().splitlines()[0][:100] if str(error).strip() else ""
    return f"{type(error).__name__} in {place}: {first_line}"


@dataclass
class World:
    harness: Harness
    clock: FakeClock
    dispose: Any
    problems: list[str] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)

    @classmethod
    async def build(cls, backend: str, tmp_path: Path) -> World:
        url = require_postgresql() if backend == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'hostile.sqlite3'}"
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        sessions = create_session_factory(engine)
        clock = FakeClock()
        async with sessions() as session:
            await import_community(session, load_community_file(SAMPLE_COMMUNITY), clock())
        world = cls(Harness(sessions, clock), clock, engine.dispose)
        world.harness.app.dispatcher.errors.outer_middleware(world._record_error)
        resident = world.harness.person(RESIDENT)
        await resident.tap(await resident.send("/start jsx_yinba_1"), "2")
        return world

    async def _record_error(self, handler: Any, event: ErrorEvent, data: dict[str, Any]) -> Any:
        self.problems.append(where(event.exception))
        return await handler(event, data)

    async def feed(self, update: Update) -> list[TelegramMethod[Any]]:
        before = len(self.harness.telegram.requests)
        try:
            await self.harness.app.dispatcher.feed_update(self.harness.bot, update)
        except Exception as error:  # already recorded by _record_error, unless it happened outside the dispatcher
            if not any(where(error) == p for p in self.problems[-1:]):
                self.problems.append(where(error))
        return self.harness.telegram.requests[before:]

    def _message(self, user_id: int, **content: Any) -> Update:
        chat = Chat(id=user_id, type="private")
        return Update(
            update_id=next_id(),
            message=Message(message_id=next_id(), date=now(), chat=chat, from_user=person(user_id), **content),
        )

    async def say(self, user_id: int, text: str) -> list[TelegramMethod[Any]]:
        return await self.feed(self._message(user_id, text=text or "…"))

    async def press(self, user_id: int, data: str, old: bool = False) -> list[TelegramMethod[Any]]:
        chat = Chat(id=user_id, type="private")
        message = (
            InaccessibleMessage(chat=chat, message_id=next_id())
            if old
            else Message(message_id=next_id(), date=now(), chat=chat, from_user=BOT_USER, text="…")
        )
        query = CallbackQuery(
            id=str(next_id()), from_user=person(user_id), chat_instance="ci", data=data, message=message
        )
        return await self.feed(Update(update_id=next_id(), callback_query=query))

    async def tap(self, user_id: int, answer: Sequence[TelegramMethod[Any]], label: str) -> list[TelegramMethod[Any]]:
        """Press the inline button (or send the reply-keyboard text) labelled ``label``; [] when there is none."""
        for request in reversed(answer):
            for text, data in buttons_of(request):
                if label in text:
                    return await self.press(user_id, data)
            for row in getattr(getattr(request, "reply_markup", None), "keyboard", None) or []:
                for button in row:
                    if label in button.text:
                        return await self.say(user_id, button.text)
        return []

    def _ticket(self, index: int) -> int:
        return self.tickets[index % len(self.tickets)] if self.tickets else index + 1

    async def play(self, step: Hostile | ResidentReports | WorkerWorks | ResidentAnswers | TimePasses) -> None:
        match step:
            case TimePasses(minutes):
                self.clock.advance(minutes=minutes)
            case Hostile(update):
                await self.feed(update)
            case ResidentReports(description, photos, location):
                await self.say(RESIDENT, "/cancel")
                answer = await self.say(RESIDENT, "/report")
                await self.tap(RESIDENT, answer, "飞线充电")
                await self.say(RESIDENT, description)
                for n in range(photos):
                    photo = [PhotoSize(file_id=f"photo-{n}", file_unique_id=f"p{n}", width=9, height=9)]
                    await self.feed(self._message(RESIDENT, photo=photo, caption=description[:50] or None))
                if location:
                    await self.feed(self._message(RESIDENT, location=Location(latitude=38.47, longitude=106.23)))
                summary = await self.say(RESIDENT, "✅ 完成")
                await self.tap(RESIDENT, summary, "提交")
            case WorkerWorks(worker, action, ticket, text, old):
                await self.press(worker, TicketCb(action=action, ticket_id=self._ticket(ticket)).pack(), old)
                await self.say(worker, text)
            case ResidentAnswers(action, ticket, stars, text, old):
                data = FeedbackCb(action=action, ticket_id=self._ticket(ticket), stars=stars).pack()
                await self.press(RESIDENT, data, old)
                await self.say(RESIDENT, text)

    async def run(self, example: list[Any]) -> list[str]:
        """Play the steps, deliver the outbox, and return what went wrong."""
        self.problems = []
        before = len(self.harness.telegram.requests)
        for step in example:
            await self.play(step)
        await self.harness.deliver()
        for request in self.harness.telegram.requests[before:]:
            self.problems += request_problems(request)
            self.problems += self._leaks(request)
        self.problems += await self._states_in_groups()
        async with self.harness.sessions() as session:
            self.tickets = list(await session.scalars(select(Ticket.id).order_by(Ticket.id)))
        return self.problems

    @staticmethod
    def _leaks(request: TelegramMethod[Any]) -> list[str]:
        """Into a group or channel the bot says one line with a link to its private chat, nothing else."""
        chat_id = getattr(request, "chat_id", None)
        if chat_id not in CHATS_NOT_PRIVATE:
            return []
        name = request.__api_method__
        if name != "sendMessage":
            return [f"{name} into a {chat_id} chat"]
        markup = getattr(request, "reply_markup", None)
        buttons = [b for row in getattr(markup, "inline_keyboard", None) or [] for b in row]
        text = str(getattr(request, "text", ""))
        if "\n" in text.strip() or "#" in text or [b.url for b in buttons] != ["https://t.me/feedback_test_bot"]:
            return [f"posted into group {chat_id}: {text[:60]!r}"]
        return []

    async def _states_in_groups(self) -> list[str]:
        storage = self.harness.app.dispatcher.fsm.storage
        found = []
        for chat in (*GROUPS, CHANNEL):
            for user_id in (RESIDENT, *WORKERS, STRANGER, GROUP_ANONYMOUS_BOT.id):
                key = StorageKey(bot_id=BOT_ID, chat_id=chat.id, user_id=user_id)
                if await storage.get_state(key) is not None:
                    found.append(f"wizard state left in {chat.type} {chat.id}")
        return found

    async def ticket_count(self) -> int:
        async with self.harness.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Ticket)) or 0)


EXAMPLES = {"sqlite": 2000, "postgresql": 200}
examples = st.lists(steps, min_size=1, max_size=2)


def survey(backend: str, tmp_path: Path, count: int) -> Counter[str]:
    """Every problem of ``count`` examples, by class (for looking at the unfixed code; the test stops at one)."""
    found: Counter[str] = Counter()
    with asyncio.Runner() as runner:
        world = runner.run(World.build(backend, tmp_path))

        @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(examples)
        def collect(example: list[Any]) -> None:
            found.update(runner.run(world.run(example)))

        try:
            collect()
        finally:
            runner.run(world.dispose())
    return found


@pytest.mark.parametrize("backend", list(EXAMPLES))
def test_random_and_forged_updates_are_answered_safely(backend: str, tmp_path: Path) -> None:
    with asyncio.Runner() as runner:
        world = runner.run(World.build(backend, tmp_path))

        @settings(
            max_examples=EXAMPLES[backend],
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(examples)
        # Random steps do not always include a whole report: this one always files a ticket, so the check after
        # the run (the real flows still work among the hostile updates) cannot depend on luck.
        @example([ResidentReports("三单元楼道灯坏了，晚上很黑", photos=1, location=False)])
        def nothing_goes_wrong(example: list[Any]) -> None:
            assert runner.run(world.run(example)) == []

        try:
            nothing_goes_wrong()
            assert runner.run(world.ticket_count()) > 0, "the real flows filed tickets"
        finally:
            runner.run(world.dispose())
