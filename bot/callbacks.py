"""Callback data for every inline button. Ids in them are untrusted: the domain checks each one."""

from enum import StrEnum

from aiogram.filters.callback_data import CallbackData


class TicketAction(StrEnum):
    OPEN = "o"
    ACCEPT = "a"
    HAND_BACK = "h"
    NOTE = "n"
    RESOLVE = "r"
    HISTORY = "y"
    ESCALATE = "e"  # up the ladder: asks where to (above the grid), then why
    SEND_DOWN = "d"  # back down the ladder, with an instruction


class TicketCb(CallbackData, prefix="t"):
    action: TicketAction
    ticket_id: int


class EscalateCb(CallbackData, prefix="e"):
    """Where to escalate a ticket: ``level`` is "community", "street" or "department" (with its code)."""

    ticket_id: int
    level: str
    department: str = ""


class CategoryCb(CallbackData, prefix="c"):
    category_id: int


class PlaceLevel(StrEnum):
    COMMUNITY = "c"
    COMPOUND = "p"
    BUILDING = "b"
    UNIT = "u"


class PlaceCb(CallbackData, prefix="p"):
    level: PlaceLevel
    id: int
    unit: int = 0


class LanguageCb(CallbackData, prefix="l"):
    code: str


class FeedbackAction(StrEnum):
    FIXED = "y"  # "Is it fixed?" — yes
    NOT_FIXED = "n"  # — no (asks why, then reopens)
    RATE = "r"  # a satisfaction rating, ``stars`` 1-5
    SKIP_COMMENT = "s"  # no comment on the rating


class FeedbackCb(CallbackData, prefix="fb"):
    action: FeedbackAction
    ticket_id: int
    stars: int = 0


class MeTooAction(StrEnum):
    JOIN = "j"  # "Me too" on a neighbour's open ticket
    DIFFERENT = "d"  # "No, mine is different": go on with the report


class MeTooCb(CallbackData, prefix="mt"):
    action: MeTooAction
    ticket_id: int = 0
