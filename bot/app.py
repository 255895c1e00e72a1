"""Wiring: one place where the dispatcher, middlewares, i18n, storage and sender are put together."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramNetworkError, TelegramServerError
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage
from aiogram.fsm.storage.memory import SimpleEventIsolation
from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteMyCommands,
    EditMessageCaption,
    EditMessageReplyMarkup,
    EditMessageText,
    GetMe,
    GetUpdates,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SetMyCommands,
)
from aiogram.methods.base import Response, TelegramMethod, TelegramType
from aiogram.types import BotCommandScopeAllPrivateChats, Message, Update
from aiogram.utils.i18n import I18n
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings, hide_password, proxy_for_aiohttp
from bot.guard import PrivateChatGuard
from bot.i18n import UserI18nMiddleware, create_i18n
from bot.intake import InboxMarkMiddleware, UpdateInbox
from bot.memory import settle_after_start
from bot.middlewares import SessionMiddleware, UserMiddleware
from bot.outbound import replies
from bot.outbound.handover import HandOver
from bot.outbound.notices import Renderer
from bot.outbound.pacing import ChatPacer
from bot.outbound.sender import OutboxSender, SenderSettings
from bot.steps import ExpiringSteps, StepExits
from bot.views import commands as command_views
from bot.webhook import Health, HealthServer, WebhookServer, register_webhook
from domain.clock import Clock, system_clock
from domain.community_file import import_community, load_community_file
from domain.confirmation import close_unconfirmed
from domain.deliberation import propose_candidates
from domain.directory import Directory
from domain.menus import Menu, queue_menus
from domain.stats import MonthCache, summarise_months
from domain.sweep import sweep
from handlers import detached_routers
from scheduler.broadcasts import schedule_broadcasts
from scheduler.jobs import create_scheduler, every_minute, stop_scheduler
from storage.db import SessionFactory, create_engine, create_session_factory, refresh_statistics
from storage.fsm import FsmFlushMiddleware, SqlStorage
from storage.migrate import exclusive, upgrade_database

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from bot.outbound.shared_rate import RedisTokenBucket

log = logging.getLogger(__name__)

# At most this long after start, polling waits for the answers to what the dead predecessor left (recovered and
# resumed updates) to be on their way: they must come before anything new. Usually a matter of milliseconds.
RECOVERY_BEFORE_POLLING = 5.0
DEFAULT_STEP_TIMEOUT = timedelta(minutes=Settings.model_fields["text_step_timeout_minutes"].default)
# How often SQLite's planner statistics are refreshed (``PRAGMA optimize``; usually a no-op).
STATISTICS_SECONDS = 3600
# Long enough after a start for whatever a crash left to be resumed first (docs/delivery.md).
DRAW_AHEAD_AFTER = timedelta(seconds=90)
# What a start can leave until the first updates are answered (``warm_up``): the periodic jobs' first runs (what
# came due while the bot was down), the broadcasts' catch-up, and the garbage collector's settling. On a restarted
# bot each of them took the CPU and the database from the first answers; a few seconds later changes nothing they do.
WARM_UP_AFTER = 5.0

# pydantic keeps parametrised generic models in a weak cache, so under load aiogram keeps rebuilding
# Response[Message] and friends (about 4 ms each, measured by bench/intake.py). Holding the ones this bot
# uses keeps them built for the life of the process. Message and Update are built first: aiogram's types are built
# on first use (bot/lazy_types.py), and a response built before them would build a copy of each for itself
# (0.55 s of CPU at start for all of them against 0.18 s).
Message.model_rebuild()
Update.model_rebuild()
PINNED_RESPONSE_MODELS = tuple(
    Response[method.__returning__]  # type: ignore[name-defined]
    for method in (
        SendMessage,
        SendPhoto,
        SendMediaGroup,
        AnswerCallbackQuery,
        EditMessageText,
        EditMessageCaption,
        EditMessageReplyMarkup,
        GetUpdates,
        GetMe,
        SetMyCommands,
        DeleteMyCommands,
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
    step_timeout: timedelta = DEFAULT_STEP_TIMEOUT,
    people_ttl: float = 60.0,
) -> Dispatcher:
    """``people_ttl``: seconds a person's record is reused between updates; 0 where other processes handle the
    same people (a binding made in one would be unknown to the others for that long)."""
    storage = storage or SqlStorage(session_factory)
    dispatcher = Dispatcher(
        storage=ExpiringSteps(storage, step_timeout, clock),
        # One update at a time per user: a double-tapped "Submit" must not file two tickets.
        events_isolation=events_isolation or SimpleEventIsolation(),
    )
    dispatcher.workflow_data.update(clock=clock, tz=tz, directory=Directory())
    replies.install(dispatcher)
    dispatcher.update.outer_middleware(SessionMiddleware(session_factory, wake_sender))
    if isinstance(storage, SqlStorage):
        dispatcher.update.outer_middleware(FsmFlushMiddleware(storage))
    dispatcher.update.outer_middleware(UserMiddleware(ttl=people_ttl))
    dispatcher.update.outer_middleware(InboxMarkMiddleware())
    UserI18nMiddleware(i18n).setup(dispatcher)
    # After i18n on these observers, so that what the guard says outside private chats is translated.
    guard = PrivateChatGuard()
    dispatcher.message.outer_middleware(guard)
    dispatcher.callback_query.outer_middleware(guard)
    dispatcher.message.outer_middleware(StepExits())
    dispatcher.include_routers(*detached_routers())
    return dispatcher


def create_bot(token: str, api_server: str | None = None, proxy: str | None = None) -> Bot:
    """The bot's client: Telegram's public server or a local one, directly or through a proxy (TELEGRAM_PROXY)."""
    api = TelegramAPIServer.from_base(api_server) if api_server else PRODUCTION
    session = ProxiedSession(proxy, api=api) if proxy else AiohttpSession(api=api)
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


class ProxiedSession(AiohttpSession):
    """Telegram through a SOCKS or HTTP proxy (aiohttp-socks). What goes wrong at the proxy is a network error
    that names the proxy, retried like any outage (aiohttp-socks raises errors of its own, which aiogram and the
    bot's retry policies would not recognise)."""

    def __init__(self, proxy: str, **kwargs: Any) -> None:
        super().__init__(proxy=proxy_for_aiohttp(proxy), **kwargs)
        self.shown = hide_password(proxy)

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        from aiohttp_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError  # only with a proxy

        try:
            return await super().make_request(bot, method, timeout)
        except (ProxyConnectionError, ProxyTimeoutError) as error:
            raise TelegramNetworkError(method, f"cannot reach the proxy {self.shown}: {error}") from error
        except ProxyError as error:
            raise TelegramNetworkError(method, f"the proxy {self.shown} refused: {error}") from error


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
    people_ttl: float = 60.0,
    pacer: ChatPacer | None = None,
) -> Application:
    """Everything but the process: ``monotonic`` and ``sleep`` time the direct replies' pacing and retries;
    ``sole`` says this process is the only one (long polling), see OutboxSender; ``people_ttl``, see
    build_dispatcher; ``pacer``: the chats' turns so far (the hand-over's, bot/outbound/handover.py)."""
    i18n = create_i18n(settings.default_locale)
    tz = ZoneInfo(settings.timezone)
    # Telegram's send limit is per bot: processes sharing one bot share one rate through Redis. redis-py is
    # imported only when Redis is configured: it is half a second of a restarted bot's start (docs/delivery.md).
    shared_rate: RedisTokenBucket | None = None
    if settings.redis_url:
        from redis.asyncio import Redis

        from bot.outbound.shared_rate import RedisTokenBucket

        redis = Redis.from_url(settings.redis_url)
        shared_rate = RedisTokenBucket(redis, f"feedback-bot:send-slot:{bot.id}", settings.send_rate_per_second)
    # One per-chat pace for the direct replies and the outbox sender: they write into the same chats.
    pacer = pacer or ChatPacer(settings.send_rate_per_chat_seconds, monotonic, sleep)
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
        step_timeout=timedelta(minutes=settings.text_step_timeout_minutes),
        people_ttl=people_ttl,
    )
    dispatcher.workflow_data["yellow_share"] = settings.ledger_yellow_share
    dispatcher.workflow_data["stats_cache"] = MonthCache()  # /stats: the figures of months that have ended
    dispatcher.workflow_data["phone_secret"] = settings.phone_secret()
    return Application(bot, dispatcher, sender, session_factory, shared_rate)


