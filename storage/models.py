"""SQLAlchemy models: the community structure, people, tickets with their history, and the outbox.

Times are stored as naive UTC and handed back as aware UTC, so SQLite and PostgreSQL behave alike.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
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
    event,
    false,
    text,
    true,
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
    DELIBERATION = "deliberation"  # taken to the monthly deliberation (note: why; data: topic_id)


class PhotoStage(StrEnum):
    REPORT = "report"
    PROGRESS = "progress"
    RESOLUTION = "resolution"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"  # taken by a sender, not tried yet: safe to give back if that sender dies
    SENDING = "sending"  # a broadcast row handed to Telegram: if the sender dies now, nobody knows whether it arrived
    SENT = "sent"
    FAILED = "failed"
    # A broadcast row whose sender died while it was "sending": perhaps delivered, never repeated, counted.
    IN_DOUBT = "in_doubt"

    @classmethod
    def unfinished(cls) -> tuple[OutboxStatus, ...]:
        return (cls.PENDING, cls.CLAIMED, cls.SENDING)


class OutboxPriority:
    """Lower goes first: a worker's card must not wait behind ten thousand agenda messages."""

    NOTICE = 0
    BROADCAST = 10


class TopicStatus(StrEnum):
    """The seven-step method (七步议事法), plus the bot's own proposals and what staff set aside."""

    CANDIDATE = "candidate"  # proposed by the bot (same category, same compound, 3+ tickets a month); staff decide
    DISMISSED = "dismissed"  # a candidate (or any topic) staff set aside, with a reason
    COLLECTED = "collected"  # 1 收集问题: from a ticket, a resident's suggestion, staff, or an accepted candidate
    DRAFTED = "drafted"  # 2 拟定议题: title, background and options written; on the next agenda
    SURVEYED = "surveyed"  # 3 议前调研: the pre-meeting survey is open to the affected residents
    VOTED = "voted"  # 4 协商表决: the meeting's decision and vote are recorded; the survey is closed
    APPLIED = "applied"  # 5 结果应用: execution tasks with a responsible party, due date and progress
    FEEDBACK = "feedback"  # 6 执行反馈: progress notes are being reported back
    NOTICED = "noticed"  # 7 公示反馈: the outcome was publicly noticed; the topic is finished

    @classmethod
    def steps(cls) -> tuple[TopicStatus, ...]:
        """The seven steps in order."""
        return (cls.COLLECTED, cls.DRAFTED, cls.SURVEYED, cls.VOTED, cls.APPLIED, cls.FEEDBACK, cls.NOTICED)


class TopicSource(StrEnum):
    TICKET = "ticket"  # a worker or staff marked a ticket "needs deliberation"
    SUGGESTION = "suggestion"  # a resident's /suggest (金点子)
    STAFF = "staff"  # staff wrote it directly
    CANDIDATE = "candidate"  # the bot noticed repeated reports


class TopicEventKind(StrEnum):
    PROPOSED = "proposed"  # the bot proposed a candidate (data: category_id, compound_id, ticket_ids)
    COLLECTED = "collected"  # created, or a candidate accepted (data: source)
    TICKET_LINKED = "ticket_linked"  # a ticket was marked "needs deliberation" into this topic (data: ticket_id)
    DRAFTED = "drafted"  # title/background/options written or rewritten (data: options)
    SURVEY_OPENED = "survey_opened"
    VOTED = "voted"  # the meeting decided (note: decision; data: votes_for, votes_against, votes_abstain)
    TASK_ADDED = "task_added"  # data: task_id
    PROGRESS = "progress"  # a task's progress (note; data: task_id, percent)
    FEEDBACK = "feedback"  # moved to the feedback step
    NOTICED = "noticed"  # publicly noticed: finished
    DISMISSED = "dismissed"  # note: why


class BroadcastKind(StrEnum):
    AGENDA = "agenda"  # before the meeting: the month's topics, date and place, survey buttons
    FEEDBACK = "feedback"  # after it: decisions, execution progress, the month's tickets in numbers
    SURVEY = "survey"  # a topic's survey opened: the residents in its scope are asked for their view
    # The office's monthly report (figures, chart, spreadsheet) to staff and the street office; not to residents.
    REPORT = "report"

    @classmethod
    def monthly(cls) -> tuple[BroadcastKind, ...]:
        """The residents' broadcasts that go out on the community's schedule, once a month."""
        return (cls.AGENDA, cls.FEEDBACK)

    @classmethod
    def scheduled(cls) -> tuple[BroadcastKind, ...]:
        """Everything the community's crontabs start, once per period."""
        return (cls.AGENDA, cls.FEEDBACK, cls.REPORT)


