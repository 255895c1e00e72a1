"""Webhook mode: Telegram posts each update to this process (or to any of several behind a load balancer).

An update is answered 200 only once it is recorded in ``inbound_updates`` (bot/intake.py), in the request;
anything else (a database that does not answer) is answered 503 and Telegram delivers it again. A recorded
update is then handled by the inbox like a polled one: once, however often it arrives, in order per user
within a process. The row names the process that took it (its sender lease), so when a process dies, another
takes over what it had recorded but not handled, once its lease has lapsed.

``GET /healthz`` answers 200 while the database (and Redis, when configured) answer, 503 otherwise, with the
outbox's depth and the age of its oldest due message for a monitor to alert on. A polling bot serves it too,
alone, when HEALTH_PORT is set (:class:`HealthServer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import func, select, text

from bot.config import Settings
from bot.intake import UpdateInbox
from domain.clock import Clock
from storage.db import SessionFactory
from storage.models import OutboxMessage, OutboxStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# How often a process looks for updates that a dead process had recorded but not handled (a lease lapses
# after 10 s), and seconds a health check waits for each service.
RECOVER_EVERY_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 5.0


class RecordingRequestHandler(SimpleRequestHandler):
    """aiogram's handler with its secret-token check, answering only once the update is durably recorded."""

    def __init__(self, inbox: UpdateInbox, dispatcher: Dispatcher, bot: Bot, secret_token: str) -> None:
        super().__init__(dispatcher, bot, handle_in_background=False, secret_token=secret_token)
        self.inbox = inbox

    async def _handle_request(self, bot: Bot, request: web.Request) -> web.Response:
        try:
            update = Update.model_validate(await request.json(loads=bot.session.json_loads), context={"bot": bot})
        except (ValueError, ValidationError):
            return web.Response(status=400, text="not an update")
        await self.inbox.wait_for_room()
        try:
            fresh = await self.inbox.record([update])
        except Exception:
            log.exception("could not record update %s; Telegram will deliver it again", update.update_id)
            return web.Response(status=503, text="not recorded")
        for recorded in fresh:
            self.inbox.submit(recorded)
        return web.json_response({})

    async def close(self) -> None:
        """The bot's session outlives the web app: the sender still uses it while the process stops."""


class Health:
    """``GET /healthz``: whether the database and Redis answer, and how far behind the outbox is."""

    def __init__(self, session_factory: SessionFactory, clock: Clock, redis: Redis | None) -> None:
        self.sessions = session_factory
        self.clock = clock
        self.redis = redis

    async def handle(self, _request: web.Request) -> web.Response:
        report: dict[str, Any] = {}
        healthy = True
        try:
            report["outbox"] = await asyncio.wait_for(self._outbox(), CHECK_TIMEOUT_SECONDS)
            report["database"] = "ok"
        except Exception as error:
            report["database"] = f"error: {error!r}"[:300]
            healthy = False
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT_SECONDS)  # type: ignore[misc]
                report["redis"] = "ok"
            except Exception as error:
                report["redis"] = f"error: {error!r}"[:300]
                healthy = False
        report["status"] = "ok" if healthy else "failing"
        return web.json_response(report, status=200 if healthy else 503)

    async def _outbox(self) -> dict[str, Any]:
        now = self.clock()
        async with self.sessions() as session:
            await session.execute(text("SELECT 1"))
            depth, oldest = (
                await session.execute(
                    select(func.count(), func.min(OutboxMessage.not_before)).where(
                        OutboxMessage.status.in_(OutboxStatus.unfinished()), OutboxMessage.not_before <= now
                    )
                )
            ).one()
        return {"due": int(depth), "oldest_due_seconds": _age(oldest, now)}


def _age(since: datetime | None, now: datetime) -> float:
    return 0.0 if since is None else round(max(0.0, (now - since).total_seconds()), 1)


