"""Turning an outbox row into a Bot API call, in the recipient's language, from the ticket's current state."""

from __future__ import annotations

from datetime import tzinfo

from aiogram.methods import SendMediaGroup, SendMessage, SendPhoto, TelegramMethod
from aiogram.types import InputMediaPhoto
from aiogram.utils.i18n import I18n
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.i18n import locale_of
from domain.outbox import Notice
from domain.people import display_names
from domain.tickets import load_card, photos_of_event
from storage.models import OutboxMessage, PhotoStage, Ticket, TicketEvent, User


class Renderer:
    def __init__(self, i18n: I18n, tz: tzinfo) -> None:
        self.i18n = i18n
        self.tz = tz

    async def render(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        """The call that delivers ``row``, or None when there is nothing (left) to say."""
        recipient = await session.get(User, row.chat_id)
        ticket = await session.get(Ticket, row.payload["ticket_id"])
        if ticket is None:
            return None
        with self.i18n.context(), self.i18n.use_locale(locale_of(recipient, self.i18n)):
            match Notice(row.kind):
                case Notice.TICKET_CARD:
                    return await self._card(session, row.chat_id, ticket)
                case Notice.TICKET_PHOTOS:
                    return self._photos(row.chat_id, ticket)
                case Notice.TICKET_UPDATE:
                    return await self._update(session, row.chat_id, ticket, row.payload["event_id"])
        return None

    async def _card(self, session: AsyncSession, chat_id: int, ticket: Ticket) -> TelegramMethod:
        card = await load_card(session, ticket)
        return SendMessage(
            chat_id=chat_id, text=views.ticket_card(card, self.tz), reply_markup=views.ticket_actions(ticket)
        )

    def _photos(self, chat_id: int, ticket: Ticket) -> TelegramMethod | None:
        photos = [p.file_id for p in ticket.photos if p.stage == PhotoStage.REPORT]
        caption = views.ticket_title(ticket)
        if not photos:
            return None
        if len(photos) == 1:
            return SendPhoto(chat_id=chat_id, photo=photos[0], caption=caption)
        return SendMediaGroup(
            chat_id=chat_id,
            media=[
                InputMediaPhoto(media=file_id, caption=caption if i == 0 else None) for i, file_id in enumerate(photos)
            ],
        )

    async def _update(
        self, session: AsyncSession, chat_id: int, ticket: Ticket, event_id: int
    ) -> TelegramMethod | None:
        event = await session.get(TicketEvent, event_id)
        if event is None:
            return None
        names = await display_names(session, ticket.community_id, [event.actor_id])
        text = views.resident_update(ticket, event, names)
        markup = views.history_keyboard(ticket.id)
        photos = photos_of_event(ticket, event.id)
        if photos and views.visible_length(text) <= views.CAPTION_LIMIT:
            return SendPhoto(chat_id=chat_id, photo=photos[0].file_id, caption=text, reply_markup=markup)
        return SendMessage(chat_id=chat_id, text=text, reply_markup=markup)