def fsm_backend(settings: Settings, session_factory: SessionFactory) -> tuple[BaseStorage, BaseEventIsolation]:
    """Wizard state in Redis when several processes share the load, else in the bot's own database."""
    if settings.redis_url:
        from redis.asyncio import BlockingConnectionPool, Redis

        from storage.redis_fsm import ScopedRedisIsolation, UpdateScopedRedisStorage

        # A blocking pool: beyond its connections an update waits for one instead of failing (redis-py's
        # default pool raises MaxConnectionsError past 100 at once).
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=100, timeout=30)
        storage = UpdateScopedRedisStorage(Redis(connection_pool=pool))
        return storage, ScopedRedisIsolation(storage)
    return SqlStorage(session_factory), SimpleEventIsolation()


async def set_commands(bot: Bot, i18n: I18n) -> None:
    """The residents' "/" menu, for every private chat, in each language; workers and staff get theirs in their
    own chat through the outbox (domain/menus.py)."""
    for locale in i18n.available_locales:
        with i18n.context(), i18n.use_locale(locale):
            commands = command_views.menu(Menu.RESIDENT)
        await bot.set_my_commands(
            commands,
            scope=BotCommandScopeAllPrivateChats(),
            language_code=None if locale == i18n.default_locale else locale.split("_")[0],
        )


