"""Households: /home with the resident's verification, the phone-number step and the request to the grid worker;
the grid worker's /verify; staff's /households (counts, revoking) and /register (the register as a document).

The rules are in domain/verification.py and domain/register.py; this reads buttons, contacts, text and files.
"""

from __future__ import annotations

import io
from datetime import tzinfo

from aiogram import Bot, F, Router
from aiogram.enums import ContentType
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.callbacks import HouseholdAction, HouseholdCb
from bot.filters import Button, Command, Content, Typed
from bot.views import households as hv
from domain import verification
from domain.clock import Clock
from domain.errors import DomainError
from domain.households import NoPhoneSecret
from domain.people import Person
from domain.register import NoRegisterColumns, RegisterFileError, import_register
from domain.text import TextEmpty
from handlers.common import Screen, chat_of, drop_buttons, finish_text_step, show_menu, start_text_step
from handlers.start import offer_places

router = Router(name="households")

MAX_REGISTER_BYTES = 10 * 1024 * 1024  # a district's register as .xlsx is a few megabytes


class VerifyFlow(StatesGroup):
    contact = State()  # the resident is asked to share their phone number
    room = State()  # … or to name their room for the grid worker
    photo = State()  # … and may add a photo


class HouseholdInput(StatesGroup):
    decline_reason = State()  # the grid worker says why not
    revoke_reason = State()  # staff say why
    register_file = State()  # staff send the register as a document


# --- the resident: /home and verifying -------------------------------------------------------------------


@router.message(Command("home"))
async def home(message: Message, session: AsyncSession, user: Person, tz: tzinfo) -> None:
    status = await verification.home_status(session, user.id)
    if status.building is None:
        await message.answer(hv.home_text(status, tz))
        await offer_places(message, session)
        return
    await message.answer(hv.home_text(status, tz), reply_markup=hv.home_keyboard(status))


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.MOVE))
async def move(query: CallbackQuery, session: AsyncSession) -> None:
    await query.answer()
    await offer_places(chat_of(query), session)


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.VERIFY))
async def start_verifying(query: CallbackQuery, state: FSMContext, session: AsyncSession, user: Person) -> None:
    try:
        await verification.check_can_verify(session, user_id=user.id)
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await state.set_state(VerifyFlow.contact)
    await state.set_data({})
    await query.answer()
    await chat_of(query).answer(hv.contact_prompt(), reply_markup=hv.contact_keyboard())


@router.message(StateFilter(VerifyFlow.contact), Content(ContentType.CONTACT))
async def contact_shared(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock, phone_secret: bytes
) -> None:
    assert message.contact is not None
    contact = message.contact
    try:
        verified = await verification.verify_by_contact(
            session,
            user_id=user.id,
            contact_user_id=contact.user_id,
            phone=contact.phone_number,
            secret=phone_secret,
            now=clock(),
        )
    except verification.ForeignContact as error:
        await message.answer(hv.refusal(error), reply_markup=hv.contact_keyboard())  # they stay in the step
        return
    except NoPhoneSecret:
        verified = None  # no key to match the register with: the grid worker decides
    except DomainError as error:
        await state.clear()
        await show_menu(message, user, hv.refusal(error))
        return
    if verified is None:
        await state.set_state(VerifyFlow.room)
        await message.answer(hv.no_match(), reply_markup=hv.no_keyboard())
        return
    await state.clear()
    status = await verification.home_status(session, user.id)
    assert status.building is not None
    await show_menu(message, user, hv.verified_by_phone(verified, status.building))


@router.message(StateFilter(VerifyFlow.contact), Button(hv.ASK_WORKER))
async def no_phone(message: Message, state: FSMContext) -> None:
    await state.set_state(VerifyFlow.room)
    await message.answer(hv.ask_room(), reply_markup=hv.no_keyboard())


