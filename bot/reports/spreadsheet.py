"""The month in one .xlsx file: the month's tickets, the ledger now, and the rate tables, one sheet each.

Headers and words are in the current locale (Chinese by default); columns are as wide as their longest cell,
counting a Chinese character as two. Written in openpyxl's write-only mode: a large community's month is tens
of thousands of rows. Never who reported a ticket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from io import BytesIO
from typing import Any
from unicodedata import east_asian_width
from zoneinfo import ZoneInfo

from aiogram.utils.i18n import gettext as _
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from bot.i18n import localized
from bot.views import status_label
from bot.views.ladder import COLOUR_MARKS
from bot.views.stats import RATE_NAMES, VIEW_NAMES, duration, rank_change
from domain.stats import Figures, MonthlyStats, MonthReport, Rate, TicketLine, View
from storage.models import Level

MAX_WIDTH = 60
BOLD = Font(bold=True)


def spreadsheet_name(stats: MonthlyStats) -> str:
    return f"{stats.community.code}-{stats.month}.xlsx"


def level_label(level: str, department: str | None = None) -> str:
    return {
        Level.GRID: _("grid"),
        Level.COMMUNITY: _("community office"),
        Level.STREET: _("street office"),
        Level.DEPARTMENT: _("department"),
    }.get(Level(level), level) + (f" ({department})" if department else "")


def _width(value: Any) -> int:
    text = "" if value is None else str(value)
    return sum(2 if east_asian_width(ch) in "WF" else 1 for ch in text)


def _sheet(workbook: Workbook, title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A sheet with bold headers, frozen under them, each column as wide as its widest cell."""
    rows = list(rows)
    sheet: WriteOnlyWorksheet = workbook.create_sheet(title)
    for column, header in enumerate(headers, start=1):
        widest = max([_width(header), *(_width(row[column - 1]) for row in rows)])
        sheet.column_dimensions[get_column_letter(column)].width = min(widest + 2, MAX_WIDTH)
    sheet.freeze_panes = "A2"
    header_cells = []
    for header in headers:
        cell = WriteOnlyCell(sheet, value=header)
        cell.font = BOLD
        header_cells.append(cell)
    sheet.append(header_cells)
    for row in rows:
        sheet.append(list(row))


def _time(moment: datetime | None, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M") if moment else ""


def _ticket_row(line: TicketLine, tz: tzinfo) -> list[Any]:
    return [
        line.id,
        localized(line.category),
        localized(line.compound),
        localized(line.building),
        line.unit or "",
        localized(line.grid),
        line.assignee,
        _time(line.created_at, tz),
        _time(line.first_accepted_at, tz),
        _time(line.resolved_at, tz),
        _time(line.closed_at, tz),
        status_label(line.status),
        line.rating or "",
        line.reopen_count,
        line.handed_back,
        " → ".join(level_label(level) for level in line.path),
    ]


def _ticket_headers() -> list[str]:
    return [
        _("Number"),
        _("Category"),
        _("Compound"),
        _("Building"),
        _("Unit"),
        _("Grid"),
        _("Assignee"),
        _("Received"),
        _("First accepted"),
        _("Resolved"),
        _("Closed"),
        _("Status"),
        _("Rating"),
        _("Reopened"),
        _("Handed back"),
        _("Path through the ladder"),
    ]


def _ledger_row(line: TicketLine, tz: tzinfo) -> list[Any]:
    return [
        COLOUR_MARKS[line.colour] if line.colour else "",
        line.id,
        localized(line.grid),
        localized(line.category),
        f"{localized(line.compound)} {localized(line.building)}",
        line.assignee,
        level_label(line.level, line.department),
        status_label(line.status),
        _time(line.created_at, tz),
        _time(line.due, tz),
    ]


def _rate_headers(view: View) -> list[str]:
    first = {View.GRID: _("Grid"), View.WORKER: _("Worker"), View.CATEGORY: _("Category"), View.COMPOUND: _("Compound")}
    return [
        _("Rank"),
        _("Change"),
        first[view],
        _("Score"),
        _("Tickets received"),
        *(str(RATE_NAMES[rate]) for rate in Rate),
        _("Average rating"),
        _("Median time to accept"),
        _("Median time to resolve"),
        _("Overdue now"),
    ]


def _share(value: float | None) -> float | str:
    return "" if value is None else round(value * 100, 1)


def _rate_row(rank: int | str, change: str, name: str, figures: Figures) -> list[Any]:
    return [
        rank,
        change,
        name,
        _share(figures.score),
        figures.received,
        *(_share(figures.rate(rate)) for rate in Rate),
        "" if figures.average_rating is None else round(figures.average_rating, 2),
        duration(figures.median_accept) if figures.median_accept else "",
        duration(figures.median_resolve) if figures.median_resolve else "",
        figures.overdue_now,
    ]


def _rate_rows(stats: MonthlyStats) -> list[list[Any]]:
    rows = [_rate_row(row.rank or "", rank_change(row), localized(row), row.figures) for row in stats.rows]
    return [*rows, _rate_row("", "", _("Whole community"), stats.total)]


def month_workbook(report: MonthReport) -> bytes:
    """The .xlsx file: tickets of the month, the ledger now, then one sheet of rates per view (rates in %)."""
    by_grid = report.stats[View.GRID]
    tz = ZoneInfo(by_grid.community.timezone)
    workbook = Workbook(write_only=True)
    _sheet(
        workbook,
        _("Tickets {month}").format(month=str(by_grid.month)),
        _ticket_headers(),
        (_ticket_row(line, tz) for line in report.tickets),
    )
    _sheet(
        workbook,
        _("Ledger now"),
        [
            _("Colour"),
            _("Number"),
            _("Grid"),
            _("Category"),
            _("Building"),
            _("Assignee"),
            _("Level"),
            _("Status"),
            _("Received"),
            _("Due"),
        ],
        (_ledger_row(line, tz) for line in report.open_now),
    )
    for view, stats in report.stats.items():
        _sheet(workbook, str(VIEW_NAMES[view]), _rate_headers(view), _rate_rows(stats))
    out = BytesIO()
    workbook.save(out)
    return out.getvalue()
