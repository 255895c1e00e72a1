"""SQLAlchemy models: the community structure, people, tickets with their history, and the outbox.

Times are stored as naive UTC and handed back as aware UTC, so SQLite and PostgreSQL behave alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    # Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class Level(StrEnum):
    """The escalation ladder: who handles a ticket."""

    GRID = "grid"
    COMMUNITY = "community"
    STREET = "street"
    DEPARTMENT = "department"


class Role(StrEnum):
    GRID_WORKER = "grid_worker"
    STAFF = "staff"
    STREET = "street"  # the street office (街道); scope ""
    DEPARTMENT = "department"  # a city department or the property company; scope = the department's code


class Rank(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"


class TicketStatus(StrEnum):
    ASSIGNED = "assigned"  # routed to someone, waiting to be accepted
    IN_PROGRESS = "in_progress"  # accepted by the assignee
    RESOLVED = "resolved"  # the worker says it is done; waiting for the resident's answer
    CLOSED = "closed"  # the resident confirmed the fix
    UNCONFIRMED = "unconfirmed"  # resolved, unconfirmed: nobody answered "Is it fixed?" in time

    @classmethod
    def open_statuses(cls) -> tuple[TicketStatus, ...]:
        return (cls.ASSIGNED, cls.IN_PROGRESS)


class EventKind(StrEnum):
    CREATED = "created"
    ROUTED = "routed"
    ACCEPTED = "accepted"
    HANDED_BACK = "handed_back"
    NOTE = "note"
    RESOLVED = "resolved"
    REMINDED = "reminded"  # the sweep reminded the assignee of a close deadline (data: deadline, due)
    OVERDUE = "overdue"  # a deadline passed (data: deadline, due, from; stuck=True when nobody could take it)
    ESCALATED = "escalated"  # moved up the ladder (data: from, to, department, auto)
    SENT_DOWN = "sent_down"  # sent back down the ladder with an instruction (data: from, to)
    # Closing the loop with the resident (domain/confirmation.py) and "me too" (domain/followers.py).
    CONFIRMED = "confirmed"  # a resident said it is fixed: the ticket is closed
    REOPENED = "reopened"  # a resident said it is not fixed (note: why); back to the same worker
    RATED = "rated"  # satisfaction 1-5 (data: stars)
    RATING_COMMENT = "rating_comment"  # the optional comment on the rating (note)
    CONFIRM_REMINDED = "confirm_reminded"  # residents were asked once more (data: close_at)
    AUTO_CLOSED = "auto_closed"  # no answer in time: resolved, unconfirmed (data: days)
    JOINED = "joined"  # another household has the same problem ("me too"; data: households)


class PhotoStage(StrEnum):
    REPORT = "report"
    PROGRESS = "progress"
    RESOLUTION = "resolution"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"  # taken by a sender, not tried yet: safe to give back if that sender dies
    SENDING = "sending"  # handed to Telegram: if the sender dies now, nobody knows whether it arrived
    SENT = "sent"
    FAILED = "failed"


class Community(Base):
    __tablename__ = "communities"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")


class Grid(Base):
    __tablename__ = "grids"
    __table_args__ = (UniqueConstraint("community_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Compound(Base):
    __tablename__ = "compounds"
    __table_args__ = (UniqueConstraint("community_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Building(Base):
    __tablename__ = "buildings"
    __table_args__ = (UniqueConstraint("compound_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    compound_id: Mapped[int] = mapped_column(ForeignKey("compounds.id"))
    grid_id: Mapped[int] = mapped_column(ForeignKey("grids.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    units: Mapped[int] = mapped_column(Integer, default=1)
    # The deep-link payload printed on the stairwell QR code; built from codes so it survives a re-import.
    link_key: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    compound: Mapped[Compound] = relationship(lazy="joined", innerjoin=True)
    grid: Mapped[Grid] = relationship(lazy="joined", innerjoin=True)


class Category(Base):
    __tablename__ = "categories"
    __table_args__ = (UniqueConstraint("community_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    keywords: Mapped[list[str]] = mapped_column(default=list)
    level: Mapped[str] = mapped_column(String(16), default=Level.GRID)
    response_hours: Mapped[int] = mapped_column(Integer, default=24)
    resolve_hours: Mapped[int] = mapped_column(Integer, default=168)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Department(Base):
    """A city department (住建局, 供电局 …) or a property company that escalated tickets can go to."""

    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("community_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class User(Base):
    """Anyone who talks to the bot, keyed by Telegram user id (also their private chat id)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    # Chosen by the user; None means "follow the Telegram client".
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    telegram_language: Mapped[str | None] = mapped_column(String(16), default=None)
    building_id: Mapped[int | None] = mapped_column(ForeignKey("buildings.id"), default=None)
    unit: Mapped[int | None] = mapped_column(Integer, default=None)
    # Set when Telegram answers 403: the user blocked the bot, so nothing more is sent.
    unreachable_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]

    building: Mapped[Building | None] = relationship(lazy="raise")


