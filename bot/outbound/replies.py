"""Direct replies: what the bot says to the person in front of it while it handles their update.

Each Bot API call made while an update is handled goes through one :class:`ReplyPolicy`. Messages into a
chat are spaced by a :class:`ChatPacer`, so a burst of presses does not run into Telegram's limit of about
one message per second per chat, and a 429, 5xx or network error is retried for a bounded time instead of
losing the answer. Messages to anyone else go through the outbox (bot/outbound/sender.py), which handles Telegram's
answers per row and must see them at once. Polling's own getUpdates must see them at once too. So the policy
covers only calls made inside an update, which :class:`HandlingUpdate` marks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, cast

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.filters import ExceptionTypeFilter
from aiogram.methods import (
    AnswerCallbackQuery,
    CopyMessage,
    EditMessageCaption,
    EditMessageMedia,
    EditMessageReplyMarkup,
    EditMessageText,
    ForwardMessage,
    SendDocument,
    SendLocation,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SendVenue,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType
from aiogram.types import ErrorEvent, TelegramObject
from aiogram.utils.backoff import Backoff, BackoffConfig

from bot.intake import HandledMark
from bot.intake import handling as inbox_handling
from bot.outbound.pacing import ChatPacer, Sleep
from storage.fsm import save_before_speaking

log = logging.getLogger(__name__)


# Calls that put a message into a chat, or change one there: these count against the per-chat limit.
# answerCallbackQuery does not, and must not wait behind them (Telegram drops a query left unanswered).
PACED_METHODS: frozenset[type[TelegramMethod[Any]]] = frozenset(
    {
        SendMessage,
        SendPhoto,
        SendMediaGroup,
        SendDocument,
        SendLocation,
        SendVenue,
        CopyMessage,
        ForwardMessage,
        EditMessageText,
        EditMessageCaption,
        EditMessageMedia,
        EditMessageReplyMarkup,
    }
)

# A button press is acknowledged within this long, or not at all: the person's app shows a progress bar until
# then, Telegram refuses to acknowledge old presses, and the change the press asks for must not wait behind it.
PRESS_ANSWER_SECONDS = 5.0

# Waits between retries after a 5xx or network error: 0.5, 1, 2, 4, then 5 seconds, slightly jittered so
# replies that failed together do not all come back at the same instant.
BACKOFF = BackoffConfig(min_delay=0.5, max_delay=5.0, factor=2.0, jitter=0.1)

_handling_update: ContextVar[bool] = ContextVar("handling_update", default=False)


class HandlingUpdate(BaseMiddleware):
    """Dispatcher outer middleware: marks the calls made while an update is handled, for :class:`ReplyPolicy`.

    aiogram handles each update in a task of its own, and a context variable set in that task is seen by
    every request the task makes, and by no other task (the outbox sender, polling).
    """

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        token = _handling_update.set(True)
        try:
            return await handler(event, data)
        finally:
            # feed_update may run in a caller's task (webhooks, tests): leave that task as it was.
            _handling_update.reset(token)


class ReplyPolicy(BaseRequestMiddleware):
    """Request middleware: inside an update, paces messages per chat and retries what Telegram may accept later.

    A 429 is retried after its ``retry_after``; a 5xx or a network error after a growing pause (``BACKOFF``).
    Once ``budget`` seconds have passed since the first attempt, or the next wait would pass them, the last
    error is raised to the handler. Other errors (400, 403, a file too large) are raised at once: the same
    request would fail the same way. A retry after a network error may deliver a message twice, when the
    first request reached Telegram but its answer did not reach us; a reply said twice beats one never said.
    """

    def __init__(
        self,
        pacer: ChatPacer,
        budget: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pacer = pacer
        self.budget = budget
        self._monotonic = monotonic
        self._sleep = sleep

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if not _handling_update.get():
            return await make_request(bot, method)
        await save_before_speaking()
        mark = inbox_handling.get()
        if mark is not None:
            mark.settled()
        chat_id: int | str | None = getattr(method, "chat_id", None) if type(method) in PACED_METHODS else None
        press = isinstance(method, AnswerCallbackQuery)
        budget = min(self.budget, PRESS_ANSWER_SECONDS) if press else self.budget
        backoff = Backoff(BACKOFF)
        await self._turn(chat_id)
        # The budget is for Telegram's faults; waiting for the chat's turn behind earlier replies is not one.
        started = self._monotonic()
        while True:
            try:
                return await make_request(bot, method)
            except TelegramEntityTooLarge:
                raise
            except (TelegramRetryAfter, TelegramServerError, TelegramNetworkError) as error:
                wait = float(error.retry_after) if isinstance(error, TelegramRetryAfter) else max(0.0, next(backoff))
                if self._monotonic() - started + wait > budget:
                    if press:
                        # The press still asks for its change (accept the ticket, choose the category): the
                        # handler goes on, rather than fail here with nothing done.
                        log.warning("a button press could not be acknowledged (%s); handling it anyway", error)
                        return cast(Response[TelegramType], Response[bool](ok=True, result=True))
                    raise
                log.info("%s to chat %s failed (%s); retrying in %.1f s", method.__api_method__, chat_id, error, wait)
                await self._sleep(wait)
            await self._turn(chat_id)

    async def _turn(self, chat_id: int | str | None) -> None:
        if chat_id is not None:
            await self.pacer.wait_turn(chat_id)


# What Telegram answers while it cannot be reached or will not take more for a while: a reply refused so would be
# taken later. Anything else (403 blocked, 400 chat not found) is its word on the chat.
PASSING_FAULTS = (TelegramRetryAfter, TelegramServerError, TelegramNetworkError)


async def reply_failed(event: ErrorEvent, inbox_mark: HandledMark | None = None) -> bool:
    """Errors handler for a Bot API call that failed for good while an update was handled.

    What the handler saved before the call stays saved (each domain step commits on its own, with the wizard
    state it set), and the person's next message is answered from that state. So the update counts as
    handled: it is logged here, and not raised into polling or a webhook. When Telegram could not be reached
    (an outage outlasted the reply's retries), the person is also shown where they stand once it answers again
    (``UpdateInbox.reprompt``): they may well not write again on their own, looking at a question already
    answered.
    """
    if inbox_mark is not None and isinstance(event.exception, PASSING_FAULTS):
        inbox_mark.refused = True
    log.error(
        "update %s was not fully answered: a Bot API call failed for good; what the update saved stays saved",
        event.update.update_id,
        exc_info=event.exception,
    )
    return True


def install(dispatcher: Dispatcher) -> None:
    """Give the dispatcher's updates the reply policy, and log (not raise) a call that failed for good."""
    dispatcher.update.outer_middleware(HandlingUpdate())
    dispatcher.errors.register(reply_failed, ExceptionTypeFilter(TelegramAPIError))
