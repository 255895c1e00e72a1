"""The chart: drawn headless, in both languages, every character with a glyph of the packaged CJK font."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest
from matplotlib.font_manager import findfont
from matplotlib.text import Text

from bot.app import draw_charts_ahead
from bot.i18n import create_i18n
from bot.reports import chart
from bot.reports.chart import FONT_NAME, STYLE, _png, build_chart, chart_data, chart_png
from bot.reports.fonts import CJK_FONT, missing_glyphs
from domain.stats import CommunityRef, Figures, Month, MonthlyStats, Row, TrendPoint, View, monthly_stats
from storage.db import SessionFactory
from tests.test_stats import NOW, STAFF_WANG, october  # noqa: F401  (the story, a fixture)

OCTOBER = Month(2026, 10)


def sample_stats() -> MonthlyStats:
    grids = [
        Row(
            1, "第一网格", "Grid 1", Figures(received=12, accepted_in_time=10, closed_confirmed=8, rated=6, satisfied=5)
        ),
        Row(2, "第二网格", "Grid 2", Figures(received=7, accepted_in_time=7, closed_confirmed=3, rated=2, satisfied=1)),
        Row(3, "第三网格", "Grid 3", Figures()),
    ]
    trend = [
        TrendPoint(
            OCTOBER.shift(-i), Figures(received=10 + i, accepted_in_time=8, closed_confirmed=6, rated=4, satisfied=3)
        )
        for i in reversed(range(12))
    ]
    community = CommunityRef(1, "jsx", "建设巷社区", "Jianshexiang Community", "Asia/Shanghai")
    total = Figures(received=19, accepted_in_time=17, median_accept=timedelta(hours=2))
    return MonthlyStats(
        community, OCTOBER, View.GRID, grids, total, datetime(2026, 11, 5, tzinfo=UTC), grids=grids, trend=trend
    )


@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_no_glyph_falls_back_to_a_box(locale: str) -> None:
    i18n = create_i18n()
    _png.cache_clear()  # drawn here, not taken from an earlier test
    with i18n.context(), i18n.use_locale(locale), warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph … missing from font(s)" for every box it draws
        figure = build_chart(chart_data(sample_stats()))
        png = chart_png(sample_stats())
    assert png.startswith(b"\x89PNG")
    texts = "".join(t.get_text() for t in figure.findobj(Text))
    assert ("网格" in texts) == (locale == "zh_CN") and ("Grid 1" in texts) == (locale == "en")
    assert missing_glyphs(texts) == ""


def test_a_missing_glyph_is_noticed() -> None:
    """Both checks above can fail: a character the font lacks is named, and drawing it warns."""
    from io import BytesIO

    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert missing_glyphs("第一网格 𓀀") == "𓀀"
    with rc_context(STYLE), pytest.warns(UserWarning, match="missing from font"):
        figure = Figure()
        figure.suptitle("第一网格 𓀀")
        FigureCanvasAgg(figure).print_png(BytesIO())


def test_the_font_is_the_packaged_one_not_a_system_font() -> None:
    from matplotlib import rc_context

    with rc_context(STYLE):
        assert findfont(FONT_NAME) == str(CJK_FONT)
    assert "site-packages" in str(CJK_FONT) and CJK_FONT.is_file()


def test_new_figures_drawn_over_the_kept_picture_look_like_a_chart_drawn_whole() -> None:
    """The words are drawn once and kept; other figures with the same words are drawn over them. The result must
    be the very picture matplotlib draws from scratch, pixel for pixel (bars under the frame, legends on top)."""
    from dataclasses import replace
    from io import BytesIO

    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image, ImageChops

    first = sample_stats()
    changed = replace(
        first,
        grids=[replace(row, figures=replace(row.figures, closed_confirmed=1)) for row in first.grids],
        trend=[
            TrendPoint(p.month, replace(p.figures, satisfied=1, rated=4 if i % 3 else 0))
            for i, p in enumerate(first.trend)
        ],
    )
    i18n = create_i18n()
    with i18n.context(), i18n.use_locale("zh_CN"):
        _png.cache_clear()
        chart_png(first)  # keeps the picture of these words
        over_kept = Image.open(BytesIO(chart_png(changed))).convert("RGB")
        whole = BytesIO()
        with rc_context(STYLE):
            FigureCanvasAgg(build_chart(chart_data(changed))).print_png(whole)
        assert chart_data(changed).words == chart_data(first).words
    assert ImageChops.difference(over_kept, Image.open(whole).convert("RGB")).getbbox() is None


@pytest.mark.usefixtures("october")
async def test_last_months_charts_are_drawn_ahead_for_the_first_stats_after_a_start(
    session_factory: SessionFactory,
) -> None:
    """A while after a start the bot draws each community's chart of last month: staff's first /stats then finds
    its words drawn (most of a new chart's cost) and only draws the figures over them."""
    chart._kept.clear()
    i18n = create_i18n("zh_CN")
    await draw_charts_ahead(session_factory, lambda: NOW, i18n, "zh_CN")  # as the bot's start schedules it
    async with session_factory() as session:
        stats = await monthly_stats(
            session, viewer_id=STAFF_WANG, community_id=None, month=None, view=View.GRID, now=NOW
        )
    assert stats.month == OCTOBER and stats.total.received == 6
    with i18n.context(), i18n.use_locale("zh_CN"):
        assert list(chart._kept) == [chart_data(stats).words]
        chart_png(stats)
    assert len(chart._kept) == 1, "nothing new was drawn for staff's /stats"
