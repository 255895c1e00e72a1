"""What the office sees of the monthly figures (/stats and the monthly report): text, buttons, definitions.

Names of grids, workers, categories and compounds come from the community file and are escaped.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo
from html import escape

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import lazy_gettext as __

from bot.callbacks import StatsAction, StatsCb
from bot.i18n import localized
from bot.views import MESSAGE_LIMIT, local_time, visible_length
from domain.stats import Figures, Month, MonthlyStats, Rate, Row, StreetStats, View

RATE_NAMES = {
    Rate.RESPONSE: __("Response rate"),
    Rate.RESOLVED_IN_TIME: __("Resolved in time"),
    Rate.RESOLUTION: __("Resolution rate"),
    Rate.SATISFACTION: __("Satisfaction rate"),
    Rate.REOPEN: __("Reopen rate"),
}
VIEW_NAMES = {
    View.GRID: __("By grid"),
    View.WORKER: __("By worker"),
    View.CATEGORY: __("By category"),
    View.COMPOUND: __("By compound"),
}
VIEW_CODES = {View.GRID: "g", View.WORKER: "w", View.CATEGORY: "c", View.COMPOUND: "p"}


def view_of(code: str) -> View | None:
    return next((view for view, c in VIEW_CODES.items() if c == code), None)


def percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f}%"


def duration(span: timedelta | None) -> str:
    """Short and readable: minutes under an hour, hours under two days, then days."""
    if span is None:
        return "—"
    hours = span.total_seconds() / 3600
    if hours < 1:
        return _("{count} min").format(count=round(hours * 60))
    if hours < 48:
        return _("{count} h").format(count=f"{hours:.1f}".removesuffix(".0"))
    return _("{count} d").format(count=f"{hours / 24:.1f}".removesuffix(".0"))


def month_name(month: Month) -> str:
    return _("{month}/{year}").format(year=month.year, month=month.month)


def rank_change(row: Row) -> str:
    """↑2 or ↓1 places since last month, = unchanged, "new" when unranked last month."""
    change = row.rank_change
    if row.rank is None:
        return ""
    if change is None:
        return _("new")
    if change > 0:
        return f"↑{change}"
    if change < 0:
        return f"↓{-change}"
    return "="


def score(row: Row) -> str:
    value = row.figures.score
    if value is None:
        return ""
    text = _("score {score}").format(score=f"{value * 100:.1f}")
    delta = row.score_change
    if delta is not None:
        text += f" ({delta * 100:+.1f})"
    return text


def figures_line(figures: Figures) -> str:
    """Every figure of a row, in one line of short labels (definitions behind the ℹ️ button)."""
    average = "—" if figures.average_rating is None else f"{figures.average_rating:.1f}"
    return _(
        "received {received} · response {response} · in time {in_time} · resolved {resolution} · "
        "satisfied {satisfaction} (avg {average}) · reopened {reopen} · to accept {accept} · to resolve {resolve}"
        " · overdue {overdue}"
    ).format(
        received=figures.received,
        response=percent(figures.rate(Rate.RESPONSE)),
        in_time=percent(figures.rate(Rate.RESOLVED_IN_TIME)),
        resolution=percent(figures.rate(Rate.RESOLUTION)),
        satisfaction=percent(figures.rate(Rate.SATISFACTION)),
        average=average,
        reopen=percent(figures.rate(Rate.REOPEN)),
        accept=duration(figures.median_accept),
        resolve=duration(figures.median_resolve),
        overdue=figures.overdue_now,
    )


def row_title(row: Row) -> str:
    place = f"{row.rank}." if row.rank is not None else "–"
    parts = [place, f"<b>{escape(localized(row))}</b>", rank_change(row), score(row)]
    return " ".join(part for part in parts if part)


def stats_title(stats: MonthlyStats) -> str:
    return _("📊 <b>{community}</b> · {month} · {view}").format(
        community=escape(localized(stats.community)), month=month_name(stats.month), view=VIEW_NAMES[stats.view]
    )


def stats_text(stats: MonthlyStats, tz: tzinfo, footer: str | None = None) -> str:
    """The month's rows, ranked, cut to what one message can hold; ``footer`` instead of the hint at the
    definitions button (the monthly report has no buttons)."""
    head = [stats_title(stats), _("As of {time}.").format(time=local_time(stats.as_of, tz))]
    if stats.own_row_only:
        head.append(_("Your own figures: tickets you hold or held when they were resolved."))
    else:
        head += ["", _("<b>Whole community</b>"), figures_line(stats.total)]
    return _with_rows(head, stats.rows, footer or _("ℹ️ How each figure is counted: the button below."))


def _with_rows(head: list[str], ranked: list[Row], footer: str) -> str:
    """``head``, then the ranked rows, as many as one message holds, then ``footer``."""
    lines = [*head, ""]
    rows = [f"{row_title(row)}\n{figures_line(row.figures)}" for row in ranked]
    if not rows:
        lines.append(_("No tickets this month."))
    budget = MESSAGE_LIMIT - visible_length("\n".join(lines)) - 40
    shown = 0
    for text in rows:
        budget -= visible_length(text) + 2
        if budget < 0:
            break
        lines += [text, ""]
        shown += 1
    if shown < len(rows):
        lines.append(_("… and {count} more").format(count=len(rows) - shown))
    lines.append(footer)
    return "\n".join(lines).rstrip()


def street_text(stats: StreetStats, tz: tzinfo) -> str:
    """The street office's communities, one row each, ranked like the rows of a community's view."""
    head = [
        _("📊 <b>Communities ranked</b> · {month}").format(month=month_name(stats.month)),
        _("As of {time}.").format(time=local_time(stats.as_of, tz)),
        _("Each community's month in its own time zone; the change is against the month before."),
        "",
        _("<b>All your communities</b>"),
        figures_line(stats.total),
    ]
    return _with_rows(head, stats.rows, _("ℹ️ How each figure is counted: the button below."))


def street_button(month: Month) -> InlineKeyboardButton:
    """From a community's figures to the street office's ranking of all its communities, for the same month."""
    data = StatsCb(action=StatsAction.STREET, community_id=0, month=month.index)
    return InlineKeyboardButton(text=_("🏆 Communities ranked"), callback_data=data.pack())


def street_keyboard(stats: StreetStats, latest: Month) -> InlineKeyboardMarkup:
    """Month back and forth, definitions, and each community's own figures for the month."""

    def button(text: str, action: StatsAction, month: Month = stats.month, community: int = 0) -> InlineKeyboardButton:
        data = StatsCb(action=action, community_id=community, month=month.index)
        return InlineKeyboardButton(text=text, callback_data=data.pack())

    before, after = stats.month.shift(-1), stats.month.shift(1)
    months = [button("◀ " + month_name(before), StatsAction.STREET, before)]
    if stats.month < latest:
        months.append(button(month_name(after) + " ▶", StatsAction.STREET, after))
    rows = [months, [button(_("ℹ️ Definitions"), StatsAction.DEFINITIONS)]]
    rows += [[button("🏘 " + localized(c), StatsAction.SHOW, community=c.id)] for c in stats.communities]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def monthly_report_footer() -> str:
    return _("📎 The chart and the spreadsheet follow. /stats shows other views, months and how figures are counted.")


