"""The picture sent with the figures: the three rates per grid this month, and the last twelve months' trend.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global figure state), in the current
locale, with the CJK font a Python package ships (bot/reports/fonts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Any

from aiogram.utils.i18n import gettext as _
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ticker import PercentFormatter

from bot.i18n import localized
from bot.reports.fonts import CJK_FONT
from bot.views.stats import RATE_NAMES, month_name
from domain.stats import MonthlyStats, Rate

CHARTED = (Rate.RESPONSE, Rate.RESOLUTION, Rate.SATISFACTION)  # the three rates communities are judged by
COLOURS = {Rate.RESPONSE: "#1f77b4", Rate.RESOLUTION: "#2ca02c", Rate.SATISFACTION: "#ff7f0e"}
MAX_GRIDS = 20  # a wider chart cannot be read on a phone: the best-ranked grids with tickets
DPI = 100

fontManager.addfont(str(CJK_FONT))
FONT_NAME = FontProperties(fname=str(CJK_FONT)).get_name()
STYLE: dict[Any, Any] = {"font.family": "sans-serif", "font.sans-serif": [FONT_NAME], "axes.unicode_minus": False}


@dataclass(frozen=True)
class ChartData:
    """Everything the chart shows, in words of the current language: equal data draw the same picture."""

    title: str
    by_grid_title: str
    nothing: str  # said when no grid had tickets
    trend_title: str
    rate_names: tuple[str, ...]  # of CHARTED, in order
    grids: tuple[str, ...]
    grid_shares: tuple[tuple[float, ...], ...]  # per rate, per grid, in %
    months: tuple[str, ...]
    month_shares: tuple[tuple[float, ...], ...]  # per rate, per month, in % (nan: nothing to count)


def chart_data(stats: MonthlyStats) -> ChartData:
    grids = [row for row in stats.grids if row.figures.received][:MAX_GRIDS]

    def percent(share: float | None) -> float:
        return float("nan") if share is None else share * 100

    return ChartData(
        title=_("{community} · {month}: the three rates").format(
            community=localized(stats.community), month=month_name(stats.month)
        ),
        by_grid_title=_("By grid (tickets received this month)"),
        nothing=_("No tickets this month."),
        trend_title=_("The last 12 months (whole community)"),
        rate_names=tuple(str(RATE_NAMES[rate]) for rate in CHARTED),
        grids=tuple(localized(row) for row in grids),
        grid_shares=tuple(tuple((row.figures.rate(rate) or 0.0) * 100 for row in grids) for rate in CHARTED),
        months=tuple(month_name(point.month) for point in stats.trend),
        month_shares=tuple(tuple(percent(point.figures.rate(rate)) for point in stats.trend) for rate in CHARTED),
    )


def build_chart(data: ChartData) -> Figure:
    """The figure itself (tests look at its texts); :func:`chart_png` draws it."""
    with rc_context(STYLE):
        figure = Figure(figsize=(8, 8), dpi=DPI)
        # A fixed layout: matplotlib's automatic one costs more than drawing the whole chart.
        by_grid, trend = figure.subplots(2, 1, gridspec_kw={"hspace": 0.42})
        figure.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.13)
        figure.suptitle(data.title)
        width = 0.8 / len(CHARTED)
        for i, rate in enumerate(CHARTED):
            positions = [g + (i - 1) * width for g in range(len(data.grids))]
            by_grid.bar(positions, data.grid_shares[i], width, label=data.rate_names[i], color=COLOURS[rate])
            trend.plot(data.months, data.month_shares[i], marker="o", label=data.rate_names[i], color=COLOURS[rate])
        by_grid.set_xticks(range(len(data.grids)), data.grids)
        by_grid.set_title(data.by_grid_title)
        if not data.grids:
            by_grid.text(0.5, 0.5, data.nothing, ha="center", va="center", transform=by_grid.transAxes)
        trend.set_title(data.trend_title)
        trend.tick_params(axis="x", labelrotation=45)
        for axes in (by_grid, trend):
            axes.set_ylim(0, 105)
            axes.yaxis.set_major_formatter(PercentFormatter())
            axes.grid(axis="y", alpha=0.3)
            axes.legend(loc="lower left", fontsize="small")
    return figure


@lru_cache(maxsize=32)
def _png(data: ChartData) -> bytes:
    """Drawn once per distinct picture: /stats pressed again for a month whose figures did not move costs
    nothing here."""
    figure = build_chart(data)
    out = BytesIO()
    with rc_context(STYLE):
        FigureCanvasAgg(figure).print_png(out)
    return out.getvalue()


def chart_png(stats: MonthlyStats) -> bytes:
    return _png(chart_data(stats))
