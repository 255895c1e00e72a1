"""A personal outbox row's Bot API request kept as data, and what the database learns from Telegram's answer.

Free of aiogram on purpose: a restarted process sends the requests its dead predecessor had prepared before it
has loaded aiogram (handover.py), and learns from the answers through the same :func:`follow_up` the sender
uses (sender.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, TypedDict
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncSession

from domain.cards import forget_copy, record_copy
from domain.menus import Menu, menu_set
from domain.outbox import Notice
from domain.questions import record_question
from storage.models import OutboxMessage

# How long a row Telegram took may go unwritten while its sender goes on. A round of sending lasts as long as
# its longest chat's queue at Telegram's pace (a second a message), and a crash repeats every message taken and
# not written yet, each again at that pace, ahead of the chat's rows still to come (bench.crash run 30).
RECORD_SECONDS = 0.5

# Telegram's answers to an edit that mean there is nothing left to do: the copy already shows this (two changes
# in a row), or the person deleted it.
SETTLED_EDITS = ("message is not modified", "message to edit not found", "message can't be edited")
GONE = ("message to edit not found", "message can't be edited")  # the copy is not there to edit again
EDIT_METHODS = ("editMessageText", "editMessageCaption", "editMessageReplyMarkup")

# Messages that carry a ticket's action buttons: the card, and the deadline reminder (which becomes the card
# when the ticket moves on, so its Accept or Resolve never outlives the ticket's state).
CARD_NOTICES = (Notice.TICKET_CARD, Notice.DEADLINE_REMINDER)


class Request(TypedDict):
    """What goes over the wire: the Bot API method and its form fields, exactly as aiogram would send them."""

    method: str
    fields: dict[str, str] | None  # None: it uploads a file, and the hand-over leaves it to the sender
    asks_if_fixed: bool  # it carries the ticket's "Is it fixed?" buttons
    photo: bool  # a photo whose caption carries them


# A request's fields go as a urlencoded form, as aiogram sends them. aiohttp's FormData, given a dict, also makes a
# multipart writer (a random boundary, from uuid4) it never uses: a tenth of a request's CPU on the client side.
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def form_of(request: Request) -> bytes:
    """The body posted for ``request`` (sent with :data:`FORM`), as aiohttp's form encodes it (``doseq``: a str
    enum, ParseMode.HTML, goes as its value, "HTML"); only for a request with fields."""
    return urlencode(request["fields"] or {}, doseq=True).encode()


class Answer(NamedTuple):
    """Telegram's answer to a request, as far as the database cares."""

    message_id: int | None = None  # the message it took
    true: bool = False  # a call answered with a plain True (setMyCommands)
    settled: str = ""  # its words when it refused an edit as not needed (see :func:`edit_settled`)

    @classmethod
    def from_result(cls, result: Any) -> Answer:
        """From the ``result`` of Telegram's JSON answer."""
        if isinstance(result, dict) and isinstance(result.get("message_id"), int):
            return cls(message_id=result["message_id"])
        return cls(true=result is True)


def edit_settled(method: str, words: str) -> bool:
    """An edit Telegram refused because it is not needed (any more): done, not failed."""
    words = words.lower()
    return method in EDIT_METHODS and any(s in words for s in SETTLED_EDITS)


class FollowUp(NamedTuple):
    """What the database must learn from Telegram's answer to a row, written with the row's "sent". Two senders
    write theirs in ticket order, so the tickets they lock never deadlock."""

    ticket_id: int
    write: Callable[[AsyncSession], Awaitable[None]]


def follow_up(row: OutboxMessage, request: Request, answer: Answer, now: datetime) -> FollowUp | None:
    """``answer``: what Telegram returned to ``request`` (the call that delivered ``row``) at ``now``.

    A card or "Is it fixed?" it took is a copy to keep current (domain/cards.py, domain/questions.py); a card
    it no longer has is forgotten at once; a menu it took is recorded on the person (domain/menus.py).
    """
    chat_id, ticket_id = row.chat_id, row.payload.get("ticket_id", 0)
    message_id = answer.message_id
    if message_id is not None and row.kind in CARD_NOTICES:

        async def keep_card(session: AsyncSession) -> None:
            record_copy(session, ticket_id=ticket_id, chat_id=chat_id, message_id=message_id, now=now)

        return FollowUp(ticket_id, keep_card)
    if message_id is not None and request["asks_if_fixed"]:
        question = partial(
            record_question,
            ticket_id=ticket_id,
            chat_id=chat_id,
            message_id=message_id,
            event_id=row.payload.get("event_id"),  # the resolution; the reminder has none
            caption=request["photo"],
            now=now,
        )
        return FollowUp(ticket_id, question)
    if row.kind == Notice.CARD_EDIT and any(s in answer.settled.lower() for s in GONE):
        return FollowUp(ticket_id, partial(forget_copy, chat_id=chat_id, message_id=row.payload["message_id"]))
    if answer.true and row.kind == Notice.COMMAND_MENU:
        return FollowUp(0, partial(menu_set, user_id=chat_id, menu=Menu(row.payload["menu"])))
    return None
