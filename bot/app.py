"""Wiring: one place where the dispatcher, middlewares, i18n, storage and sender are put together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from zoneinfo import ZoneInfo

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramNetworkError, TelegramServerError
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage
from aiogram.fsm.storage.memory import SimpleEventIsolation
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageReplyMarkup,
    EditMessageText,
    GetMe,
    GetUpdates,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SetMyCommands,
)
from aiogram.methods.base import Response
from aiogram.types import BotCommand, BotCommandScopeAllPrivateChats
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _
from redis.asyncio import BlockingConnectionPool, Redis

from bot.config import Settings
from bot.guard import PrivateChatGuard
from bot.i18n import UserI18nMiddleware, create_i18n
from bot.intake import InboxMarkMiddleware, UpdateInbox
from bot.middlewares import SessionMiddleware, UserMiddleware
from bot.outbound import replies
from bot.outbound.notices import Renderer
from bot.outbound.sender import OutboxSender, SenderSettings
from bot.outbound.shared_rate import RedisTokenBucket
from domain.clock import Clock, system_clock
from domain.community_file import import_community, load_community_file
from domain.confirmation import close_unconfirmed
from domain.deliberation import propose_candidates
from domain.directory import Directory
from domain.sweep import sweep
from handlers import build_router
from scheduler.broadcasts import schedule_broadcasts
from scheduler.jobs import create_scheduler, every_minute, stop_scheduler
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.fsm import FsmFlushMiddleware, SqlStorage
from storage.migrate import upgrade_database
from storage.redis_fsm import ScopedRedisIsolation, UpdateScopedRedisStorage

log = logging.getLogger(__name__)

# pydantic keeps parametrised generic models in a weak cache, so under load aiogram keeps rebuilding
# Response[Message] and friends (about 4 ms each, measured by bench/intake.py). Holding the ones this bot
# uses keeps them built for the life of the process.
PINNED_RESPONSE_MODELS = tuple(
    Response[method.__returning__]  # type: ignore[name-defined]
    for method in (
        SendMessage,
        SendPhoto,
        SendMediaGroup,
        AnswerCallbackQuery,
        EditMessageText,
        EditMessageReplyMarkup,
        GetUpdates,
        GetMe,
        SetMyCommands,
    )
)


def build_dispatcher(
    *,
    session_factory: SessionFactory,
    i18n: I18n,
    clock: Clock,
    tz: ZoneInfo,
    wake_sender: Callable[[], None],
    storage: BaseStorage | None = None,
    events_isolation: BaseEventIsolation | None = None,
) -> Dispatcher:
    storage = storage or SqlStorage(session_factory)
    dispatcher = Dispatcher(
        storage=storage,
        # One update at a time per user: a double-tapped "Submit" must not file two tickets.
        events_isolation=events_isolation or SimpleEventIsolation(),
    )
    dispatcher.workflow_data.update(clock=clock, tz=tz, directory=Directory())
    replies.install(dispatcher)
    dispatcher.update.outer_middleware(SessionMiddleware(session_factory, wake_sender))
    if isinstance(storage, SqlStorage):
        dispatcher.update.outer_middleware(FsmFlushMiddleware(storage))
    dispatcher.update.outer_middleware(UserMiddleware())
    dispatcher.update.outer_middleware(InboxMarkMiddleware())
    UserI18nMiddleware(i18n).setup(dispatcher)
    # After i18n on these observers, so that what the guard says outside private chats is translated.
    guard = PrivateChatGuard()
    dispatcher.message.outer_middleware(guard)
    dispatcher.callback_query.outer_middleware(guard)
    dispatcher.include_router(build_router())
    return dispatcher


def create_bot(token: str, api_server: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_server)) if api_server else None
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


@dataclass
class Application:
    bot: Bot
    dispatcher: Dispatcher
    sender: OutboxSender
    session_factory: SessionFactory
    shared_rate: RedisTokenBucket | None = None  # closed at shutdown


def assemble(
    settings: Settings,
    bot: Bot,
    session_factory: SessionFactory,
    clock: Clock = system_clock,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    sole: bool = False,
) -> Application:
    """Everything but the process: ``monotonic`` and ``sleep`` time the direct replies' pacing and retries;
    ``sole`` says this process is the only one (long polling), see OutboxSender."""
    i18n = create_i18n(settings.default_locale)
    tz = ZoneInfo(settings.timezone)
    # Telegram's send limit is per bot: processes sharing one bot share one rate through Redis.
    shared_rate = (
        RedisTokenBucket(
            Redis.from_url(settings.redis_url), f"feedback-bot:send-slot:{bot.id}", settings.send_rate_per_second
        )
        if settings.redis_url
        else None
    )
    # One per-chat pace for the direct replies and the outbox sender: they write into the same chats.
    pacer = replies.ChatPacer(settings.send_rate_per_chat_seconds, monotonic, sleep)
    sender = OutboxSender(
        bot,
        session_factory,
        Renderer(i18n, tz),
        clock,
        SenderSettings(
            rate_per_second=settings.send_rate_per_second,
            chat_interval=settings.send_rate_per_chat_seconds,
            retry_horizon=timedelta(hours=settings.outbox_retry_hours),
        ),
        rate=shared_rate,
        sole=sole,
        pacer=pacer,
    )
    bot.session.middleware(replies.ReplyPolicy(pacer, settings.reply_retry_seconds, monotonic, sleep))
    storage, isolation = fsm_backend(settings, session_factory)
    dispatcher = build_dispatcher(
        session_factory=session_factory,
        i18n=i18n,
        clock=clock,
        tz=tz,
        wake_sender=sender.wake,
        storage=storage,
        events_isolation=isolation,
    )
    dispatcher.workflow_data["yellow_share"] = settings.ledger_yellow_share
    return Application(bot, dispatcher, sender, session_factory, shared_rate)


def fsm_backend(settings: Settings, session_factory: SessionFactory) -> tuple[BaseStorage, BaseEventIsolation]:
    """Wizard state in Redis when several processes share the load, else in the bot's own database."""
    if settings.redis_url:
        # A blocking pool: beyond its connections an update waits for one instead of failing (redis-py's
        # default pool raises MaxConnectionsError past 100 at once).
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=100, timeout=30)
        storage = UpdateScopedRedisStorage(Redis(connection_pool=pool))
        return storage, ScopedRedisIsolation(storage)
    return SqlStorage(session_factory), SimpleEventIsolation()