class VerificationStatus(StrEnum):
    """Where a resident's claim to speak for a household stands (domain/verification.py)."""

    PENDING = "pending"  # waiting for the grid worker
    VERIFIED = "verified"  # the phone matched the register, or the grid worker confirmed it
    DECLINED = "declined"  # the grid worker said no (reason)
    WITHDRAWN = "withdrawn"  # still pending when the resident asked again or moved
    REVOKED = "revoked"  # community staff took a verification back (reason)
    MOVED_OUT = "moved_out"  # the household left the register
    MOVED_AWAY = "moved_away"  # the resident bound themselves to another building or unit


class VerificationMethod(StrEnum):
    PHONE = "phone"  # the shared phone number matched the register
    WORKER = "worker"  # the grid worker (or staff) confirmed the claimed room


class Community(Base):
    __tablename__ = "communities"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    # The monthly deliberation (每月一议事), from the [deliberation] section of the community file. Times are
    # in the community's time zone; the two schedules are five-field crontab lines ("0 9 25 * *").
    meeting_day: Mapped[int] = mapped_column(Integer, default=28, server_default="28")
    meeting_time: Mapped[str] = mapped_column(String(5), default="19:30", server_default="19:30")
    meeting_place: Mapped[str] = mapped_column(String(200), default="", server_default="")
    agenda_cron: Mapped[str] = mapped_column(String(64), default="0 9 25 * *", server_default="0 9 25 * *")
    feedback_cron: Mapped[str] = mapped_column(String(64), default="0 19 5 * *", server_default="0 19 5 * *")
    # How many tickets of one category in one compound within a month make the bot propose a topic.
    candidate_threshold: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    # From the [reports] section: when the office's monthly report goes out (crontab, community time zone), and
    # the Telegram channel or group where the bot posts public notices (公示), with or without closed tickets.
    report_cron: Mapped[str] = mapped_column(String(64), default="0 8 1 * *", server_default="0 8 1 * *")
    public_chat_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    public_closed_tickets: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The [register] section: the household register's column headings by field (building, unit, room, name,
    # phone, compound), and the sheet of an .xlsx file; empty when the community keeps no register in the bot.
    register_columns: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


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
    # The resident turned the monthly agenda and feedback broadcasts off (/settings); personal notices still come.
    broadcasts_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Where the community posts the execution feedback in its public channel, residents get it there and not
    # privately, unless they asked for a private copy too (/settings).
    public_copy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The "/" command menu Telegram shows this person, as the bot last set it for their chat (domain/menus.py);
    # None: the residents' menu that every private chat has.
    command_menu: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime]
    # Open tickets assigned to this person: routing's load, kept in the ticket's own transaction
    # (domain/routing.py), so routing reads one row per candidate instead of counting their tickets.
    open_tickets: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    building: Mapped[Building | None] = relationship(lazy="raise")

    __table_args__ = (
        # A broadcast's recipients, read building by building (domain/broadcasts.py) from the index alone. Not
        # a partial index: SQLite (3.40) would still read every row to check the partial index's condition.
        Index("ix_users_recipients", "building_id", "broadcasts_off", "unreachable_at", "id"),
        # /ledger counts the residents Telegram cannot reach: few, so a partial index holds just them.
        Index(
            "ix_users_unreachable",
            "building_id",
            sqlite_where=text("unreachable_at IS NOT NULL"),
            postgresql_where=text("unreachable_at IS NOT NULL"),
        ),
    )


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
    # Printed on the stairwell posters of a grid worker's buildings; only when the community file gives one.
    phone: Mapped[str] = mapped_column(String(32), default="", server_default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)