@router.message(StateFilter(VerifyFlow.contact))
async def contact_other(message: Message) -> None:
    await message.answer(hv.contact_only(), reply_markup=hv.contact_keyboard())


@router.message(StateFilter(VerifyFlow.room), Typed())
async def room_given(message: Message, state: FSMContext) -> None:
    try:
        room = verification.check_room(message.text or "")
    except DomainError as error:
        await message.answer(hv.refusal(error))
        return
    await state.update_data(room=room)
    await state.set_state(VerifyFlow.photo)
    await message.answer(hv.ask_photo(), reply_markup=hv.photo_keyboard())


@router.message(StateFilter(VerifyFlow.room))
async def room_not_text(message: Message) -> None:
    await message.answer(hv.refusal(verification.BadRoom()))


@router.message(StateFilter(VerifyFlow.photo), Content(ContentType.PHOTO))
@router.message(StateFilter(VerifyFlow.photo), Button(hv.NO_PHOTO))
async def send_request(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    room = str((await state.get_data()).get("room", ""))
    photo = message.photo[-1].file_id if message.photo else ""
    try:
        _request, asked = await verification.request_verification(
            session, user_id=user.id, room=room, photo_file_id=photo, now=clock()
        )
        done = hv.request_sent(asked)
    except DomainError as error:
        done = hv.refusal(error)
    await state.clear()
    await show_menu(message, user, done)


@router.message(StateFilter(VerifyFlow.photo))
async def photo_other(message: Message) -> None:
    await message.answer(hv.ask_photo(), reply_markup=hv.photo_keyboard())


# --- the grid worker: /verify ----------------------------------------------------------------------------


@router.message(Command("verify"))
async def pending(message: Message, session: AsyncSession, user: Person) -> None:
    try:
        found = await verification.pending_requests(session, actor_id=user.id)
    except DomainError:
        await message.answer(hv.workers_only())
        return
    await message.answer(hv.pending_text(found), reply_markup=hv.pending_keyboard(found))


async def _show_request(screen: Screen, session: AsyncSession, user: Person, verification_id: int, tz: tzinfo) -> None:
    view = await verification.view_request(session, actor_id=user.id, verification_id=verification_id)
    text, keyboard = hv.request_text(view, tz), hv.request_keyboard(verification_id)
    if view.verification.photo_file_id and views.visible_length(text) <= views.CAPTION_LIMIT:
        await screen.answer_photo(view.verification.photo_file_id, caption=text, reply_markup=keyboard)
    else:
        await screen.answer(text, reply_markup=keyboard)


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.OPEN))
async def open_request(
    query: CallbackQuery, callback_data: HouseholdCb, session: AsyncSession, user: Person, tz: tzinfo
) -> None:
    try:
        await _show_request(chat_of(query), session, user, callback_data.id, tz)
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await query.answer()


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.APPROVE))
async def approve(
    query: CallbackQuery, callback_data: HouseholdCb, session: AsyncSession, user: Person, clock: Clock
) -> None:
    try:
        decided = await verification.approve(session, actor_id=user.id, verification_id=callback_data.id, now=clock())
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await query.answer()
    screen = chat_of(query)
    await drop_buttons(screen)
    await screen.answer(hv.approved(decided))


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.DECLINE))
async def decline(
    query: CallbackQuery, callback_data: HouseholdCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        await verification.check_decide(session, actor_id=user.id, verification_id=callback_data.id)
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await start_text_step(
        query, state, HouseholdInput.decline_reason, hv.decline_prompt(), verification_id=callback_data.id
    )


@router.message(StateFilter(HouseholdInput.decline_reason), Typed())
async def decline_reason(
    message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock
) -> None:
    verification_id = int((await state.get_data())["verification_id"])
    step = verification.decline(
        session, actor_id=user.id, verification_id=verification_id, reason=message.text or "", now=clock()
    )
    await finish_text_step(message, state, user, step, hv.declined(), hv.refusal)


# --- community staff: /households, revoking, /register -----------------------------------------------------


@router.message(Command("households"))
async def counts(message: Message, session: AsyncSession, user: Person) -> None:
    try:
        found = await verification.building_counts(session, actor_id=user.id)
    except DomainError:
        await message.answer(hv.staff_only())
        return
    await message.answer(hv.counts_text(found), reply_markup=hv.counts_keyboard(found))


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.BUILDING))
async def building(
    query: CallbackQuery, callback_data: HouseholdCb, session: AsyncSession, user: Person, tz: tzinfo
) -> None:
    try:
        place, found = await verification.verified_in_building(session, actor_id=user.id, building_id=callback_data.id)
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await query.answer()
    await chat_of(query).answer(hv.verified_text(place, found, tz), reply_markup=hv.verified_keyboard(found))


