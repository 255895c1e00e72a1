"""/stats: the month's figures for community staff and the street office; a grid worker sees their own row."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from aiogram import Router
from aiogram.types import BufferedInputFile, CallbackQuery, InlineKeyboardMarkup, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import StatsAction, StatsCb
from bot.filters import Command
from bot.i18n import localized
from bot.views import stats as sv
from domain.clock import Clock
from domain.errors import AccessDenied, DomainError
from domain.people import Person
from domain.stats import (
    Month,
    MonthCache,
    MonthlyStats,
    View,
    month_report,
    monthly_stats,
    stats_communities,
    street_communities,
    street_stats,
)
from handlers.common import Screen, chat_of, replace

router = Router(name="stats")


def _refused() -> str:
    return _("Sorry, the figures are only for community staff, the street office, and grid workers (their own).")


async def _render(
    session: AsyncSession, user: Person, stats: MonthlyStats, clock: Clock
) -> tuple[str, InlineKeyboardMarkup]:
    communities = [(c.id, localized(c)) for c in await stats_communities(session, viewer_id=user.id)]
    # The ranking of communities against each other: for a street office serving more than one.
    ranking = len(await street_communities(session, viewer_id=user.id)) > 1
    latest = Month.of(clock(), stats.community.timezone)
    tz = ZoneInfo(stats.community.timezone)
    return sv.stats_text(stats, tz), sv.stats_keyboard(stats, latest, communities, ranking)


async def _street(
    session: AsyncSession, user: Person, month: Month, clock: Clock, cache: MonthCache
) -> tuple[str, InlineKeyboardMarkup]:
    """The street office's communities ranked (refused in the domain to everyone else)."""
    stats = await street_stats(session, viewer_id=user.id, month=month, now=clock(), cache=cache)
    latest = max(Month.of(clock(), c.timezone) for c in stats.communities)
    tz = ZoneInfo(stats.communities[0].timezone)
    return sv.street_text(stats, tz), sv.street_keyboard(stats, latest)


async def _send_chart(screen: Screen, stats: MonthlyStats) -> None:
    # Imported when first drawn, not at start-up: matplotlib alone is most of a second (docs/delivery.md).
    from bot.reports.chart import chart_png

    await screen.answer_photo(BufferedInputFile(chart_png(stats), filename=f"stats-{stats.month}.png"))


@router.message(Command("stats"))
async def show_stats(
    message: Message, session: AsyncSession, user: Person, clock: Clock, stats_cache: MonthCache
) -> None:
    try:
        stats = await monthly_stats(
            session,
            viewer_id=user.id,
            community_id=None,
            month=None,
            view=View.GRID,
            now=clock(),
            cache=stats_cache,
        )
    except AccessDenied:
        await message.answer(_refused())
        return
    text, keyboard = await _render(session, user, stats, clock)
    await message.answer(text, reply_markup=keyboard)
    if not stats.own_row_only:
        await _send_chart(message, stats)


@router.callback_query(StatsCb.filter())
async def stats_button(
    query: CallbackQuery,
    callback_data: StatsCb,
    session: AsyncSession,
    user: Person,
    clock: Clock,
    yellow_share: float,
    stats_cache: MonthCache,
) -> None:
    screen = chat_of(query)
    view = sv.view_of(callback_data.view)
    if callback_data.action is StatsAction.DEFINITIONS:
        await query.answer()
        await screen.answer(sv.definitions())
        return
    try:
        if callback_data.action is StatsAction.STREET:
            text, keyboard = await _street(session, user, Month.from_index(callback_data.month), clock, stats_cache)
            await query.answer()
            await replace(screen, text, keyboard)
            return
        if view is None:
            raise AccessDenied(callback_data.view)
        stats = await monthly_stats(
            session,
            viewer_id=user.id,
            community_id=callback_data.community_id,
            month=Month.from_index(callback_data.month),
            view=view,
            now=clock(),
            cache=stats_cache,
        )
        if stats.own_row_only and callback_data.action is not StatsAction.SHOW:
            raise AccessDenied("own row only")
        await query.answer()
        match callback_data.action:
            case StatsAction.SHOW:
                text, keyboard = await _render(session, user, stats, clock)
                await replace(screen, text, keyboard)
            case StatsAction.CHART:
                await _send_chart(screen, stats)
            case StatsAction.SPREADSHEET:
                report = await month_report(
                    session,
                    viewer_id=user.id,
                    community_id=stats.community.id,
                    month=stats.month,
                    now=clock(),
                    yellow_share=yellow_share,
                )
                from bot.reports.spreadsheet import month_workbook, spreadsheet_name  # openpyxl: see _send_chart

                workbook = month_workbook(report)
                await screen.answer_document(BufferedInputFile(workbook, filename=spreadsheet_name(stats)))
    except AccessDenied:
        await query.answer(_refused(), show_alert=True)
    except DomainError as error:
        await query.answer(views.refusal(error), show_alert=True)
