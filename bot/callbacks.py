"""Callback data for every inline button. Ids in them are untrusted: the domain checks each one."""

from enum import StrEnum
from typing import Annotated

from aiogram.filters.callback_data import CallbackData
from pydantic import Field

# Every number in a button is bounded to the Integer column it is looked up in: 32 bits on PostgreSQL, where
# a larger one makes the query itself fail (and past 64 bits, on SQLite too). Forged data outside the range
# does not unpack, so no handler runs and the button is answered as out of date (handlers/fallback.py).
INT_MAX = 2**31 - 1
RowId = Annotated[int, Field(ge=0, le=INT_MAX)]  # 0 stands for "none" where the field has a default


class TicketAction(StrEnum):
    OPEN = "o"
    ACCEPT = "a"
    HAND_BACK = "h"
    NOTE = "n"
    RESOLVE = "r"
    HISTORY = "y"
    ESCALATE = "e"  # up the ladder: asks where to (above the grid), then why
    SEND_DOWN = "d"  # back down the ladder, with an instruction
    DELIBERATE = "v"  # "needs deliberation": take the ticket to the monthly meeting (asks why)


class TicketCb(CallbackData, prefix="t"):
    action: TicketAction
    ticket_id: RowId


class EscalateCb(CallbackData, prefix="e"):
    """Where to escalate a ticket: ``level`` is "community", "street" or "department" (with its code)."""

    ticket_id: RowId
    level: str
    department: str = ""


class CategoryCb(CallbackData, prefix="c"):
    category_id: RowId


class PlaceLevel(StrEnum):
    COMMUNITY = "c"
    COMPOUND = "p"
    BUILDING = "b"
    UNIT = "u"


class PlaceCb(CallbackData, prefix="p"):
    level: PlaceLevel
    id: RowId
    unit: RowId = 0


class LanguageCb(CallbackData, prefix="l"):
    code: str


class FeedbackAction(StrEnum):
    FIXED = "y"  # "Is it fixed?" — yes
    NOT_FIXED = "n"  # — no (asks why, then reopens)
    RATE = "r"  # a satisfaction rating, ``stars`` 1-5
    COMMENT = "c"  # "add a comment" to one's rating (asks for it)


class FeedbackCb(CallbackData, prefix="fb"):
    action: FeedbackAction
    ticket_id: RowId
    stars: Annotated[int, Field(ge=0, le=INT_MAX)] = 0  # the domain takes 1-5; 0 with the other actions


class MeTooAction(StrEnum):
    JOIN = "j"  # "Me too" on a neighbour's open ticket
    DIFFERENT = "d"  # "No, mine is different": go on with the report


class MeTooCb(CallbackData, prefix="mt"):
    action: MeTooAction
    ticket_id: RowId = 0


class TopicAction(StrEnum):
    """What staff do with a deliberation topic; each button carries the topic id, checked on the server."""

    OPEN = "o"  # show the topic with its history and the actions of its current step
    ACCEPT = "a"  # accept the bot's candidate as a topic
    DISMISS = "x"  # set aside, with a reason
    DRAFT = "d"  # write title, background and options
    OPEN_SURVEY = "s"
    RESULTS = "r"  # the survey's results so far
    RECORD_VOTE = "v"  # the meeting's decision and vote
    ADD_TASK = "t"
    PROGRESS = "p"  # a task's progress (``task_id``)
    FEEDBACK = "f"
    NOTICE = "n"  # publicly noticed: the last step


class TopicCb(CallbackData, prefix="tp"):
    action: TopicAction
    topic_id: RowId
    task_id: RowId = 0


class SurveyCb(CallbackData, prefix="sv"):
    """A resident's survey button: ``option`` -1 shows the topic and its options, 0.. votes for that option."""

    topic_id: RowId
    option: Annotated[int, Field(ge=-1, le=INT_MAX)] = -1


class BroadcastAction(StrEnum):
    PREVIEW = "v"  # staff see the broadcast as residents would
    SEND_NOW = "s"
    PROGRESS = "p"  # sent / failed / remaining, and who cannot be reached


class BroadcastCb(CallbackData, prefix="bc"):
    action: BroadcastAction
    kind: str  # storage.models.BroadcastKind
    broadcast_id: RowId = 0


class SettingsAction(StrEnum):
    BROADCASTS_ON = "on"
    BROADCASTS_OFF = "off"
    PUBLIC_COPY_ON = "pon"  # a private copy of the execution feedback the community posts in its public chat
    PUBLIC_COPY_OFF = "poff"


class SettingsCb(CallbackData, prefix="st"):
    action: SettingsAction


class StatsAction(StrEnum):
    SHOW = "s"  # the figures of ``month`` in ``view`` (also: the month buttons, the view buttons)
    DEFINITIONS = "d"  # how each figure is counted
    CHART = "c"  # the rates per grid and the twelve months' trend, as a picture
    SPREADSHEET = "x"  # the month's tickets, the ledger and the rate tables, as an .xlsx file
    STREET = "r"  # the street office's communities ranked for ``month`` (``community_id`` and ``view`` unused)


class StatsCb(CallbackData, prefix="ss"):
    """/stats: ``month`` is domain.stats.Month.index; ``view`` one letter of bot.views.stats.VIEW_CODES."""

    action: StatsAction
    community_id: RowId
    month: RowId
    view: str = "g"


class HouseholdAction(StrEnum):
    """Households: the resident's /home buttons, the grid worker's requests, staff's buildings."""

    VERIFY = "v"  # a resident starts verifying their household
    MOVE = "m"  # a resident changes their building
    OPEN = "o"  # a grid worker opens a verification request (``id``)
    APPROVE = "a"  # … and verifies it
    DECLINE = "d"  # … or declines it (asks why)
    BUILDING = "b"  # staff open a building's verified residents (``id`` the building)
    REVOKE = "r"  # staff revoke a verification (``id``; asks why)


class HouseholdCb(CallbackData, prefix="hh"):
    action: HouseholdAction
    id: RowId = 0
