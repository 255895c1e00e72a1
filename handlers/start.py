"""/start: greeting, and binding a resident to their building (deep link or buttons). /home is in households.py."""

from __future__ import annotations

from html import escape

from aiogram import Router
from aiogram.filters import CommandObject, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import PlaceCb, PlaceLevel
from bot.i18n import localized
from bot.views import households as household_views
from domain import menus, people
from domain.clock import Clock
from domain.directory import Directory
from domain.errors import NotFound
from domain.people import Person
from handlers.common import Screen, chat_of, replace, show_menu
from storage.models import Building

router = Router(name="start")


@router.message(CommandStart(deep_link=True))
async def start_from_qr(
    message: Message, command: CommandObject, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    await state.clear()
    building = await people.building_by_link(session, command.args or "")
    if building is None:
        await message.answer(_("This QR code is not known (any more). Please choose your building:"))
        await offer_places(message, session)
        return
    await _bind_or_ask_unit(message, session, user, clock, building)


@router.message(CommandStart())
async def start(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, directory: Directory, clock: Clock
) -> None:
    await state.clear()
    if user.is_worker:  # greeted as a worker, with their menu; not asked where they live
        await show_menu(message, user, views.worker_greeting())
        # Their "/" menu again: Telegram cannot take it for a chat never started, and only now may the bot
        # know their client's language.
        await menus.queue_menus(session, clock(), [user.id], again=True)
        return
    home = await directory.home(session, user)
    if home is None:
        await message.answer(
            _(
                "Hello! I am your community's feedback bot. Tell me about a problem in your building and I "
                "will pass it straight to your grid worker and keep you posted.\n\nFirst, where do you live?"
            )
        )
        await offer_places(message, session)
        return
    await show_menu(
        message,
        user,
        _("Welcome back! You live in {place}. Press “Report a problem” whenever something is wrong.").format(
            place=escape(views.place_label(home, user.unit))
        ),
    )


async def offer_places(message: Screen, session: AsyncSession) -> None:
    communities = await people.list_communities(session)
    if len(communities) == 1:
        markup = await _compounds_keyboard(session, communities[0].id)
        await message.answer(_("Choose your compound:"), reply_markup=markup)
        return
    keyboard = views.inline_keyboard(
        [(localized(c), PlaceCb(level=PlaceLevel.COMMUNITY, id=c.id)) for c in communities], width=1
    )
    await message.answer(_("Choose your community:"), reply_markup=keyboard)


async def _compounds_keyboard(session: AsyncSession, community_id: int) -> InlineKeyboardMarkup:
    compounds = await people.list_compounds(session, community_id)
    return views.inline_keyboard([(localized(c), PlaceCb(level=PlaceLevel.COMPOUND, id=c.id)) for c in compounds])


@router.callback_query(PlaceCb.filter())
async def choose_place(
    query: CallbackQuery, callback_data: PlaceCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    screen = chat_of(query)
    await query.answer()
    match callback_data.level:
        case PlaceLevel.COMMUNITY:
            markup = await _compounds_keyboard(session, callback_data.id)
            await replace(screen, _("Choose your compound:"), markup)
        case PlaceLevel.COMPOUND:
            buildings = await people.list_buildings(session, callback_data.id)
            keyboard = views.inline_keyboard(
                [(localized(b), PlaceCb(level=PlaceLevel.BUILDING, id=b.id)) for b in buildings], width=4
            )
            await replace(screen, _("Choose your building:"), keyboard)
        case PlaceLevel.BUILDING:
            try:
                building = await people.get_building(session, callback_data.id)
            except NotFound:
                await replace(screen, _("Sorry, you cannot open this."))
                return
            await _bind_or_ask_unit(screen, session, user, clock, building, edit=True)
        case PlaceLevel.UNIT:
            await _bind(screen, session, user, clock, callback_data.id, callback_data.unit)


async def _bind_or_ask_unit(
    message: Screen, session: AsyncSession, user: Person, clock: Clock, building: Building, edit: bool = False
) -> None:
    if building.units <= 1:
        await _bind(message, session, user, clock, building.id, None)
        return
    keyboard = views.inline_keyboard(
        [
            (_("Unit {unit}").format(unit=unit), PlaceCb(level=PlaceLevel.UNIT, id=building.id, unit=unit))
            for unit in range(1, building.units + 1)
        ],
        width=4,
    )
    text = _("{building}: which unit (entrance) do you live in?").format(
        building=escape(views.place_label(building, None))
    )
    if edit:
        await replace(message, text, keyboard)
    else:
        await message.answer(text, reply_markup=keyboard)


async def _bind(
    message: Screen, session: AsyncSession, user: Person, clock: Clock, building_id: int, unit: int | None
) -> None:
    try:
        building = await people.bind_resident(session, user.id, building_id, unit, clock())
    except NotFound:
        await message.answer(_("Sorry, you cannot open this."))
        return
    await show_menu(
        message,
        user,
        _("Saved: you live in {place}. Now press “Report a problem” whenever something is wrong.").format(
            place=escape(views.place_label(building, unit))
        )
        + "\n"
        + household_views.verify_hint(),
    )
