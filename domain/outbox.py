"""Queueing a message for someone other than the user being answered.

The row is added to the caller's transaction, so the message exists exactly when the change that causes it
does. What the message says is decided by the sender at send time from ``kind`` and ``payload``.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.db import execute_pipelined
from storage.models import OutboxMessage, OutboxPriority, OutboxStatus


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
    # Staff: topics wait for them (the bot's candidates, or ones a resident or worker raised); payload: topic_ids
    # (rows queued before 2026-12-07: topic_id). Queued with ``enqueue_joined``.
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


async def enqueue_joined(session: AsyncSession, chat_id: int, kind: Notice, now: datetime, key: str, item: Any) -> None:
    """Queue ``item`` in the list ``payload[key]`` of the chat's message of this kind that waits to be sent, or in
    a new one: a staff member comes back from an outage, or a busy minute of the candidates job, to one message
    listing ten topics, not ten messages a second apart (bench.crash: such a queue was the slowest to resume).

    Only a message never tried yet is joined (one waiting a backoff would take the item's retry horizon with it).
    Locking the row keeps a sender from claiming it meanwhile; one it claimed already is no longer pending here.
    """
    waiting = await session.scalar(
        select(OutboxMessage)
        .where(
            OutboxMessage.status == OutboxStatus.PENDING,
            OutboxMessage.priority == OutboxPriority.NOTICE,
            # Through ix_outbox_due's first columns, the few notices pending now: "+ 0" keeps SQLite from going
            # through the chat's every message ever (the unique index on broadcast and chat), which grows for ever.
            OutboxMessage.chat_id + 0 == chat_id,
            OutboxMessage.kind == kind,
            OutboxMessage.attempts == 0,
        )
        .limit(1)  # one at most, but for two transactions of PostgreSQL's that both found none
        .with_for_update()
    )
    if waiting is None:
        enqueue(session, chat_id, kind, now, now, **{key: [item]})
    elif item not in waiting.payload.get(key, []):
        waiting.payload = {**waiting.payload, key: [*waiting.payload.get(key, []), item]}


# A plain table statement: the row is never read back in the transaction that writes it.
_INSERT = insert(cast(Table, OutboxMessage.__table__))


Queued = tuple[int, Notice, dict[str, Any]]  # chat, kind, payload


def enqueue_with_next(session: Session, rows: list[Queued], now: datetime) -> None:
    """Queue messages to go at once, inside a transaction that has begun: one statement, sent with the transaction's
    next statement or its COMMIT (storage.db.execute_pipelined). On SQLite that is one trip to its thread fewer
    than ``enqueue``, whose rows the commit's flush inserts on a trip of their own."""
    params = [
        {"chat_id": chat, "kind": kind, "payload": payload, "not_before": now, "created_at": now}
        for chat, kind, payload in rows
    ]
    execute_pipelined(session, _INSERT, params)
    mark_queued(session)


def mark_queued(session: Session | AsyncSession) -> None:
    """Lets the process wake its sender once the transaction is committed, instead of polling hard."""
    session.info[QUEUED_FLAG] = True