@router.callback_query(HouseholdCb.filter(F.action == HouseholdAction.REVOKE))
async def revoke(
    query: CallbackQuery, callback_data: HouseholdCb, state: FSMContext, session: AsyncSession, user: Person
) -> None:
    try:
        await verification.check_revoke(session, actor_id=user.id, verification_id=callback_data.id)
    except DomainError as error:
        await query.answer(hv.refusal(error), show_alert=True)
        return
    await start_text_step(
        query, state, HouseholdInput.revoke_reason, hv.revoke_prompt(), verification_id=callback_data.id
    )


@router.message(StateFilter(HouseholdInput.revoke_reason), Typed())
async def revoke_reason(message: Message, state: FSMContext, session: AsyncSession, user: Person, clock: Clock) -> None:
    verification_id = int((await state.get_data())["verification_id"])
    step = verification.revoke(
        session, actor_id=user.id, verification_id=verification_id, reason=message.text or "", now=clock()
    )
    await finish_text_step(message, state, user, step, hv.revoked(), hv.refusal)


@router.message(Command("register"))
async def ask_register(message: Message, state: FSMContext, session: AsyncSession, user: Person) -> None:
    try:
        await verification.staff_community(session, actor_id=user.id)
    except DomainError:
        await message.answer(hv.staff_only())
        return
    await state.set_state(HouseholdInput.register_file)
    await message.answer(hv.register_prompt())


@router.message(StateFilter(HouseholdInput.register_file), Content(ContentType.DOCUMENT))
async def register_file(
    message: Message,
    state: FSMContext,
    session: AsyncSession,
    user: Person,
    clock: Clock,
    bot: Bot,
    phone_secret: bytes,
) -> None:
    document = message.document
    assert document is not None
    if (document.file_size or 0) > MAX_REGISTER_BYTES:
        await message.answer(hv.register_too_big())
        return
    try:
        community_id = await verification.staff_community(session, actor_id=user.id)
    except DomainError as error:
        await state.clear()
        await show_menu(message, user, hv.refusal(error))
        return
    data = io.BytesIO()
    try:
        await bot.download(document, destination=data)
    except TelegramAPIError:  # Telegram hands bots files up to 20 MB; a register is far smaller
        await message.answer(hv.register_too_big())
        return
    try:
        report = await import_register(
            session,
            community_id=community_id,
            data=data.getvalue(),
            filename=document.file_name or "",
            secret=phone_secret,
            now=clock(),
        )
    except RegisterFileError as error:
        await message.answer(hv.register_problems(error.problems))  # they may send a corrected file
        return
    except (NoRegisterColumns, NoPhoneSecret):
        await state.clear()
        await show_menu(message, user, hv.register_unset())
        return
    await state.clear()
    await show_menu(message, user, hv.register_done(report))


@router.message(StateFilter(HouseholdInput.register_file))
async def register_not_file(message: Message) -> None:
    await message.answer(hv.register_prompt())


@router.message(StateFilter(HouseholdInput.decline_reason, HouseholdInput.revoke_reason))
async def reason_not_text(message: Message) -> None:
    await message.answer(hv.refusal(TextEmpty()))