class Household(Base):
    """A room of a building (户): from the household register (居民台账), or confirmed by a grid worker.

    A household the register no longer lists is moved out (``active`` False), never deleted: votes and the
    record of verifications refer to it.
    """

    __tablename__ = "households"
    __table_args__ = (UniqueConstraint("building_id", "unit", "room"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"), index=True)
    building_id: Mapped[int] = mapped_column(ForeignKey("buildings.id"))
    unit: Mapped[int] = mapped_column(Integer)  # 1 in a building with one unit
    room: Mapped[str] = mapped_column(String(16))
    # False: only a grid worker vouched for it; a register import neither lists nor moves it out.
    in_register: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    moved_out_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class HouseholdMember(Base):
    """A person of a household as the register names them. The phone number is kept only as a keyed hash."""

    __tablename__ = "household_members"
    __table_args__ = (
        Index("ix_household_members_household", "household_id"),
        # Verification by contact looks a number up by its hash.
        Index("ix_household_members_phone", "phone_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("households.id"))
    name: Mapped[str] = mapped_column(String(100), default="")
    # HMAC-SHA256 of the normalised number under HOUSEHOLD_PHONE_SECRET, hex; "" when the register has none.
    phone_hash: Mapped[str] = mapped_column(String(64), default="")


class Verification(Base):
    """One claim of a resident to speak for a household, and what became of it: who decided, when, and why.

    A resident has at most one row ``pending`` and at most one ``verified`` at a time; every other row is the
    record of an earlier claim.
    """

    __tablename__ = "verifications"
    __table_args__ = (
        Index("ix_verifications_user_status", "user_id", "status"),
        # The grid worker's /verify list and staff's counts read by building and status.
        Index("ix_verifications_building_status", "building_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    building_id: Mapped[int] = mapped_column(ForeignKey("buildings.id"))
    unit: Mapped[int] = mapped_column(Integer)
    room: Mapped[str] = mapped_column(String(16))
    # The household it was confirmed for (set when verified).
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"), default=None, index=True)
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")  # the resident's name as Telegram gave it
    photo_file_id: Mapped[str] = mapped_column(String(256), default="")  # a photo the resident chose to add
    created_at: Mapped[datetime]
    # Verified or declined: by whom (None: the register, by phone) and when, and a decline's reason.
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    decided_by: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    # A verification that ended (revoked, moved out, moved away, withdrawn): by whom (None: the bot) and when.
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_by: Mapped[int | None] = mapped_column(BigInteger, default=None)
    end_reason: Mapped[str] = mapped_column(Text, default="")


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
        # Monthly statistics (domain/stats.py) read one community's tickets received in one month, and everything
        # they count is in this index (a covering index): the month is read from the index alone, without a
        # lookup into the table per ticket. The key columns are the month's range; the rest are what is counted.
        Index(
            "ix_tickets_community_created",
            "community_id",
            "created_at",
            "grid_id",
            "assignee_id",
            "category_id",
            "building_id",
            "status",
            "accept_seconds",
            "resolve_seconds",
            "rating",
            "reopen_count",
            "respond_by",
            "resolve_by",
        ),
        # The periodic jobs read only the tickets due now (see ``wake_at``).
        Index("ix_tickets_wake", "status", "wake_at"),
        # Tickets of a topic. Partial: most tickets have none, and a full index on topic_id made SQLite read
        # every ticket without a topic through it when asked for "this month's tickets with topic_id IS NULL".
        Index(
            "ix_tickets_on_topic",
            "topic_id",
            sqlite_where=text("topic_id IS NOT NULL"),
            postgresql_where=text("topic_id IS NOT NULL"),
        ),
    )

    # The columns with a server default (for rows an upgrade added them to) have a default here too, so a new
    # ticket's INSERT never needs them back: asked for, they would come back through RETURNING. Filing inserts
    # with a plain statement (domain/tickets.py, file_report), which fills in the same defaults.
    __mapper_args__ = {"eager_defaults": False}  # noqa: RUF012  (SQLAlchemy reads it from the class)

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
    # The first time anyone accepted it; kept through hand-backs and escalations (accepted_at is the current
    # holder's), so the monthly response rate and time to accept measure what the resident waited for.
    first_accepted_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    # Whole seconds from filing to first_accepted_at and to resolved_at (None while those are), kept by the ORM at
    # every flush (see _durations below): the monthly statistics compare, sum and sort them, where working them out
    # from two timestamps per ticket cost more than all the rest of a month's figures.
    accept_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    resolve_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
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
    # The deliberation topic this ticket was taken to ("needs deliberation", or an accepted candidate).
    topic_id: Mapped[int | None] = mapped_column(ForeignKey("topics.id"), default=None)
    # When a periodic job must look at the ticket next (the deadline sweep while it is open, the confirmation
    # sweep while it is resolved); None: no job needs to. A change of status or deadline sets it to the
    # change's time (domain/deadlines.py), and the sweep that looks then sets the exact moment, so a run reads
    # only the tickets due, never the history.
    wake_at: Mapped[datetime | None] = mapped_column(default=None)
    # Whether the reporter spoke for a verified household when filing (the card marks it when not). Tickets
    # filed before households existed count as verified, so the upgrade does not mark them all.
    reporter_verified: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    category: Mapped[Category] = relationship(lazy="joined", innerjoin=True)
    building: Mapped[Building] = relationship(lazy="joined", innerjoin=True)
    photos: Mapped[list[TicketPhoto]] = relationship(
        lazy="selectin", order_by="TicketPhoto.id", cascade="all, delete-orphan"
    )

    @property
    def is_open(self) -> bool:
        return self.status in TicketStatus.open_statuses()


def seconds_between(start: datetime, end: datetime | None) -> int | None:
    return None if end is None else round((end - start).total_seconds())


@event.listens_for(Ticket, "before_insert")
@event.listens_for(Ticket, "before_update")
def _durations(mapper: Any, connection: Any, ticket: Ticket) -> None:
    """Whatever step set or cleared first_accepted_at or resolved_at (acceptance, resolution, a reopen), the two
    durations follow in the same statement."""
    ticket.accept_seconds = seconds_between(ticket.created_at, ticket.first_accepted_at)
    ticket.resolve_seconds = seconds_between(ticket.created_at, ticket.resolved_at)


class TicketCount(Base):
    """How many tickets one compound reported in one category within one month of its community's time zone,
    kept in the transaction that writes a ticket (domain/ticket_counts.py), and the candidate topic proposed
    for it (domain/deliberation.py). The topic-candidates job reads these rows, never the month's tickets."""

    __tablename__ = "ticket_counts"
    __table_args__ = (
        # The job's one query: this month's counts that have reached a threshold and have no topic yet. Partial:
        # a count that has its topic never needs reading again, and most of a month's counts soon have one.
        Index(
            "ix_ticket_counts_unproposed",
            "month",
            "tickets",
            sqlite_where=text("topic_id IS NULL"),
            postgresql_where=text("topic_id IS NULL"),
        ),
    )

    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "YYYY-MM", domain.ticket_counts.month_key
    category_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    compound_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tickets: Mapped[int] = mapped_column(default=0)
    topic_id: Mapped[int | None] = mapped_column(ForeignKey("topics.id"), default=None)


class MonthSummary(Base):
    """A community's month that has ended, whose counts are kept summed in ``month_figures`` for the office's
    figures (domain/month_summary.py says how they stay right). ``changes`` counts writes to the month's tickets
    since the row was made; the summary is current while ``summarised_changes`` equals it."""

    __tablename__ = "month_summaries"

    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"), primary_key=True)
    month: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # months since year 0 (Month.index)
    # The month in the community's time zone, as UTC instants [starts_at, ends_at): a ticket's write finds its
    # month's row by its created_at alone.
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    marked_at: Mapped[datetime]
    changes: Mapped[int] = mapped_column(default=0)
    summarised_changes: Mapped[int | None] = mapped_column(default=None)
    summarised_at: Mapped[datetime | None] = mapped_column(default=None)


class MonthFigures(Base):
    """The counts of one ended month's tickets that share a grid, an assignee, a category and a compound: every
    view of /stats (by grid, worker, category, compound, or the whole community) is a sum of these rows."""

    __tablename__ = "month_figures"
    __table_args__ = (Index("ix_month_figures_month", "community_id", "month"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    month: Mapped[int]
    grid_id: Mapped[int]
    assignee_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    category_id: Mapped[int]
    compound_id: Mapped[int]
    received: Mapped[int]
    accepted_in_time: Mapped[int]
    resolved_in_time: Mapped[int]
    closed_confirmed: Mapped[int]
    resolved_once: Mapped[int]
    reopened: Mapped[int]
    rated: Mapped[int]
    satisfied: Mapped[int]
    rating_sum: Mapped[int]


class TicketPhoto(Base):
    __tablename__ = "ticket_photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    file_id: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(16), default=PhotoStage.REPORT)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("ticket_events.id"), default=None)
    # What the resident wrote on the photo ("the crack by the window"); a worker's photo has its note instead.
    caption: Mapped[str] = mapped_column(Text, default="", server_default="")


class TicketCardCopy(Base):
    """A message holding a ticket's card (text and buttons) that the bot sent someone: each is edited when the
    ticket changes, so no old copy offers a button that no longer applies."""

    __tablename__ = "ticket_card_copies"
    __table_args__ = (UniqueConstraint("chat_id", "message_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[datetime]


class TicketQuestionCopy(Base):
    """A message that asked a household "Is it fixed?" with Yes / No buttons (the resolution update, or the
    reminder): once the question is answered, or the ticket closes unanswered, it is edited to say so, without
    those buttons (domain/questions.py)."""

    __tablename__ = "ticket_question_copies"
    __table_args__ = (UniqueConstraint("chat_id", "message_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    # The resolution the message told of; None for the reminder.
    event_id: Mapped[int | None] = mapped_column(ForeignKey("ticket_events.id"), default=None)
    caption: Mapped[bool] = mapped_column(Boolean, default=False)  # the text is a photo's caption
    sent_at: Mapped[datetime]


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
    __table_args__ = (
        Index("ix_outbox_due", "status", "priority", "not_before", "id"),
        # One row per recipient of a broadcast (NULLs, i.e. ordinary notices, never collide); also its progress.
        UniqueConstraint("broadcast_id", "chat_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    priority: Mapped[int] = mapped_column(Integer, default=OutboxPriority.NOTICE, server_default="0")
    # A broadcast's recipient row: one per resident and broadcast, so a resumed broadcast never sends twice.
    broadcast_id: Mapped[int | None] = mapped_column(ForeignKey("broadcasts.id"), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime]
    created_at: Mapped[datetime]
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    # The sender process holding the claim (:class:`SenderLease`); its claims go back when its lease lapses.
    claimed_by: Mapped[str | None] = mapped_column(String(32), default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    # A personal row's request as its sender prepared it (bot/outbound/requests.py), kept while the row is
    # claimed: a restarted process sends it before it has loaded the rest of the bot (bot/outbound/handover.py).
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)


class SenderLease(Base):
    """A live sender process: it renews ``expires_at`` every few seconds while it runs.

    Outbox rows claimed by a holder whose lease has lapsed (or is gone) belong to a dead process and are taken
    back by whoever runs next, so a crash delays its messages by seconds, not minutes.
    """

    __tablename__ = "sender_leases"

    holder: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[datetime]


class InboundUpdate(Base):
    """An update from Telegram, recorded before Telegram is told it arrived, so a crash cannot lose it.

    ``handled_at`` is written in the same transaction as the update's own changes, so an update that is
    delivered again, or recovered after a crash, is handled exactly once. ``answered_at`` is written once its
    handling has ended, answers included: a row handled and not answered is one whose answer a crash may have
    cut off, and the person is shown where they stand after the restart (bot/intake.py, ``resume``).
    """

    __tablename__ = "inbound_updates"
    __table_args__ = (
        Index("ix_inbound_updates_handled_at", "handled_at"),
        Index("ix_inbound_updates_user_key", "user_key", "update_id"),
    )

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    payload: Mapped[str] = mapped_column(Text)  # the update as Telegram sent it (JSON)
    received_at: Mapped[datetime]
    handled_at: Mapped[datetime | None] = mapped_column(default=None)
    # How often a process started handling it after a restart: one that keeps crashing the bot is set aside.
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    # The process handling it (its :class:`SenderLease` holder): with several processes, only an update whose
    # process is gone is taken over by another.
    received_by: Mapped[str | None] = mapped_column(String(32), default=None)
    # Whose updates these are (the user's id, else the chat's): their latest one is the one to resume.
    user_key: Mapped[int | None] = mapped_column(BigInteger, default=None)
    answered_at: Mapped[datetime | None] = mapped_column(default=None)


class ScheduledRun(Base):
    """One run of a scheduled job: whichever process inserts the row for a slot runs it; the others skip it.

    Every process has the same jobs on the same clock, so the database decides which one runs each slot
    (a minute for the sweeps), as it decides a broadcast's period.
    """

    __tablename__ = "scheduled_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[datetime] = mapped_column(primary_key=True)
    ran_by: Mapped[str] = mapped_column(String(32))


class Topic(Base):
    """A deliberation topic (议题) on its way through the seven steps; see :class:`TopicStatus`."""

    __tablename__ = "topics"
    __table_args__ = (
        Index("ix_topics_community_status", "community_id", "status"),
        # The bot proposes one candidate per category, compound and month, however often it looks.
        UniqueConstraint("community_id", "candidate_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    status: Mapped[str] = mapped_column(String(16), default=TopicStatus.COLLECTED)
    source: Mapped[str] = mapped_column(String(16))
    # Who raised it (the suggesting resident, the worker or staff member); None for the bot's candidates.
    raised_by: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"), default=None)
    # What was raised, in the raiser's words (a suggestion's text, the reason a ticket needs deliberation).
    origin_note: Mapped[str] = mapped_column(Text, default="")
    # Narrowed to compounds or buildings (ids); both empty: the whole community.
    compound_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    building_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # A candidate's identity: "<category id>:<compound id>:<YYYY-MM>"; None for every other topic.
    candidate_key: Mapped[str | None] = mapped_column(String(64), default=None)
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), default=None)
    # Step 2: written by staff.
    title: Mapped[str] = mapped_column(String(200), default="")
    background: Mapped[str] = mapped_column(Text, default="")
    options: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Step 4: the meeting's decision and its vote.
    decision: Mapped[str] = mapped_column(Text, default="")
    votes_for: Mapped[int | None] = mapped_column(Integer, default=None)
    votes_against: Mapped[int | None] = mapped_column(Integer, default=None)
    votes_abstain: Mapped[int | None] = mapped_column(Integer, default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    noticed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TopicEvent(Base):
    """Append-only history of a topic: every step, by whom, when."""

    __tablename__ = "topic_events"
    __table_args__ = (Index("ix_topic_events_topic", "topic_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"))
    at: Mapped[datetime]
    actor_id: Mapped[int | None] = mapped_column(BigInteger, default=None)  # None: the bot
    kind: Mapped[str] = mapped_column(String(24))
    note: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SurveyVote(Base):
    """A household's answer to a topic's pre-meeting survey: one per household, changeable while the survey is open.

    ``user_id`` is the member who voted last: a later vote of another member of the household replaces it.
    """

    __tablename__ = "survey_votes"
    __table_args__ = (UniqueConstraint("topic_id", "household_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"))
    # None only for votes cast before households existed (one per account then).
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"), default=None)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    option: Mapped[int] = mapped_column(Integer)  # index into Topic.options
    voted_at: Mapped[datetime]


class TopicTask(Base):
    """Step 5: a piece of execution of a decision, with who is responsible, by when, and how far it is."""

    __tablename__ = "topic_tasks"
    __table_args__ = (Index("ix_topic_tasks_topic", "topic_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"))
    title: Mapped[str] = mapped_column(String(200))
    responsible: Mapped[str] = mapped_column(String(100))  # a party, e.g. "物业公司" or "王书记"
    due_on: Mapped[date] = mapped_column(Date)
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent, 0-100
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Broadcast(Base):
    """One scheduled broadcast to a community's residents. It exists once per community, kind and period.

    The unique key, not the scheduler, guarantees "once": a double trigger, a restart or a second process
    finds the row and sends nothing. ``content`` is the snapshot taken when it started, so every resident
    reads the same agenda whenever their message goes out.
    """

    __tablename__ = "broadcasts"
    __table_args__ = (UniqueConstraint("community_id", "kind", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("communities.id"))
    kind: Mapped[str] = mapped_column(String(16))
    # "YYYY-MM": the month of the meeting (agenda), the month reported on (feedback); "t<topic id>" for a survey.
    period: Mapped[str] = mapped_column(String(7))
    scheduled_for: Mapped[datetime | None] = mapped_column(default=None)  # the schedule's time; None: sent by staff
    started_by: Mapped[int | None] = mapped_column(BigInteger, default=None)  # staff who pressed "send now"
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    # Recipients are queued building by building, each batch in its own short transaction: the last building
    # whose residents are queued, and when the last batch was (None: still being queued, resumed after a crash).
    queued_through: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queued_at: Mapped[datetime | None] = mapped_column(default=None)


class FsmRecord(Base):
    """aiogram FSM state and data, kept in the database so a half-finished wizard survives a restart."""

    __tablename__ = "fsm_states"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str | None] = mapped_column(String(100), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
