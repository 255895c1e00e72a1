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


class TicketCb(CallbackData, prefix="t"):
    action: TicketAction
    ticket_id: int


class CategoryCb(CallbackData, prefix="c"):
    category_id: int


class ReportStep(StrEnum):
    SUBMIT = "s"
    CANCEL = "x"


class ReportCb(CallbackData, prefix="r"):
    step: ReportStep


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