async def set_commands(bot: Bot, i18n: I18n) -> None:
    """The command list Telegram shows under "/", in each language."""
    commands = [
        "report",
        "my",
        "suggest",
        "tickets",
        "ledger",
        "topics",
        "newtopic",
        "broadcasts",
        "settings",
        "home",
        "language",
        "help",
        "cancel",
    ]
    for locale in i18n.available_locales:
        with i18n.context(), i18n.use_locale(locale):
            descriptions = command_descriptions()
        await bot.set_my_commands(
            [BotCommand(command=c, description=descriptions[c]) for c in commands],
            scope=BotCommandScopeAllPrivateChats(),
            language_code=None if locale == i18n.default_locale else locale.split("_")[0],
        )


def command_descriptions() -> dict[str, str]:
    return {
        "report": _("Report a problem"),
        "my": _("My reports"),
        "tickets": _("Tickets to handle"),
        "ledger": _("Three-colour ledger"),
        "suggest": _("A suggestion for the deliberation"),
        "topics": _("Deliberation topics"),
        "newtopic": _("New deliberation topic"),
        "broadcasts": _("Monthly broadcasts"),
        "settings": _("Settings"),
        "home": _("Change my building"),
        "language": _("Language"),
        "help": _("Help"),
        "cancel": _("Cancel"),
    }


async def run_polling(settings: Settings) -> None:
    """Start the bot: migrate the database, import the community file, send and receive until stopped."""
    token = settings.require_token()
    engine = create_engine(settings.database_url)
    await upgrade_database(engine)
    session_factory = create_session_factory(engine)
    if settings.community_file is not None:
        spec = load_community_file(settings.community_file)
        async with session_factory() as session:
            report = await import_community(session, spec, system_clock())
        log.info("community file %s: %s", settings.community_file, report.summary())

    bot = create_bot(token, settings.telegram_api_server)
    try:
        await check_telegram(bot, settings.telegram_api_server or "api.telegram.org")
    except BaseException:
        await bot.session.close()
        await engine.dispose()
        raise
    # Long polling: only one process may poll a token, so this one is the only sender too.
    app = assemble(settings, bot, session_factory, sole=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    # First what a dead predecessor left: its claimed messages (the sender takes them back as it starts) and
    # the updates it had recorded but not finished.
    sender_task = asyncio.create_task(app.sender.run(stop))
    inbox = UpdateInbox(bot, app.dispatcher, session_factory, system_clock)
    workflow = {**app.dispatcher.workflow_data, "dispatcher": app.dispatcher, "bots": [bot]}
    await app.dispatcher.emit_startup(bot=bot, **workflow)
    scheduler = create_scheduler()
    try:
        recovered = await inbox.recover()
        if recovered:
            log.info("handling %d updates the previous run had recorded but not finished", recovered)
        log.info("polling for updates")
        polling = asyncio.create_task(inbox.poll(stop))
        deadlines = partial(sweep, yellow_share=settings.ledger_yellow_share)
        unanswered = partial(close_unconfirmed, within=timedelta(days=settings.confirm_within_days))
        every_minute(scheduler, "deadline-sweep", deadlines, session_factory, system_clock, app.sender.wake)
        every_minute(scheduler, "confirmation-sweep", unanswered, session_factory, system_clock, app.sender.wake)
        every_minute(scheduler, "topic-candidates", propose_candidates, session_factory, system_clock, app.sender.wake)
        grace = timedelta(hours=settings.broadcast_grace_hours)
        await schedule_broadcasts(scheduler, session_factory, system_clock, grace, app.sender.wake)
        scheduler.start()
        menu = asyncio.create_task(set_commands_when_possible(bot, create_i18n(settings.default_locale), stop))
        await stop.wait()
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await inbox.drain(seconds=10)
        await inbox.write_marks()
        await menu
    finally:
        await stop_scheduler(scheduler)
        stop.set()
        app.sender.wake()
        await sender_task
        await app.dispatcher.emit_shutdown(bot=bot, **workflow)
        if app.shared_rate is not None:
            await app.shared_rate.redis.aclose()
        await bot.session.close()
        await engine.dispose()


async def check_telegram(bot: Bot, where: str) -> None:
    """A rejected token stops the bot with one line; an unreachable Telegram does not keep it down.

    During an outage the bot must still start: it takes back what its predecessor had claimed and handles the
    updates it had recorded, and the poller and the sender retry until Telegram answers again.
    """
    try:
        me = await bot.me()
    except (TelegramNetworkError, TelegramServerError) as error:
        log.warning("Cannot reach Telegram (%s): %s. Retrying until it answers.", where, error.message)
        return
    log.info("running as @%s", me.username)


async def set_commands_when_possible(bot: Bot, i18n: I18n, stop: asyncio.Event) -> None:
    """The command menu is a nicety: set it once Telegram answers, without holding anything up."""
    while not stop.is_set():
        try:
            await set_commands(bot, i18n)
            return
        except (TelegramNetworkError, TelegramServerError) as error:
            log.warning("could not set the command menu yet: %s", error.message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=60)
