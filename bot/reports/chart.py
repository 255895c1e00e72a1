"""The picture sent with the figures: the three rates per grid this month, and the last twelve months' trend.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global figure state), in the current
locale, with the CJK font a Python package ships (bot/reports/fonts.py).

Building a figure and laying out its texts (titles, ticks, legends) is most of matplotlib's cost, and those
change only with the words: the community, the month, the grids' names and the language. So the picture
without its data is drawn once per set of words and kept as pixels; a chart whose figures changed restores
those pixels and draws only the bars, the lines and the legends over them (matplotlib's blitting).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from functools import lru_cache
from io import BytesIO
from threading import Lock
from typing import Any

from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _
from matplotlib import rc_context
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from PIL import Image

from bot.i18n import localized
from bot.reports.fonts import CJK_FONT
from bot.views.stats import RATE_NAMES, month_name
from domain.stats import MonthlyStats, Rate, View, all_communities, community_stats, last_complete_month
from storage.db import SessionFactory

CHARTED = (Rate.RESPONSE, Rate.RESOLUTION, Rate.SATISFACTION)  # the three rates communities are judged by
COLOURS = {Rate.RESPONSE: "#1f77b4", Rate.RESOLUTION: "#2ca02c", Rate.SATISFACTION: "#ff7f0e"}
MAX_GRIDS = 20  # a wider chart cannot be read on a phone: the best-ranked grids with tickets
DPI = 100
SIZE = (7, 7)  # inches at DPI: 700 × 700 pixels, as wide as a phone shows a photo without zooming
KEPT = 8  # pictures without data kept (about 4 MB each: canvas and copy): one per community, month and language on show

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
    months: tuple[str, ...]
    grid_shares: tuple[tuple[float, ...], ...]  # per rate, per grid, in %
    month_shares: tuple[tuple[float, ...], ...]  # per rate, per month, in % (nan: nothing to count)

    @property
    def words(self) -> tuple[Any, ...]:
        """What the picture without its data depends on: every field but the shares."""
        return tuple(getattr(self, f.name) for f in fields(self) if not f.name.endswith("_shares"))


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


@dataclass
class _Drawn:
    figure: Figure
    bars: list[BarContainer]  # per rate
    lines: list[Line2D]  # per rate
    legends: list[Artist]

    @property
    def data_artists(self) -> list[Artist]:
        """Drawn over the words, in the order matplotlib draws them (by zorder): the axes' frames over the bars'
        feet, the legends over everything, as in a chart drawn whole."""
        spines = [spine for axes in self.figure.axes for spine in axes.spines.values()]
        return [*(bar for bars in self.bars for bar in bars), *self.lines, *spines, *self.legends]


def _draw(data: ChartData) -> _Drawn:
    with rc_context(STYLE):
        figure = Figure(figsize=SIZE, dpi=DPI)
        # A fixed layout: matplotlib's automatic one costs more than drawing the whole chart.
        by_grid, trend = figure.subplots(2, 1, gridspec_kw={"hspace": 0.42})
        figure.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.14)
        figure.suptitle(data.title)
        width = 0.8 / len(CHARTED)
        bars, lines = [], []
        for i, rate in enumerate(CHARTED):
            positions = [g + (i - 1) * width for g in range(len(data.grids))]
            bars.append(
                by_grid.bar(positions, data.grid_shares[i], width, label=data.rate_names[i], color=COLOURS[rate])
            )
            lines += trend.plot(
                data.months, data.month_shares[i], marker="o", label=data.rate_names[i], color=COLOURS[rate]
            )
        by_grid.set_xticks(range(len(data.grids)), data.grids)
        by_grid.set_title(data.by_grid_title)
        if not data.grids:
            by_grid.text(0.5, 0.5, data.nothing, ha="center", va="center", transform=by_grid.transAxes)
        trend.set_title(data.trend_title)
        trend.tick_params(axis="x", labelrotation=45)
        legends: list[Artist] = []
        for axes in (by_grid, trend):
            axes.set_ylim(0, 105)
            axes.set_axisbelow(True)  # the grid lines under the bars, in a drawn picture as in a kept one
            axes.yaxis.set_major_formatter(PercentFormatter())
            axes.grid(axis="y", alpha=0.3)
            legends.append(axes.legend(loc="lower left", fontsize="small"))
    return _Drawn(figure, bars, lines, legends)


def build_chart(data: ChartData) -> Figure:
    """The figure itself, data and all (tests look at its texts); :func:`chart_png` draws it."""
    return _draw(data).figure


class _Kept:
    """A chart's picture without its data, kept as pixels, and the artists that draw the data over it."""

    def __init__(self, data: ChartData) -> None:
        self.drawn = _draw(data)
        for artist in self.drawn.data_artists:
            artist.set_animated(True)  # left out of the canvas's own drawing
        self.canvas = FigureCanvasAgg(self.drawn.figure)
        with rc_context(STYLE):
            self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.drawn.figure.bbox)
        self.lock = Lock()  # one picture at a time on this canvas

    def png(self, grid_shares: Sequence[Sequence[float]], month_shares: Sequence[Sequence[float]]) -> bytes:
        with self.lock, rc_context(STYLE):  # the legends find their font as they are drawn
            self.canvas.restore_region(self.background)
            for bars, shares in zip(self.drawn.bars, grid_shares, strict=True):
                for bar, share in zip(bars, shares, strict=True):
                    bar.set_height(share)
            for line, shares in zip(self.drawn.lines, month_shares, strict=True):
                line.set_ydata(shares)
            renderer = self.canvas.get_renderer()
            for artist in self.drawn.data_artists:
                artist.draw(renderer)
            width, height = self.canvas.get_width_height()
            image = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
            out = BytesIO()
            # RGB (the chart has no transparency) at a light compression: writing the PNG is most of what is left
            # (44 ms against the default level's 65 ms at load 6, for the same 64 kB).
            image.convert("RGB").save(out, format="png", compress_level=1)
        return out.getvalue()


_kept: OrderedDict[tuple[Any, ...], _Kept] = OrderedDict()  # by the words, the latest used last


def _kept_for(data: ChartData) -> _Kept:
    kept = _kept.get(data.words)
    if kept is None:
        kept = _kept[data.words] = _Kept(data)
        if len(_kept) > KEPT:
            _kept.popitem(last=False)
    _kept.move_to_end(data.words)
    return kept


@lru_cache(maxsize=32)
def _png(data: ChartData) -> bytes:
    """Drawn once per distinct picture: /stats pressed again for a month whose figures did not move costs
    nothing here."""
    return _kept_for(data).png(data.grid_shares, data.month_shares)


def chart_png(stats: MonthlyStats) -> bytes:
    return _png(chart_data(stats))


async def draw_ahead(sessions: SessionFactory, now: datetime, i18n: I18n, locale: str) -> int:
    """A while after a start: the chart of each community's last complete month, by grid, in the bot's default
    language, drawn once. Drawing a chart's words is most of a new chart's cost, so the office's first /stats
    after a restart then only draws its figures over them. Half the kept pictures at most: the other half is
    for what people ask for. Returns how many were drawn."""
    async with sessions() as session:
        communities = (await all_communities(session))[: KEPT // 2]
    for community in communities:
        async with sessions() as session:
            stats = await community_stats(
                session,
                community_id=community.id,
                month=last_complete_month(now, community.timezone),
                view=View.GRID,
                now=now,
            )
        with i18n.context(), i18n.use_locale(locale):
            chart_png(stats)
        await asyncio.sleep(0)  # updates waiting get the loop between two pictures
    return len(communities)