class WebhookServer:
    """The web app Telegram posts to (and /healthz), with what a webhook process does besides: taking over the
    updates of processes that died, and marking updates handled that made no commit of their own."""

    def __init__(
        self, settings: Settings, bot: Bot, dispatcher: Dispatcher, inbox: UpdateInbox, health: Health
    ) -> None:
        assert settings.webhook_url is not None and settings.webhook_secret is not None
        self.settings = settings
        self.bot = bot
        self.inbox = inbox
        self.app = web.Application()
        path = urlsplit(settings.webhook_url).path or "/"
        secret = settings.webhook_secret.get_secret_value()
        RecordingRequestHandler(inbox, dispatcher, bot, secret).register(self.app, path=path)
        self.app.router.add_get("/healthz", health.handle)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=10)
        self.stop_chores = asyncio.Event()
        self.chores: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Listen; a port that cannot be had stops the bot with one line."""
        host, port = self.settings.webhook_listen_host, self.settings.webhook_listen_port
        await listen(self.runner, host, port, f"WEBHOOK_LISTEN_HOST={host} WEBHOOK_LISTEN_PORT={port}")
        log.info("webhook: listening on %s:%d for %s", host, port, self.settings.webhook_url)
        self.chores = [
            asyncio.create_task(keep_recovering(self.inbox, self.stop_chores)),
            asyncio.create_task(self.inbox.keep_marking(self.stop_chores)),
            asyncio.create_task(self.inbox.keep_reprompting(self.stop_chores)),
        ]

    async def stop(self) -> None:
        """Stop listening once the requests in flight are answered; the inbox then drains what it holds."""
        await self.runner.cleanup()
        self.stop_chores.set()
        for task in self.chores:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.settings.webhook_delete_on_stop:
            with contextlib.suppress(Exception):
                await self.bot.delete_webhook(drop_pending_updates=False)
                log.info("webhook deleted (WEBHOOK_DELETE_ON_STOP)")


async def listen(runner: web.AppRunner, host: str, port: int, settings: str) -> None:
    """Serve ``runner``'s app on host:port; a port that cannot be had stops the bot with one line naming
    ``settings``."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise SystemExit(f"{settings}: cannot listen there ({error.strerror or error})") from None


class HealthServer:
    """Long polling has no web app of its own: with HEALTH_PORT, this serves ``GET /healthz`` alone, so a
    container's or monitor's health check means the same in both modes."""

    def __init__(self, settings: Settings, health: Health) -> None:
        assert settings.health_port is not None
        self.host, self.port = settings.webhook_listen_host, settings.health_port
        app = web.Application()
        app.router.add_get("/healthz", health.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)

    async def start(self) -> None:
        await listen(self.runner, self.host, self.port, f"WEBHOOK_LISTEN_HOST={self.host} HEALTH_PORT={self.port}")
        log.info("health check: listening on %s:%d/healthz", self.host, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def register_webhook(settings: Settings, bot: Bot, dispatcher: Dispatcher) -> None:
    """Tell Telegram where to post; the same call from every process, so it is idempotent."""
    assert settings.webhook_url is not None and settings.webhook_secret is not None
    await bot.set_webhook(
        settings.webhook_url,
        secret_token=settings.webhook_secret.get_secret_value(),
        allowed_updates=dispatcher.resolve_used_update_types(),
        drop_pending_updates=False,
    )
    log.info("webhook registered with Telegram: %s", settings.webhook_url)


async def keep_recovering(inbox: UpdateInbox, stop: asyncio.Event) -> None:
    """Take over the updates of processes that died (their lease lapsed): those they did not handle, and those they
    did not finish answering; and forget old handled ones."""
    loop = asyncio.get_running_loop()
    last_forget = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RECOVER_EVERY_SECONDS)
        if stop.is_set():
            return
        try:
            resumed = await inbox.resume(everyone=False)
            if resumed:
                log.info("showing %d people where they stand: a stopped process did not finish answering", resumed)
            taken = await inbox.recover(everyone=False)
            if taken:
                log.info("took over %d updates a stopped process had recorded but not handled", taken)
            if loop.time() - last_forget > 3600:
                await inbox.forget_old()
                last_forget = loop.time()
        except Exception:
            log.exception("could not look for updates of stopped processes; trying again")
