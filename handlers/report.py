"""/report: the resident's wizard — category, description, photos and location, confirmation, ticket.

The wizard's state lives in the FSM storage (the database by default), so it survives a restart.
"""

from __future__ import annotations

from datetime import tzinfo
from html import escape
from typing import Any

from aiogram import Router
from aiogram.enums import ContentType
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import CategoryCb
from bot.filters import Button, Command, Content, Typed
from bot.i18n import localized
from bot.views import feedback as feedback_views
from domain import followers, tickets
from domain.categories import suggest_category
from domain.clock import Clock
from domain.directory import Directory
from domain.errors import DomainError, NotBound, NotFound
from domain.people import Person
from handlers.common import Screen, chat_of, replace, show_menu
from handlers.start import offer_places

router = Router(name="report")


class ReportWizard(StatesGroup):
    category = State()
    description = State()
    photos = State()
    confirm = State()


@router.message(Command("report"))
@router.message(Button(views.MENU_REPORT))
async def begin(message: Message, state: FSMContext, session: AsyncSession, user: Person, directory: Directory) -> None:
    await start_wizard(message, state, session, user, directory)


async def start_wizard(
    message: Message,
    state: FSMContext,
    session: AsyncSession,
    user: Person,
    directory: Directory,
    first: Message | None = None,
) -> None:
    """Open the wizard. What a resident sent without /report (``first``) starts it: text becomes the
    description; a photo is the report's first photo, and its caption the description."""
    home = await directory.home(session, user)
    if home is None:
        await message.answer(views.refusal(NotBound()))
        await offer_places(message, session)
        return
    description = None
    first_text = first.text if first is not None and not first.photo else None
    if first_text is not None:
        description = await _description(message, first_text)
        if description is None:
            return  # refused (blank or too long), and no wizard is left open: their next text starts afresh
    community_id = home.compound.community_id
    await state.set_state(ReportWizard.category)
    await state.set_data({"community_id": community_id, "photos": []})
    if first is not None and first.photo:
        await photo_before_description(first, state, session, directory)
        return
    if description is not None:
        await _suggest_category(message, state, session, directory, description)
        return
    await _ask_for_category(message, session, directory, community_id)


async def _ask_for_category(message: Screen, session: AsyncSession, directory: Directory, community_id: int) -> None:
    await message.answer(
        _("What is wrong? Choose a category below, or simply describe the problem in your own words."),
        reply_markup=views.categories_keyboard(await directory.categories(session, community_id)),
    )


async def _description(message: Message, text: str) -> str | None:
    """The description as it will be filed, or None after saying why it cannot be (they stay in the step)."""
    try:
        return tickets.check_description(text)
    except DomainError as error:
        await message.answer(views.refusal(error))
        return None


@router.message(StateFilter(ReportWizard.category), Typed())
async def described_first(message: Message, state: FSMContext, session: AsyncSession, directory: Directory) -> None:
    if (description := await _description(message, message.text or "")) is not None:
        await _suggest_category(message, state, session, directory, description)


async def _suggest_category(
    message: Screen, state: FSMContext, session: AsyncSession, directory: Directory, description: str
) -> None:
    data = await state.update_data(description=description)
    categories = await directory.categories(session, data["community_id"])
    suggested = suggest_category(categories, description)
    prompt = (
        _("Thank you. It sounds like “{category}” — press ✅ to confirm, or choose another category.").format(
            category=escape(localized(suggested))
        )
        if suggested
        else _("Thank you. Which category fits best?")
    )
    await message.answer(prompt, reply_markup=views.categories_keyboard(categories, suggested))


async def _ask_category_again(screen: Screen, state: FSMContext, session: AsyncSession, directory: Directory) -> None:
    data = await state.get_data()
    if data.get("description"):
        await _suggest_category(screen, state, session, directory, data["description"])
    else:
        await _ask_for_category(screen, session, directory, data["community_id"])


