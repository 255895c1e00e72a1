"""The bot's own membership of chats (``my_chat_member``): added to a group, blocked and unblocked in private.

Other membership news (``chat_member``: people joining a group the bot administers), and join requests, are
not the bot's business: they have no handler, and get silence on purpose.
"""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.filters import JOIN_TRANSITION, KICKED, MEMBER, ChatMemberUpdatedFilter
from aiogram.types import ChatMemberUpdated
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.filters import ChatKind, FromPerson
from bot.views import public as public_views
from domain.clock import Clock
from domain.people import Person, set_reachable
from domain.public_notices import public_chat_community

router = Router(name="membership")


@router.my_chat_member(ChatKind(ChatType.GROUP, ChatType.SUPERGROUP), ChatMemberUpdatedFilter(JOIN_TRANSITION))
async def added_to_group(event: ChatMemberUpdated, bot: Bot, session: AsyncSession) -> None:
    """Say once, in the group, that reports go to the private chat, and how to get there.

    A community's own public notice group (its community file's ``public_chat_id``) is told what the bot will
    post there instead. Channels get nothing: posting in one speaks for its owners.
    """
    username = (await bot.me()).username or ""
    community = await public_chat_community(session, event.chat.id)
    text = views.added_to_group() if community is None else public_views.public_chat_welcome(community)
    await event.answer(text, reply_markup=views.private_chat_keyboard(username))


@router.my_chat_member(ChatKind(ChatType.PRIVATE), FromPerson(), ChatMemberUpdatedFilter(KICKED))
async def blocked(event: ChatMemberUpdated, session: AsyncSession, user: Person, clock: Clock) -> None:
    # As a 403 from Telegram does (bot/outbound/sender.py): nothing more is tried to them until they are back.
    await set_reachable(session, user.id, reachable=False, now=clock())


@router.my_chat_member(ChatKind(ChatType.PRIVATE), FromPerson(), ChatMemberUpdatedFilter(MEMBER))
async def unblocked(event: ChatMemberUpdated, session: AsyncSession, user: Person, clock: Clock) -> None:
    await set_reachable(session, user.id, reachable=True, now=clock())
