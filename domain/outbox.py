"""Queueing a message for someone other than the user being answered.

The row is added to the caller's transaction, so the message exists exactly when the change that causes it
does. What the message says is decided by the sender at send time from ``kind`` and ``payload``.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import execute_pipelined
from storage.models import OutboxMessage


class Notice(StrEnum):
    TICKET_CARD = "ticket_card"  # a worker's actionable card; payload: ticket_id
    CARD_EDIT = "card_edit"  # a card sent earlier, brought up to date (domain/cards.py); payload: ticket_id, message_id
    # "Is it fixed?" asked earlier, now settled (domain/questions.py); payload: ticket_id, message_id,
    # asked_event_id (None for the reminder), answer_event_id, caption
    QUESTION_EDIT = "question_edit"
    TICKET_PHOTOS = "ticket_photos"  # the photos a resident attached; payload: ticket_id
    TICKET_UPDATE = "ticket_update"  # a resident is told what happened; payload: ticket_id, event_id
    DEADLINE_REMINDER = "deadline_reminder"  # the assignee: a deadline is close or passed; payload: ticket_id, event_id
    CONFIRM_REMINDER = "confirm_reminder"  # "Is it fixed?" asked once more; payload: ticket_id, close_at
    RESIDENT_FEEDBACK = "resident_feedback"  # the worker hears a confirmation or rating; payload: ticket_id, event_id
    # Deliberation (domain/deliberation.py).
    TOPIC_UPDATE = "topic_update"  # residents behind a topic hear a decision or progress; payload: topic_id, event_id
    # Staff: a topic waits for them (the bot's candidate, or one a resident or worker raised); payload: topic_id
    TOPIC_CANDIDATE = "topic_candidate"
    # Households (domain/verification.py).
    VERIFICATION_REQUEST = "verification_request"  # a grid worker: a resident asks to be verified; verification_id
    VERIFICATION_RESULT = "verification_result"  # the resident: verified, declined or revoked; verification_id, outcome
    # The "/" command menu of a worker or staff member, or back to the residents' (domain/menus.py); payload: menu
    COMMAND_MENU = "command_menu"
    # Scheduled broadcasts (domain/broadcasts.py): one row per resident, with the outbox's broadcast_id set.
    BROADCAST = "broadcast"  # payload: broadcast_id
    # The office's monthly report (domain/reports.py), to each of its staff and the street office, in three
    # messages; payload: broadcast_id, part (a domain.reports.ReportPart).
    MONTHLY_REPORT = "monthly_report"
    # A post in the community's public notice chat (公示); payload: broadcast_id (the execution feedback),
    # topic_id (a topic's public notice) or ticket_id (a closed ticket, when the community posts those).
    PUBLIC_POST = "public_post"


QUEUED_FLAG = "outbox_queued"


def enqueue(
    session: AsyncSession, chat_id: int, kind: Notice, now: datetime, not_before: datetime | None = None, **payload: Any
) -> None:
    """Queue the message, to go at once, or not before ``not_before``."""
    session.add(
        OutboxMessage(chat_id=chat_id, kind=kind, payload=payload, not_before=not_before or now, created_at=now)
    )
    mark_queued(session)


# A plain table statement: the row is never read back in the transaction that writes it.
_INSERT = insert(cast(Table, OutboxMessage.__table__))


Queued = tuple[int, Notice, dict[str, Any]]  # chat, kind, payload


async def enqueue_with_next(session: AsyncSession, rows: list[Queued], now: datetime) -> None:
    """Queue messages to go at once, inside a transaction that has begun: one statement, sent with the transaction's
    next statement or its COMMIT (storage.db.execute_pipelined). On SQLite that is one trip to its thread fewer
    than ``enqueue``, whose rows the commit's flush inserts on a trip of their own."""
    params = [
        {"chat_id": chat, "kind": kind, "payload": payload, "not_before": now, "created_at": now}
        for chat, kind, payload in rows
    ]
    await session.run_sync(execute_pipelined, _INSERT, params)
    mark_queued(session)


def mark_queued(session: AsyncSession) -> None:
    """Lets the process wake its sender once the transaction is committed, instead of polling hard."""
    session.info[QUEUED_FLAG] = True
