"""Which "/" command menu Telegram shows each person.

Residents share one menu, set once for every private chat (bot/app.py, at start). Grid workers (and the street
office's and departments' people) and community staff get theirs in their own chat, so nobody is offered
commands that only refuse them. Those are set through the outbox, one call per person whose menu changes:
at start, after an import (who is a worker or staff may have changed), when they press Start, and when they
choose another language. What Telegram took is recorded on the person (``users.command_menu``), so a start
that changes nothing costs nothing, and a worker the bot could not reach yet (never pressed Start) gets
their menu when they do.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.outbox import Notice, enqueue
from storage.models import Membership, OutboxMessage, OutboxStatus, Role, User


class Menu(StrEnum):
    RESIDENT = "resident"
    WORKER = "worker"  # grid workers, the street office, departments: tickets to handle
    STAFF = "staff"  # community staff: also the ledger, deliberation and broadcasts


async def _wanted(session: AsyncSession, user_ids: Collection[int] | None) -> dict[int, Menu]:
    """The menu each person with a duty needs; everyone else has the residents'."""
    query = select(Membership.user_id, Membership.role).where(Membership.active.is_(True))
    if user_ids is not None:
        query = query.where(Membership.user_id.in_(user_ids))
    wanted: dict[int, Menu] = {}
    for user_id, role in await session.execute(query):
        if role == Role.STAFF or wanted.get(user_id) is not Menu.STAFF:
            wanted[user_id] = Menu.STAFF if role == Role.STAFF else Menu.WORKER
    return wanted


async def queue_menus(
    session: AsyncSession, now: datetime, user_ids: Collection[int] | None = None, *, again: bool = False
) -> int:
    """Queue a menu for everyone (or ``user_ids``) whose menu is not the one their duties call for; with
    ``again``, also for those who have one of their own (to say it in another language). Returns how many."""
    async with session.begin():
        wanted = await _wanted(session, user_ids)
        query = select(User.id, User.command_menu).where(User.command_menu.is_not(None))
        if user_ids is not None:
            query = query.where(User.id.in_(user_ids))
        have = {user_id: Menu(menu or Menu.RESIDENT) for user_id, menu in await session.execute(query)}
        on_the_way = await _on_the_way(session, user_ids)
        queued = 0
        for user_id in sorted(wanted.keys() | have.keys()):
            menu = wanted.get(user_id, Menu.RESIDENT)
            due = have.get(user_id, Menu.RESIDENT) != menu or (again and menu is not Menu.RESIDENT)
            # Already queued (by another process starting, a second Start): it is written in the person's
            # language when it is sent.
            if due and (user_id, menu) not in on_the_way:
                enqueue(session, user_id, Notice.COMMAND_MENU, now, menu=menu.value)
                queued += 1
    return queued


async def _on_the_way(session: AsyncSession, user_ids: Collection[int] | None) -> set[tuple[int, Menu]]:
    """The menus queued and not sent yet."""
    query = select(OutboxMessage.chat_id, OutboxMessage.payload).where(
        OutboxMessage.broadcast_id.is_(None),
        OutboxMessage.kind == Notice.COMMAND_MENU,
        OutboxMessage.status.in_(OutboxStatus.unfinished()),
    )
    if user_ids is not None:
        query = query.where(OutboxMessage.chat_id.in_(user_ids))
    return {(chat_id, Menu(payload["menu"])) for chat_id, payload in await session.execute(query)}


async def menu_set(session: AsyncSession, *, user_id: int, menu: Menu) -> None:
    """Telegram took ``menu`` for the person's chat (inside the sender's transaction)."""
    await session.execute(
        update(User).where(User.id == user_id).values(command_menu=None if menu is Menu.RESIDENT else menu.value)
    )