@router.callback_query(StateFilter(ReportWizard.category), CategoryCb.filter())
async def category_chosen(
    query: CallbackQuery,
    callback_data: CategoryCb,
    state: FSMContext,
    session: AsyncSession,
    directory: Directory,
    user: Person,
    tz: tzinfo,
) -> None:
    data = await state.get_data()
    category = await directory.category(session, data["community_id"], callback_data.category_id)
    if category is None:
        await query.answer(_("Sorry, you cannot open this."), show_alert=True)
        return
    await query.answer()
    await state.update_data(category_id=category.id)
    if not data.get("description"):
        await state.set_state(ReportWizard.description)
    chosen = _("Category: {category}").format(category=escape(localized(category)))
    # "Me too": neighbours' open tickets of this category in this building, each with a button to join it.
    home = await directory.home(session, user)
    similar = (
        await followers.similar_open_tickets(session, user_id=user.id, building_id=home.id, category_id=category.id)
        if home is not None
        else []
    )
    markup = feedback_views.me_too_keyboard(similar) if similar else None
    if similar:
        chosen += "\n\n" + feedback_views.similar_tickets(similar, tz)
    screen = chat_of(query)
    if data.get("description"):
        await replace(screen, chosen, markup)
        await _ask_for_photos(screen, state)
    else:
        await replace(screen, chosen + "\n\n" + _describe_prompt(), markup)


def _describe_prompt() -> str:
    return _("Please describe the problem in a few words: what, where exactly, since when.")


@router.message(StateFilter(ReportWizard.description), Typed())
async def described(message: Message, state: FSMContext) -> None:
    if (description := await _description(message, message.text or "")) is None:
        return
    await state.update_data(description=description)
    await _ask_for_photos(message, state)


@router.message(StateFilter(ReportWizard.category, ReportWizard.description), Content(ContentType.PHOTO))
async def photo_before_description(
    message: Message, state: FSMContext, session: AsyncSession, directory: Directory
) -> None:
    """Photo first is what people do: it is kept, and its caption, if any, is taken as the description."""
    data = await state.get_data()
    describes = bool(message.caption and message.caption.strip()) and not data.get("description")
    description = await _description(message, message.caption or "") if describes else None
    if describes and description is None:
        return  # the caption cannot be the description (too long): nothing is kept, they may send it again
    if await _add_photo(message, state, caption=None if description else message.caption) is None:
        return
    describing = await state.get_state() == ReportWizard.description.state
    if description is not None and describing:
        await state.update_data(description=description)
        await _ask_for_photos(message, state)
    elif description is not None:
        await _suggest_category(message, state, session, directory, description)
    elif describing:
        await message.answer(_("Photo added. Now please describe the problem in a few words."))
    else:
        await message.answer(_("Photo added."))
        await _ask_for_category(message, session, directory, data["community_id"])


@router.message(StateFilter(ReportWizard.category))
async def category_other(message: Message, state: FSMContext, session: AsyncSession, directory: Directory) -> None:
    """Anything but words, a photo or a category (an old keyboard's "📨 Submit", say): the question again."""
    await _ask_category_again(message, state, session, directory)


@router.message(StateFilter(ReportWizard.description))
async def description_not_text(message: Message) -> None:
    await message.answer(_("Please describe the problem in words, or send a photo of it."))


async def _ask_for_photos(message: Screen, state: FSMContext) -> None:
    await state.set_state(ReportWizard.photos)
    await message.answer(
        _(
            "Add up to {limit} photos and, if it helps, your location. Press “✅ Done” when you have "
            "finished, or straight away to skip."
        ).format(limit=tickets.MAX_PHOTOS),
        reply_markup=views.photos_keyboard(),
    )


@router.message(StateFilter(ReportWizard.photos), Content(ContentType.PHOTO))
async def photo_added(message: Message, state: FSMContext) -> None:
    count = await _add_photo(message, state, caption=message.caption)
    if count is not None:
        await message.answer(_("Photo {count} of {limit} added.").format(count=count, limit=tickets.MAX_PHOTOS))


async def _add_photo(message: Message, state: FSMContext, caption: str | None) -> int | None:
    """Keep the photo (its largest size) with its caption; returns how many there are, or None after saying
    why this one is not kept."""
    data = await state.get_data()
    photos, captions = list(data.get("photos", [])), dict(data.get("captions", {}))
    if len(photos) >= tickets.MAX_PHOTOS:
        await message.answer(
            _("You already have {limit} photos, the most one report can carry. Press “✅ Done”.").format(
                limit=tickets.MAX_PHOTOS
            )
        )
        return None
    try:
        kept = tickets.check_caption(caption)
    except DomainError as error:
        await message.answer(views.refusal(error))
        return None
    assert message.photo is not None
    file_id = message.photo[-1].file_id
    photos.append(file_id)
    if kept:
        captions[file_id] = kept
    await state.update_data(photos=photos, captions=captions)
    return len(photos)


@router.message(StateFilter(ReportWizard.photos), Content(ContentType.LOCATION))
async def location_added(message: Message, state: FSMContext) -> None:
    assert message.location is not None
    await state.update_data(latitude=message.location.latitude, longitude=message.location.longitude)
    await message.answer(_("Location added."))