def stats_keyboard(
    stats: MonthlyStats, latest: Month, communities: list[tuple[int, str]], ranking: bool = False
) -> InlineKeyboardMarkup:
    """Month back and forth, the four views, definitions, chart, spreadsheet; other communities for the street,
    and with ``ranking`` the button to all of them ranked."""

    def button(
        text: str,
        *,
        action: StatsAction = StatsAction.SHOW,
        month: Month = stats.month,
        view: View = stats.view,
        community: int = stats.community.id,
    ) -> InlineKeyboardButton:
        data = StatsCb(action=action, community_id=community, month=month.index, view=VIEW_CODES[view])
        return InlineKeyboardButton(text=text, callback_data=data.pack())

    months = [button("◀ " + month_name(stats.month.shift(-1)), month=stats.month.shift(-1))]
    if stats.month < latest:
        months.append(button(month_name(stats.month.shift(1)) + " ▶", month=stats.month.shift(1)))
    rows = [months]
    if not stats.own_row_only:
        views = [button(("• " if v is stats.view else "") + str(VIEW_NAMES[v]), view=v) for v in View]
        rows += [views[:2], views[2:]]
    extras = [button(_("ℹ️ Definitions"), action=StatsAction.DEFINITIONS)]
    if not stats.own_row_only:
        extras += [
            button(_("📈 Chart"), action=StatsAction.CHART),
            button(_("📄 Spreadsheet"), action=StatsAction.SPREADSHEET),
        ]
    rows.append(extras)
    others = [(cid, name) for cid, name in communities if cid != stats.community.id]
    rows += [[button("🏘 " + name, community=cid)] for cid, name in others]
    if ranking:
        rows.append([street_button(stats.month)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def definitions() -> str:
    """How each figure is counted, as docs/reports.md says it, for an office to explain its numbers."""
    return "\n\n".join(
        [
            _("<b>How the figures are counted</b>"),
            _(
                "A ticket counts in the month it was received, for the grid of its building, and for whoever holds "
                "it now (for a resolved ticket, whoever resolved it), with everything that happened to it so far."
            ),
            _("<b>Received</b>: tickets filed in the month."),
            _(
                "<b>Response rate</b>: tickets first accepted within the category's time to accept, counted from "
                "filing, over received. Hand-backs and escalations do not restart the clock."
            ),
            _(
                "<b>Resolved in time</b>: tickets resolved within the category's time to resolve, counted from "
                "filing to the latest resolution, over received."
            ),
            _(
                "<b>Resolution rate</b>: tickets closed with the resident's confirmation, over received. Tickets "
                "closed because nobody answered are not counted."
            ),
            _("<b>Satisfaction rate</b>: ratings of 4 or 5 stars over tickets rated; the average rating beside it."),
            _("<b>Reopen rate</b>: tickets a resident reopened at least once, over tickets resolved at least once."),
            _(
                "<b>To accept / to resolve</b>: the median time from filing to the first acceptance, and to the "
                "latest resolution."
            ),
            _("<b>Overdue</b>: the month's tickets still open and past their deadline now (red in /ledger)."),
            _(
                "<b>Rank and score</b>: the score is the mean of the response, resolution and satisfaction rates; "
                "↑ ↓ show places moved since last month, the number in brackets the change of the score."
            ),
            _(
                "<b>Communities ranked</b> (the street office): each community's month, counted as its own figures "
                "are, in its own time zone, ranked by the same score."
            ),
        ]
    )
