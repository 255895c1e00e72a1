"""Turning an outbox row into a Bot API call, in the recipient's language, from the ticket's current state."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, tzinfo
from html import escape
from typing import Any

from aiogram import Bot
from aiogram.client.default import Default
from aiogram.methods import (
    DeleteMyCommands,
    EditMessageCaption,
    EditMessageReplyMarkup,
    EditMessageText,
    SendDocument,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SetMyCommands,
    TelegramMethod,
)
from aiogram.types import (
    BotCommandScopeChat,
    BufferedInputFile,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    TelegramObject,
)
from aiogram.utils.i18n import I18n
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import FeedbackAction, FeedbackCb
from bot.i18n import locale_of
from bot.outbound.requests import Answer, Request
from bot.views import broadcasts as broadcast_views
from bot.views import commands as command_views
from bot.views import deliberation as deliberation_views
from bot.views import feedback as feedback_views
from bot.views import households as household_views
from bot.views import ladder as ladder_views
from bot.views import public as public_views
from bot.views import stats as stats_views
from domain.errors import AccessDenied
from domain.menus import Menu
from domain.outbox import Notice
from domain.people import display_names
from domain.reports import ReportPart
from domain.stats import Month, MonthReport, View, office_report
from domain.tickets import load_card, photos_of_event, ticket_access
from domain.verification import request_for_notice
from storage.models import (
    Broadcast,
    Building,
    Community,
    EventKind,
    OutboxMessage,
    PhotoStage,
    Ticket,
    TicketEvent,
    TicketStatus,
    Topic,
    TopicEvent,
    TopicStatus,
    TopicTask,
    User,
    Verification,
)

TOPIC_NOTICES = (Notice.TOPIC_UPDATE, Notice.TOPIC_CANDIDATE)
HOUSEHOLD_NOTICES = (Notice.VERIFICATION_REQUEST, Notice.VERIFICATION_RESULT)
FEEDBACK_EVENTS = (EventKind.CONFIRMED, EventKind.RATED, EventKind.RATING_COMMENT)  # told to the worker together
RENDERED_BROADCASTS = 2048  # a broadcast × two languages × a district's buildings
DRAWN_REPORTS = 4  # monthly reports kept drawn: each goes to a few people, three messages each


def as_request(bot: Bot, row: OutboxMessage, method: TelegramMethod, shared: dict[int, Any]) -> Request:
    """``method`` as the data that goes over the wire (aiogram's own form fields), for the hand-over to send after
    a crash.

    ``shared``: what this batch prepared already, by identity: keyboards (a broadcast's rows share the renderer's
    one keyboard per language and building; preparing it again for each of 10,000 rows cost the sender a sixth
    of its speed) and the bot's defaults (one object per field for all methods of a kind, as the parse mode).
    The caller keeps the methods, and so the keyboards, alive while it uses it.
    """
    files: dict[str, Any] = {}
    fields: dict[str, str] = {}
    dumped: dict[str, Any] | None = None
    # The fields as pydantic holds them, in aiogram's order; most are None, which aiogram leaves out. Reading all
    # 21 of a message through ``model_fields`` and preparing each, the defaults too, took 14 us a broadcast row
    # where this takes 5.5.
    for key, value in method.__dict__.items():
        if value is None:
            continue
        if isinstance(value, TelegramObject | Default) and id(value) in shared:
            prepared = shared[id(value)]
        elif isinstance(value, TelegramObject | list | dict):  # may hold Telegram objects: as aiogram dumps them
            dumped = dumped if dumped is not None else method.model_dump(warnings=False)
            prepared = bot.session.prepare_value(dumped[key], bot=bot, files=files)
            if isinstance(value, TelegramObject):
                shared[id(value)] = prepared
        else:
            prepared = bot.session.prepare_value(value, bot=bot, files=files)
            if isinstance(value, Default):
                shared[id(value)] = prepared
        if prepared:
            fields[key] = prepared
    return Request(
        method=method.__api_method__,
        fields=None if files else fields,
        asks_if_fixed=row.broadcast_id is None and asks_if_fixed(method, row.payload.get("ticket_id", 0)),
        photo=isinstance(method, SendPhoto),
    )


def answer_of(sent: object) -> Answer:
    """What the database cares about in what aiogram returned (see :func:`requests.follow_up`)."""
    if isinstance(sent, Message):
        return Answer(message_id=sent.message_id)
    return Answer(true=sent is True)


def asks_if_fixed(method: TelegramMethod, ticket_id: int) -> bool:
    """The message carries the ticket's "Is it fixed?" buttons."""
    markup = getattr(method, "reply_markup", None)
    fixed = FeedbackCb(action=FeedbackAction.FIXED, ticket_id=ticket_id).pack()
    rows = markup.inline_keyboard if isinstance(markup, InlineKeyboardMarkup) else []
    return any(button.callback_data == fixed for buttons in rows for button in buttons)


class Renderer:
    def __init__(self, i18n: I18n, tz: tzinfo) -> None:
        self.i18n = i18n
        self.tz = tz
        # Broadcast content is a snapshot, so its rendering never goes stale; keyed by (broadcast id, locale,
        # building).
        self._broadcasts: dict[tuple[int, str, int | None], tuple[str, InlineKeyboardMarkup]] = {}
        # A monthly report's figures, drawn once for all its recipients (by the report's broadcast id).
        self._reports: dict[int, MonthReport] = {}

    async def render(
        self, session: AsyncSession, row: OutboxMessage, recipient: User | None = None
    ) -> TelegramMethod | None:
        """The call that delivers ``row``, or None when there is nothing (left) to say. ``recipient``: the person
        ``row`` goes to, when the caller has read them already (the sender reads a batch's at once; looking each up
        again in the session cost a sixth of rendering a broadcast)."""
        if recipient is None:
            recipient = await session.get(User, row.chat_id)
        with self.i18n.context(), self.i18n.use_locale(locale_of(recipient, self.i18n)):
            if row.kind == Notice.BROADCAST:
                return await self._broadcast(session, row, recipient.building_id if recipient else None)
            if row.kind in TOPIC_NOTICES:
                return await self._topic_notice(session, row)
            if row.kind == Notice.MONTHLY_REPORT:
                return await self._monthly_report(session, row)
            if row.kind == Notice.PUBLIC_POST:
                return await self._public_post(session, row)
            if row.kind in HOUSEHOLD_NOTICES:
                return await self._household_notice(session, row)
            if row.kind == Notice.COMMAND_MENU:
                return self._menu(row.chat_id, Menu(row.payload["menu"]))
            return await self._ticket_notice(session, row)

    async def _broadcast(
        self, session: AsyncSession, row: OutboxMessage, building_id: int | None
    ) -> TelegramMethod | None:
        """One resident's copy of a broadcast: the same snapshot for all, rendered once per language and building
        (an agenda's survey buttons are those of the topics the resident's building may vote on)."""
        key = (row.payload["broadcast_id"], self.i18n.current_locale, building_id)
        rendered = self._broadcasts.get(key)
        if rendered is None:
            broadcast = await session.get(Broadcast, key[0])
            if broadcast is None:
                return None
            community = await session.get(Community, broadcast.community_id)
            assert community is not None
            rendered = (
                broadcast_views.broadcast_text(community, broadcast.kind, broadcast.period, broadcast.content),
                broadcast_views.broadcast_keyboard(broadcast.kind, broadcast.content, building_id),
            )
            if len(self._broadcasts) >= RENDERED_BROADCASTS:
                self._broadcasts.pop(next(iter(self._broadcasts)))
            self._broadcasts[key] = rendered
        text, keyboard = rendered
        return SendMessage(chat_id=row.chat_id, text=text, reply_markup=keyboard)

    async def _monthly_report(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        """One part of the office's monthly report, with the figures as of the moment the report started."""
        broadcast = await session.get(Broadcast, row.payload["broadcast_id"])
        if broadcast is None:
            return None
        report = self._reports.get(broadcast.id)
        if report is None:
            report = await office_report(
                session, broadcast.community_id, Month.parse(broadcast.period), broadcast.created_at
            )
            if len(self._reports) >= DRAWN_REPORTS:
                self._reports.pop(next(iter(self._reports)))
            self._reports[broadcast.id] = report
        stats = report.stats[View.GRID]
        match ReportPart(row.payload["part"]):
            case ReportPart.TEXT:
                text = stats_views.stats_text(stats, self.tz, footer=stats_views.monthly_report_footer())
                return SendMessage(chat_id=row.chat_id, text=text)
            case ReportPart.CHART:
                # matplotlib and openpyxl cost most of a second to import: only a report's part loads them, so
                # a restarted bot polls that much sooner (docs/delivery.md, "Start-up").
                from bot.reports.chart import chart_png

                chart = BufferedInputFile(chart_png(stats), filename=f"stats-{stats.month}.png")
                return SendPhoto(chat_id=row.chat_id, photo=chart)
            case ReportPart.SPREADSHEET:
                from bot.reports.spreadsheet import month_workbook, spreadsheet_name

                workbook = BufferedInputFile(month_workbook(report), filename=spreadsheet_name(stats))
                return SendDocument(chat_id=row.chat_id, document=workbook)

    async def _public_post(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        """A post in a community's public notice chat: the execution feedback, a topic's public notice, or a
        closed ticket, in the bot's default language and without buttons."""
        if "broadcast_id" in row.payload:
            broadcast = await session.get(Broadcast, row.payload["broadcast_id"])
            community = await session.get(Community, broadcast.community_id) if broadcast else None
            if broadcast is None or community is None:
                return None
            text = broadcast_views.feedback_text(community, broadcast.period, broadcast.content, public=True)
            return SendMessage(chat_id=row.chat_id, text=text)
        if "topic_id" in row.payload:
            topic = await session.get(Topic, row.payload["topic_id"])
            event = await session.get(TopicEvent, row.payload["event_id"])
            community = await session.get(Community, topic.community_id) if topic else None
            if topic is None or event is None or community is None:
                return None
            tasks = list(
                await session.scalars(
                    select(TopicTask).where(TopicTask.topic_id == topic.id).order_by(TopicTask.due_on, TopicTask.id)
                )
            )
            return SendMessage(chat_id=row.chat_id, text=public_views.topic_notice(community, topic, event, tasks))
        ticket = await session.get(Ticket, row.payload["ticket_id"])
        if ticket is None:
            return None
        resolution = await session.scalar(
            select(TicketEvent)
            .where(TicketEvent.ticket_id == ticket.id, TicketEvent.kind == EventKind.RESOLVED)
            .order_by(TicketEvent.id.desc())
            .limit(1)
        )
        text = public_views.closed_ticket_notice(ticket, resolution)
        after = photos_of_event(ticket, resolution.id) if resolution is not None else []
        if after and views.visible_length(text) <= views.CAPTION_LIMIT:
            return SendPhoto(chat_id=row.chat_id, photo=after[0].file_id, caption=text)
        return SendMessage(chat_id=row.chat_id, text=text)

    async def _topic_notice(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        """Deliberation notices, rendered from the topics as they are now."""
        if row.kind == Notice.TOPIC_CANDIDATE:
            waiting = list(
                await session.scalars(
                    select(Topic)
                    .where(
                        Topic.id.in_(row.payload.get("topic_ids") or [row.payload["topic_id"]]),
                        # not those staff moved on (or set aside) before the notice went out
                        Topic.status.in_((TopicStatus.CANDIDATE, TopicStatus.COLLECTED)),
                    )
                    .order_by(Topic.id)
                )
            )
            if not waiting:
                return None
            text, keyboard = deliberation_views.staff_new_topics(waiting)
            return SendMessage(chat_id=row.chat_id, text=text, reply_markup=keyboard)
        topic = await session.get(Topic, row.payload["topic_id"])
        if topic is None:
            return None
        event = await session.get(TopicEvent, row.payload["event_id"])
        if event is None:
            return None
        task_id = event.data.get("task_id")
        task = await session.get(TopicTask, task_id) if task_id is not None else None
        return SendMessage(
            chat_id=row.chat_id,
            text=deliberation_views.topic_update(topic, event, task),
            reply_markup=deliberation_views.view_button(topic.id),
        )

    async def _household_notice(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        """A verification request for the grid worker (while it still waits), or a decision for the resident."""
        verification_id = row.payload["verification_id"]
        if row.kind == Notice.VERIFICATION_REQUEST:
            view = await request_for_notice(session, verification_id)
            if view is None:
                return None  # decided, or withdrawn, before the request went out
            text = household_views.request_text(view, self.tz)
            keyboard = household_views.request_keyboard(verification_id)
            photo = view.verification.photo_file_id
            if photo and views.visible_length(text) <= views.CAPTION_LIMIT:
                return SendPhoto(chat_id=row.chat_id, photo=photo, caption=text, reply_markup=keyboard)
            return SendMessage(chat_id=row.chat_id, text=text, reply_markup=keyboard)
        verification = await session.get(Verification, verification_id)
        building = None if verification is None else await session.get(Building, verification.building_id)
        if verification is None or building is None:
            return None
        return SendMessage(
            chat_id=row.chat_id, text=household_views.result_notice(verification, building, row.payload["outcome"])
        )

    async def _ticket_notice(self, session: AsyncSession, row: OutboxMessage) -> TelegramMethod | None:
        ticket = await session.get(Ticket, row.payload["ticket_id"])
        if ticket is None:
            return None
        match Notice(row.kind):
            case Notice.TICKET_CARD:
                return await self._card(session, row.chat_id, ticket)
            case Notice.CARD_EDIT:
                return await self._card_edit(session, row.chat_id, ticket, row.payload["message_id"])
            case Notice.QUESTION_EDIT:
                return await self._question_edit(session, row, ticket)
            case Notice.TICKET_PHOTOS:
                return self._photos(row.chat_id, ticket)
            case Notice.TICKET_UPDATE:
                return await self._update(session, row.chat_id, ticket, row.payload["event_id"])
            case Notice.DEADLINE_REMINDER:
                return await self._deadline_reminder(session, row.chat_id, ticket, row.payload["event_id"])
            case Notice.CONFIRM_REMINDER:
                return self._confirm_reminder(row.chat_id, ticket, row.payload["close_at"])
            case Notice.RESIDENT_FEEDBACK:
                return await self._feedback(session, row.chat_id, ticket, row.payload["event_id"])
        return None

    async def _card(self, session: AsyncSession, chat_id: int, ticket: Ticket) -> TelegramMethod:
        card = await load_card(session, ticket)
        return SendMessage(
            chat_id=chat_id, text=views.ticket_card(card, self.tz), reply_markup=views.ticket_actions(ticket)
        )

    async def _card_edit(self, session: AsyncSession, chat_id: int, ticket: Ticket, message_id: int) -> TelegramMethod:
        """A copy of the card brought up to date, with the buttons its holder may press now; one who no longer
        works the ticket keeps the text they saw, without buttons."""
        try:
            access = await ticket_access(session, chat_id, ticket)
        except AccessDenied:
            access = None
        if access is None or not access.as_worker:
            return EditMessageReplyMarkup(chat_id=chat_id, message_id=message_id, reply_markup=None)
        card = replace(await load_card(session, ticket), can_act=access.can_act)
        return EditMessageText(
            chat_id=chat_id,
            message_id=message_id,
            text=views.ticket_card(card, self.tz),
            reply_markup=views.ticket_actions(ticket, access.can_act),
        )

    async def _question_edit(self, session: AsyncSession, row: OutboxMessage, ticket: Ticket) -> TelegramMethod | None:
        """An "Is it fixed?" message once the question is settled: what it said, and what came of it; History is
        the only button left."""
        answer = await session.get(TicketEvent, row.payload["answer_event_id"])
        if answer is None:
            return None
        asked_id = row.payload["asked_event_id"]
        asked = await session.get(TicketEvent, asked_id) if asked_id is not None else None
        outcome = f"<i>{feedback_views.settled(answer.kind)}</i>"
        title = f"<b>{escape(views.ticket_title(ticket))}</b>"
        text = title + "\n" + outcome
        if asked is not None:
            names = await display_names(session, ticket.community_id, [asked.actor_id])
            told = views.resident_update(ticket, asked, names, row.chat_id) + "\n\n" + outcome
            limit = views.CAPTION_LIMIT if row.payload["caption"] else views.MESSAGE_LIMIT
            text = told if views.visible_length(told) <= limit else text
        chat_id, message_id, markup = row.chat_id, row.payload["message_id"], views.history_keyboard(ticket.id)
        if row.payload["caption"]:
            return EditMessageCaption(chat_id=chat_id, message_id=message_id, caption=text, reply_markup=markup)
        return EditMessageText(chat_id=chat_id, message_id=message_id, text=text, reply_markup=markup)

    def _menu(self, chat_id: int, menu: Menu) -> TelegramMethod:
        """A worker's or staff member's "/" menu in their chat, in their language; a resident's is the one every
        private chat has."""
        scope = BotCommandScopeChat(chat_id=chat_id)
        if menu is Menu.RESIDENT:
            return DeleteMyCommands(scope=scope)
        return SetMyCommands(commands=command_views.menu(menu), scope=scope)

    def _photos(self, chat_id: int, ticket: Ticket) -> TelegramMethod | None:
        """The resident's photos, each with what they wrote on it; the first also names the ticket."""
        photos = [p for p in ticket.photos if p.stage == PhotoStage.REPORT]
        if not photos:
            return None
        title = escape(views.ticket_title(ticket))
        captions = [
            "\n".join(part for part in (title if i == 0 else "", escape(photo.caption)) if part) or None
            for i, photo in enumerate(photos)
        ]
        if len(photos) == 1:
            return SendPhoto(chat_id=chat_id, photo=photos[0].file_id, caption=captions[0])
        return SendMediaGroup(
            chat_id=chat_id,
            media=[InputMediaPhoto(media=p.file_id, caption=c) for p, c in zip(photos, captions, strict=True)],
        )

    async def _update(
        self, session: AsyncSession, chat_id: int, ticket: Ticket, event_id: int
    ) -> TelegramMethod | None:
        event = await session.get(TicketEvent, event_id)
        if event is None:
            return None
        names = await display_names(session, ticket.community_id, [event.actor_id])
        text = views.resident_update(ticket, event, names, chat_id)
        markup = views.history_keyboard(ticket.id)
        if event.kind == EventKind.RESOLVED and ticket.status == TicketStatus.RESOLVED:
            # Closing the loop: the resolution (with its photo) asks "Is it fixed?" while nobody has answered.
            text += "\n\n" + feedback_views.is_it_fixed()
            markup = feedback_views.fixed_keyboard(ticket.id)
        photos = photos_of_event(ticket, event.id)
        if photos and views.visible_length(text) <= views.CAPTION_LIMIT:
            return SendPhoto(chat_id=chat_id, photo=photos[0].file_id, caption=text, reply_markup=markup)
        return SendMessage(chat_id=chat_id, text=text, reply_markup=markup)

    def _confirm_reminder(self, chat_id: int, ticket: Ticket, close_at: str) -> TelegramMethod | None:
        if ticket.status != TicketStatus.RESOLVED:
            return None  # answered (or reopened) since the reminder was queued: nothing left to ask
        return SendMessage(
            chat_id=chat_id,
            text=feedback_views.reminder(ticket, datetime.fromisoformat(close_at), self.tz),
            reply_markup=feedback_views.fixed_keyboard(ticket.id),
        )

    async def _feedback(
        self, session: AsyncSession, chat_id: int, ticket: Ticket, event_id: int
    ) -> TelegramMethod | None:
        """The resident's answers from ``event_id`` on, in one message: what joined it while it waited."""
        answers = list(
            await session.scalars(
                select(TicketEvent)
                .where(
                    TicketEvent.ticket_id == ticket.id,
                    TicketEvent.id >= event_id,
                    TicketEvent.kind.in_(FEEDBACK_EVENTS),
                )
                .order_by(TicketEvent.id)
            )
        )
        if not answers:
            return None
        return SendMessage(
            chat_id=chat_id,
            text=feedback_views.worker_feedback(ticket, answers),
            reply_markup=views.history_keyboard(ticket.id),
        )

    async def _deadline_reminder(
        self, session: AsyncSession, chat_id: int, ticket: Ticket, event_id: int
    ) -> TelegramMethod | None:
        """A deadline is close or passed; nothing when the ticket has moved on since (closed, or someone else's)."""
        event = await session.get(TicketEvent, event_id)
        if event is None or not ticket.is_open or ticket.assignee_id != chat_id:
            return None
        return SendMessage(
            chat_id=chat_id,
            text=ladder_views.deadline_reminder(ticket, event, self.tz),
            reply_markup=views.ticket_actions(ticket),
        )