@router.message(StateFilter(ReportWizard.photos), Button(views.WIZARD_DONE))
async def photos_done(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    await _show_summary(message, state, session, user, directory)


async def _show_summary(
    message: Screen, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> None:
    data = await state.get_data()
    home = await directory.home(session, user)
    category = await directory.category(session, data["community_id"], data["category_id"])
    if home is None or category is None:
        await state.clear()
        await show_menu(message, user, _("Sorry, that cannot be done."))
        return
    await state.set_state(ReportWizard.confirm)
    await message.answer(
        views.report_summary(_draft(data), category, home, user.unit), reply_markup=views.confirm_keyboard()
    )


@router.message(StateFilter(ReportWizard.photos))
async def photos_other(message: Message) -> None:
    await message.answer(_("Send a photo or your location, or press “✅ Done”."))


def _draft(data: dict[str, Any]) -> tickets.ReportDraft:
    return tickets.ReportDraft(
        category_id=int(data["category_id"]),
        description=str(data.get("description", "")),
        photos=list(data.get("photos", [])),
        latitude=data.get("latitude"),
        longitude=data.get("longitude"),
        captions=dict(data.get("captions", {})),
    )


@router.message(StateFilter(ReportWizard.confirm), Button(views.WIZARD_SUBMIT))
async def submit(
    message: Message,
    state: FSMContext,
    session: AsyncSession,
    user: Person,
    clock: Clock,
    directory: Directory,
) -> None:
    data = await state.get_data()
    home = await directory.home(session, user)
    category = await directory.category(session, data["community_id"], data["category_id"])
    # Cleared first so the wizard's end is written in the ticket's own transaction (one commit, not two).
    await state.clear()
    try:
        if home is None:
            raise NotBound()
        if category is None:
            raise NotFound(data["category_id"])
        filed = await tickets.file_report(
            session, reporter=user, building=home, category=category, draft=_draft(data), now=clock()
        )
    except DomainError as error:
        await show_menu(message, user, views.refusal(error))
        return
    except Exception:
        # Not filed (the database failed): the resident keeps the wizard and can press Submit again.
        await state.set_state(ReportWizard.confirm)
        await state.set_data(data)
        raise
    await show_menu(
        message,
        user,
        _(
            "Sent! Your report is ticket #{number}. It has gone to your grid ({grid}), and I will tell you "
            "here as soon as someone takes it on. /my shows all your reports."
        ).format(number=filed.ticket.id, grid=escape(localized(home.grid))),
    )


@router.message(StateFilter(ReportWizard.confirm), Button(views.WIZARD_CANCEL))
async def cancel_report(message: Message, state: FSMContext, user: Person) -> None:
    await state.clear()
    await show_menu(message, user, _("Cancelled. Nothing was sent."))


@router.message(StateFilter(ReportWizard.confirm))
async def confirm_other(message: Message) -> None:
    await message.answer(_("Please press “📨 Submit” or “✖️ Cancel” below."))


async def ask_again(
    screen: Screen, state: FSMContext, session: AsyncSession, user: Person, directory: Directory
) -> bool:
    """Ask the wizard's current question again, with its buttons (after a restart, when the answer that asked it
    may have been lost: handlers/resume.py). False when no report is open."""
    match await state.get_state():
        case ReportWizard.category.state:
            await _ask_category_again(screen, state, session, directory)
        case ReportWizard.description.state:
            await screen.answer(_describe_prompt())
        case ReportWizard.photos.state:
            await _ask_for_photos(screen, state)
        case ReportWizard.confirm.state:
            await _show_summary(screen, state, session, user, directory)
        case _:
            return False
    return True


# The wizard's own buttons, typed (or pressed on an old keyboard) when no report is open: not a description.
@router.message(StateFilter(None), Button(views.WIZARD_SUBMIT))
@router.message(StateFilter(None), Button(views.WIZARD_CANCEL))
@router.message(StateFilter(None), Button(views.WIZARD_DONE))
@router.message(StateFilter(None), Button(views.WIZARD_LOCATION))
async def wizard_button_outside_the_wizard(message: Message, user: Person) -> None:
    await show_menu(
        message,
        user,
        _("No report is open: it was sent, cancelled, or left too long. /my lists your reports; /report starts one."),
    )


@router.callback_query(CategoryCb.filter())
async def stale_wizard_button(query: CallbackQuery) -> None:
    await query.answer(_("This report was already sent or cancelled."), show_alert=True)