async def prepare_database(settings: Settings) -> AsyncEngine:
    """Migrate the database (advisory-locked on PostgreSQL, so processes starting at once take turns), import
    the community file (one process at a time too), and queue the command menus of workers and staff whose
    duties changed."""
    # The file first: a mistake in it stops the bot before the database is touched.
    spec = load_community_file(settings.community_file) if settings.community_file is not None else None
    engine = create_engine(settings.database_url)
    try:
        await upgrade_database(engine)
        await refresh_statistics(engine, at_start=True)
        async with exclusive(engine), create_session_factory(engine)() as session:
            if spec is not None:
                report = await import_community(session, spec, system_clock())
                log.info("community file %s: %s", settings.community_file, report.summary())
            await queue_menus(session, system_clock())
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def run_bot(settings: Settings, handover: HandOver | None = None) -> None:
    """Start the bot: migrate the database, import the community file, send and receive until stopped.

    Updates come by long polling (this is then the only process), or, with WEBHOOK_URL, by webhook (any number
    of processes sharing PostgreSQL and Redis; see bot/webhook.py).
    """
    token = settings.require_token()
    webhook = settings.webhook_url is not None
    engine = await prepare_database(settings)
    session_factory = create_session_factory(engine)
    bot = create_bot(token, settings.telegram_api_server, settings.telegram_proxy)
    try:
        await check_telegram(bot, settings.telegram_where)
    except BaseException:
        await bot.session.close()
        await engine.dispose()
        raise
    # With a webhook, other processes may handle the same people: their records are read afresh every update.
    app = assemble(
        settings,
        bot,
        session_factory,
        sole=not webhook,
        people_ttl=0.0 if webhook else 60.0,
        pacer=handover.pacer if handover is not None else None,
    )
    if webhook and settings.redis_url is None:
        log.warning("webhook mode without REDIS_URL: run only this one process (wizard state is kept in it)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    # First what a dead predecessor left: its claimed messages (the sender takes them back as it starts) and
    # the updates it had recorded but not finished. The inbox names this process by its sender lease, which
    # must exist before an update is recorded under it.
    if handover is not None:  # it sends the predecessor's claims; the sender must not take them meanwhile
        handed = await handover.finished()
        if handed.paused_until is not None:  # Telegram asked it to wait: the sender waits as long
            await app.sender.pause(max(0.0, (handed.paused_until - system_clock()).total_seconds()))
    await app.sender.take_back_claims(everyone=not webhook)
    sender_task = asyncio.create_task(app.sender.run(stop))
    inbox = UpdateInbox(bot, app.dispatcher, session_factory, system_clock, holder=app.sender.holder)
    workflow = {**app.dispatcher.workflow_data, "dispatcher": app.dispatcher, "bots": [bot]}
    await app.dispatcher.emit_startup(bot=bot, **workflow)
    scheduler = create_scheduler()
    warming: asyncio.Task[None] | None = None
    try:
        # Before the recovery, whose updates start at once: one of them handled meanwhile is no dead one's.
        resumed = await inbox.resume(everyone=not webhook)
        if resumed:
            log.info("showing %d people where they stand: the previous run did not finish answering them", resumed)
        recovered = await inbox.recover(everyone=not webhook)
        if recovered:
            log.info("handling %d updates the previous run had recorded but not finished", recovered)
        to_telegram: Callable[[], Awaitable[Any]]
        server: WebhookServer | HealthServer | None = None
        polling: asyncio.Task[None] | None = None
        health = Health(session_factory, system_clock, app.shared_rate.redis if app.shared_rate else None)
        if webhook:
            server = WebhookServer(settings, bot, app.dispatcher, inbox, health)
            await server.start()
            to_telegram = partial(register_webhook, settings, bot, app.dispatcher)
        else:
            if settings.health_port is not None:
                server = HealthServer(settings, health)
                await server.start()
            await inbox.recovery_settled(seconds=RECOVERY_BEFORE_POLLING)
            log.info("polling for updates")
            polling = asyncio.create_task(inbox.poll(stop))
            # A webhook left from webhook mode would make every getUpdates fail (409).
            to_telegram = partial(bot.delete_webhook, drop_pending_updates=False)
        i18n = create_i18n(settings.default_locale)
        menu = asyncio.create_task(
            when_possible(stop, "set the webhook and command menu", to_telegram, partial(set_commands, bot, i18n))
        )
        warming = asyncio.create_task(
            after(
                WARM_UP_AFTER,
                stop,
                partial(warm_up, settings, scheduler, session_factory, engine, app.sender.wake, i18n),
            )
        )
        warming.add_done_callback(lambda _: stop.set() if failed(warming) else None)  # raised below, as before
        await stop.wait()
        if server is not None:
            await server.stop()
        if polling is not None:
            polling.cancel()  # a long poll in flight
            with contextlib.suppress(asyncio.CancelledError):
                await polling
        await inbox.drain(seconds=10)
        await inbox.write_marks()
        await menu
    finally:
        if warming is not None:
            warming.cancel()  # nothing more is begun; a job already running is let finish below
            await asyncio.wait({warming})
        await stop_scheduler(scheduler)
        stop.set()
        app.sender.wake()
        await sender_task
        await app.dispatcher.emit_shutdown(bot=bot, **workflow)
        if app.shared_rate is not None:
            await app.shared_rate.redis.aclose()
        await bot.session.close()
        await engine.dispose()
    if warming is not None and failed(warming):
        raise warming.exception()  # type: ignore[misc]  # a start that failed stops the bot, warm-up or not


def failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


async def after(seconds: float, stop: asyncio.Event, then: Callable[[], Awaitable[None]]) -> None:
    """``then``, ``seconds`` from now, unless the bot stops first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    if not stop.is_set():
        await then()


async def warm_up(
    settings: Settings,
    scheduler: AsyncIOScheduler,
    session_factory: SessionFactory,
    engine: AsyncEngine,
    wake_sender: Callable[[], None],
    i18n: I18n,
) -> None:
    """The start's work that can wait until the first updates are answered (``WARM_UP_AFTER``): the periodic jobs,
    each run once at once (what came due while the bot was down), the broadcasts' crontabs and catch-up, the
    charts drawn ahead, and the garbage collector settled (bot/memory.py)."""
    deadlines = partial(sweep, yellow_share=settings.ledger_yellow_share)
    unanswered = partial(close_unconfirmed, within=timedelta(days=settings.confirm_within_days))
    every_minute(scheduler, "deadline-sweep", deadlines, session_factory, system_clock, wake_sender)
    every_minute(scheduler, "confirmation-sweep", unanswered, session_factory, system_clock, wake_sender)
    every_minute(scheduler, "topic-candidates", propose_candidates, session_factory, system_clock, wake_sender)
    every_minute(scheduler, "month-summaries", summarise_months, session_factory, system_clock, wake_sender)
    scheduler.add_job(
        refresh_statistics,
        "interval",
        seconds=STATISTICS_SECONDS,
        args=(engine,),
        id="statistics",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
    )
    grace = timedelta(hours=settings.broadcast_grace_hours)
    await schedule_broadcasts(scheduler, session_factory, system_clock, grace, wake_sender)
    scheduler.start()
    scheduler.add_job(
        draw_charts_ahead,
        "date",
        run_date=system_clock() + DRAW_AHEAD_AFTER,
        args=(session_factory, system_clock, i18n, settings.default_locale),
        id="draw-charts-ahead",
    )
    settle_after_start()


async def draw_charts_ahead(sessions: SessionFactory, clock: Clock, i18n: I18n, locale: str) -> None:
    """The office's charts of last month, drawn once a while after the start (bot/reports/chart.py)."""
    try:
        # matplotlib, imported now and not at start-up (docs/delivery.md), in a thread: on a new machine its first
        # import builds a font cache for many seconds, and updates must not wait for that.
        chart = await asyncio.to_thread(importlib.import_module, "bot.reports.chart")
        drawn = await chart.draw_ahead(sessions, clock(), i18n, locale)
    except Exception:
        log.exception("drawing the office's charts ahead failed; /stats draws them when asked")
        return
    log.info("drew the charts of last month for %d communities ahead of /stats", drawn)


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


async def when_possible(stop: asyncio.Event, what: str, *calls: Callable[[], Awaitable[Any]]) -> None:
    """Calls to Telegram that hold nothing up: each is retried once a minute until Telegram answers."""
    for call in calls:
        while not stop.is_set():
            try:
                await call()
                break
            except (TelegramNetworkError, TelegramServerError) as error:
                log.warning("could not %s yet: %s", what, error.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=60)