class Membership(Base):
    """A person's duty in a community: grid worker of a grid, or community staff."""

    __tablename__ = "memberships"
    __table_args__ = (
        # scope is the grid code for grid workers and "" for community-wide roles, so the key has no NULL.
        UniqueConstraint("community_id", "user_id", "role", "scope"),
        Index("ix_memberships_user", "user_id", "active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(32), default="")
    grid_id: Mapped[int | None] = mapped_column(ForeignKey("grids.id"), default=None)
    rank: Mapped[str] = mapped_column(String(16), default=Rank.PRIMARY)
    display_name: Mapped[str] = mapped_column(String(100), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_assignee_status", "assignee_id", "status"),
        Index("ix_tickets_grid_status", "grid_id", "status"),
        Index("ix_tickets_reporter", "reporter_id", "id"),
        Index("ix_tickets_community_stats", "community_id", "status", "category_id"),
        # The deadline sweep reads open tickets by status and due time.
        Index("ix_tickets_respond_by", "status", "respond_by"),
        Index("ix_tickets_resolve_by", "status", "resolve_by"),
        # "Me too": open tickets of one category in one building, read when a resident picks a category.
        Index("ix_tickets_building_category", "building_id", "category_id", "status"),
        # The confirmation sweep reads resolved tickets by the time they were resolved.
        Index("ix_tickets_status_resolved", "status", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    building_id: Mapped[int] = mapped_column(ForeignKey("buildings.id"))
    unit: Mapped[int | None] = mapped_column(Integer, default=None)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grids.id"))
    reporter_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    description: Mapped[str] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Float, default=None)
    longitude: Mapped[float | None] = mapped_column(Float, default=None)
    status: Mapped[str] = mapped_column(String(16), default=TicketStatus.ASSIGNED)
    level: Mapped[str] = mapped_column(String(16), default=Level.GRID)
    assignee_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"), default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    # Deadlines of the current window (domain/deadlines.py): accept by, resolve by. A new level starts new ones.
    respond_by: Mapped[datetime | None] = mapped_column(default=None)
    resolve_by: Mapped[datetime | None] = mapped_column(default=None)
    # The department's code while the ticket is at the department level, else None.
    department: Mapped[str | None] = mapped_column(String(32), default=None)
    # Closing the loop (domain/confirmation.py): how often a resident said "not fixed", the satisfaction
    # rating (1-5) with its optional comment, and when the ticket was closed (confirmed or not).
    reopen_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    rating_comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    closed_at: Mapped[datetime | None] = mapped_column(default=None)

    category: Mapped[Category] = relationship(lazy="joined", innerjoin=True)
    building: Mapped[Building] = relationship(lazy="joined", innerjoin=True)
    photos: Mapped[list[TicketPhoto]] = relationship(
        lazy="selectin", order_by="TicketPhoto.id", cascade="all, delete-orphan"
    )

    @property
    def is_open(self) -> bool:
        return self.status in TicketStatus.open_statuses()


class TicketPhoto(Base):
    __tablename__ = "ticket_photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    file_id: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(16), default=PhotoStage.REPORT)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("ticket_events.id"), default=None)


class TicketFollower(Base):
    """A household that said "me too": affected by a neighbour's ticket and told about it like its reporter."""

    __tablename__ = "ticket_followers"
    __table_args__ = (
        UniqueConstraint("ticket_id", "user_id"),
        Index("ix_ticket_followers_user", "user_id", "ticket_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    joined_at: Mapped[datetime]


class TicketEvent(Base):
    """Append-only history of a ticket: who did what, when, and why."""

    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_events_ticket", "ticket_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    at: Mapped[datetime]
    actor_id: Mapped[int | None] = mapped_column(BigInteger, default=None)  # None: the system
    kind: Mapped[str] = mapped_column(String(24))
    note: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboxMessage(Base):
    """A message to someone other than the user being answered, written in the transaction that causes it.

    ``kind`` and ``payload`` say what to tell; the sender renders it in the recipient's language when it
    sends, so the domain never needs to know about Telegram or translations.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "not_before", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime]
    created_at: Mapped[datetime]
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str] = mapped_column(Text, default="")


class FsmRecord(Base):
    """aiogram FSM state and data, kept in the database so a half-finished wizard survives a restart."""

    __tablename__ = "fsm_states"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str | None] = mapped_column(String(100), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
