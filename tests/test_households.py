"""Who counts: the household register, verifying residents (by phone, by the grid worker), revoking, moving, and
what verification decides (me too, "Is it fixed?", ratings, votes, one vote per household, turnout).

Through the real dispatcher on both backends, with the sample community and its sample register.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import openpyxl
import pytest
from aiogram.methods import SendPhoto, TelegramMethod
from sqlalchemy import func, select, text

from bot.callbacks import (
    FeedbackAction,
    FeedbackCb,
    HouseholdAction,
    HouseholdCb,
    MeTooAction,
    MeTooCb,
    SurveyCb,
    TicketAction,
    TicketCb,
    TopicAction,
    TopicCb,
)
from domain import confirmation, deliberation
from domain.community_file import CommunityFileError, load_community_file, loads_community
from domain.households import normalise_phone, phone_digest
from domain.register import Problem, RegisterFileError, import_register
from storage.db import SessionFactory
from storage.models import (
    Community,
    Household,
    HouseholdMember,
    SurveyVote,
    Ticket,
    TicketFollower,
    TicketStatus,
    Topic,
    Verification,
    VerificationMethod,
    VerificationStatus,
)
from tests.conftest import ROOT, FakeClock
from tests.fake_telegram import reply_buttons_of, sent_to, text_of
from tests.harness import PHONE_SECRET, Harness, Person
from tests.households import verify
from tests.test_confirmation import alerted, callbacks, speak_english, texts

SAMPLE_REGISTER = (ROOT / "bot" / "communities" / "sample-register.csv").read_bytes()
SAMPLE_TOML = (ROOT / "bot" / "communities" / "sample.toml").read_text(encoding="utf-8")
LI_JUAN, MA_LI, ZHANG_WEI, YANG_MIN = 200001, 200002, 200003, 200011  # grid 1's workers; YANG_MIN works grid 2
STAFF_WANG = 100001
MA_GUILAN, MA_XIAOJUN = 950001, 950002  # 银巴小区 1号楼 1单元 101 in the sample register
NEWCOMER, NEIGHBOUR = 950003, 950004
GUILAN_PHONE = "+86 138 9500 0101"  # as Telegram sends it; the register writes 13895000101
XIAOJUN_PHONE = "8613895000102"


def household_button(action: HouseholdAction, id_: int = 0) -> str:
    return HouseholdCb(action=action, id=id_).pack()


async def import_sample_register(harness: Harness) -> list[TelegramMethod[Any]]:
    """Community staff send the sample register as a document, as an office would."""
    staff = harness.person(STAFF_WANG, language="en")
    assert "Send the household register" in texts(await staff.send("/register"))
    return await staff.send_document(SAMPLE_REGISTER, "居民台账.csv")


async def resident(harness: Harness, user_id: int, link: str = "jsx_yinba_1", unit: str = "Unit 1") -> Person:
    person = harness.person(user_id, f"Resident {user_id}", language="en")
    answer = await person.send(f"/start {link}")
    if unit:
        await person.tap(answer, unit)
    return person


async def status_of(harness: Harness, user_id: int) -> list[str]:
    async with harness.sessions() as session:
        return list(
            await session.scalars(
                select(Verification.status).where(Verification.user_id == user_id).order_by(Verification.id)
            )
        )


async def share_phone(person: Person, phone: str, user_id: int | None = -1) -> list[TelegramMethod[Any]]:
    """/home → "Verify my household" → share a contact (one's own by default)."""
    home = await person.send("/home")
    asked = await person.tap(home, "Verify my household")
    assert any(getattr(b, "request_contact", False) for r in asked for row in _keyboard(r) for b in row)
    return await person.send_contact(phone, user_id)


def _keyboard(request: TelegramMethod[Any]) -> list[list[Any]]:
    return getattr(getattr(request, "reply_markup", None), "keyboard", None) or []


# --- the register --------------------------------------------------------------------------------------------


async def test_register_import_repeated_and_moved_out(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # Nobody but staff imports a register.
    refused = await harness.person(LI_JUAN, language="en").send("/register")
    assert "only for community staff" in texts(refused)

    done = await import_sample_register(harness)
    assert "10 rows, 8 households (8 new, 0 back, 0 changed)" in texts(done)
    async with harness.sessions() as session:
        members = list(await session.scalars(select(HouseholdMember)))
        assert len(members) == 10
        assert [m.phone_hash for m in members if m.name == "孙丽娟"] == [""]  # the register has no number for her
        assert phone_digest(PHONE_SECRET, "13895000101") in {m.phone_hash for m in members}

    # A resident of 101 verifies by phone; the same file again changes nothing and keeps them verified.
    guilan = await resident(harness, MA_GUILAN)
    assert "Verified: you speak for" in texts(await share_phone(guilan, GUILAN_PHONE))
    again = await import_sample_register(harness)
    assert "0 new, 0 back, 0 changed). 0 moved out; 0 residents" in texts(again)
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.VERIFIED]

    # 101 left the file: moved out, and its resident is no longer verified; nothing else breaks.
    without_101 = b"\n".join(line for line in SAMPLE_REGISTER.split(b"\n") if b",101," not in line)
    staff = harness.person(STAFF_WANG, language="en")
    await staff.send("/register")
    done = await staff.send_document(without_101, "register.csv")
    assert "2 moved out; 1 residents are no longer verified" in texts(done)  # 101 of 银巴 and 幸福苑
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.MOVED_OUT]
    assert "no longer in the community's household register" in texts(await guilan.send("/home"))
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).where(Household.active.is_(True))) == 6

    # It comes back: active again, but its residents verify afresh.
    await staff.send("/register")
    assert "2 back" in texts(await staff.send_document(SAMPLE_REGISTER, "register.csv"))
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.MOVED_OUT]

    # Phone numbers are nowhere as written: not in any table, not in the log.
    async with harness.sessions() as session:
        dump = []
        for table in ("households", "household_members", "verifications", "users", "outbox", "fsm_states"):
            dump += [repr(row) for row in await session.execute(text(f"SELECT * FROM {table}"))]
    for digits in ("13895000101", "13895000102", "5012345"):
        assert digits not in "\n".join(dump)
        assert digits not in caplog.text


async def test_a_household_that_moved_out_keeps_its_tickets_follow_ups_and_votes(harness: Harness) -> None:
    """Moved out of the register: no longer verified, and nothing else breaks. Her open ticket is worked and she
    is told, it closes unconfirmed in time; the ticket she joined still tells her and closes on a verified
    neighbour's word; her vote stays in the totals but her household leaves the turnout; staff's counts move."""
    await speak_english(harness, LI_JUAN, MA_LI)
    await import_sample_register(harness)
    guilan, neighbour = await resident(harness, MA_GUILAN), await resident(harness, NEIGHBOUR)
    await share_phone(guilan, GUILAN_PHONE)  # 101
    await share_phone(neighbour, "13895000103")  # 102, 杨建华's number
    topic_id = await open_survey(harness)
    await guilan.press(SurveyCb(topic_id=topic_id, option=0).pack())
    await neighbour.press(SurveyCb(topic_id=topic_id, option=1).pack())
    own = await report(guilan, "Drain by the door")
    joined = await report(neighbour, "Drain in the yard")
    answer = await guilan.tap(await guilan.tap(await guilan.send("/report"), "Blocked drain"), f"#{joined}")
    assert "joined ticket" in texts(answer)
    await harness.deliver()

    staff = harness.person(STAFF_WANG, language="en")
    await staff.send("/register")
    without_101 = b"\n".join(line for line in SAMPLE_REGISTER.split(b"\n") if b",101," not in line)
    assert "1 residents are no longer verified" in texts(await staff.send_document(without_101, "register.csv"))
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.MOVED_OUT]
    assert "Yinba Compound Building 1: 3 · ✅ 1 / ⏳ 0 / ❔ 1" in texts(await staff.send("/households"))

    # Her own ticket goes on: the worker accepts and resolves it, and she is told and asked, as before.
    async with harness.sessions() as session:
        holders = {t.id: t.assignee_id for t in await session.scalars(select(Ticket))}
    for number in (own, joined):
        worker = harness.person(holders[number] or 0, language="en")
        await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
        await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
        await worker.send("Cleared")
    told = sent_to(await harness.deliver(), MA_GUILAN)
    assert f"#{own}" in texts(told) and f"#{joined}" in texts(told) and "Is it fixed" in texts(told)
    # She no longer speaks for a household: her answer is refused, for both tickets, and nothing changes.
    for number in (own, joined):
        refused = await guilan.press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=number).pack())
        assert alerted(refused) and "Only a verified household" in texts(refused)
    listing = texts(await guilan.send("/my"))
    assert f"#{own}" in listing and f"#{joined}" in listing
    # The verified neighbour closes the ticket they share; hers closes unconfirmed after the usual wait.
    answer = await neighbour.press(FeedbackCb(action=FeedbackAction.FIXED, ticket_id=joined).pack())
    assert "How satisfied" in texts(answer)
    harness.clock.advance(days=8)
    async with harness.sessions() as session:
        await confirmation.close_unconfirmed(session, harness.clock())
    async with harness.sessions() as session:
        statuses = {t.id: t.status for t in await session.scalars(select(Ticket))}
        assert await session.scalar(select(func.count()).select_from(TicketFollower)) == 1  # she still follows
    assert statuses == {own: TicketStatus.UNCONFIRMED, joined: TicketStatus.CLOSED}
    assert f"#{own}" in texts(sent_to(await harness.deliver(), MA_GUILAN))

    # Her vote was a verified household's: it stays in the totals, but 101 is no longer a household in scope.
    results = await staff.press(TopicCb(action=TopicAction.RESULTS, topic_id=topic_id).pack())
    assert "1. 3号楼东侧: 1" in texts(results) and "2. 小区南门: 1" in texts(results)
    assert "Turnout: 1 of 6 households on record voted" in texts(results)
    shown = await guilan.press(SurveyCb(topic_id=topic_id).pack())
    assert "Only verified households vote" in texts(shown) and not callbacks(shown)
    assert alerted(await guilan.press(SurveyCb(topic_id=topic_id, option=1).pack()))
    assert sorted(await votes(harness)) == [(0, MA_GUILAN), (1, NEIGHBOUR)]


async def test_a_register_with_mistakes_imports_nothing_and_names_each_line(harness: Harness) -> None:
    staff = harness.person(STAFF_WANG, language="en")
    await staff.send("/register")
    bad = (
        "小区,楼号,单元,房号,姓名,联系电话\n"
        "银巴小区,99号楼,1,101,甲,13800000001\n"
        "幸福苑小区,1号楼,7,101,乙,13800000002\n"
        ",1号楼,1,,丙,\n"
    )
    answer = await staff.send_document(bad.encode(), "register.csv")
    shown = texts(answer)
    assert "Nothing was imported" in shown
    assert "Line 2: the community file has no building “99号楼”" in shown
    assert "Line 3: “7” is not a unit of that building" in shown
    assert "Line 4: no compound of the community is called “”" in shown
    # Still waiting for a file: a register without the phone column is refused as a whole.
    answer = await staff.send_document("楼号,房号,姓名\n1号楼,101,甲\n".encode(), "register.csv")
    assert "no column has the heading “小区”" in texts(answer) and "“联系电话”" in texts(answer)
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Household)) == 0
    await staff.send("/cancel")


async def test_an_xlsx_register_with_numbers_as_excel_keeps_them(
    harness: Harness, session_factory: SessionFactory, clock: FakeClock
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["小区", "楼号", "单元", "房号", "姓名", "联系电话"])
    sheet.append(["yinba", 11, 2, 602, "赵永强", 13895000112])  # numbers, as Excel keeps them
    sheet.append(["朝阳花园小区", "3栋", "2单元", "401室", "孙德明", "138-9500-0131"])
    data = io.BytesIO()
    book.save(data)
    async with session_factory() as session:
        community = await session.scalar(select(Community.id))
    assert community is not None
    async with session_factory() as session:
        report = await import_register(
            session,
            community_id=community,
            data=data.getvalue(),
            filename="台账.xlsx",
            secret=PHONE_SECRET,
            now=clock(),
        )
    assert (report.rows, report.created) == (2, 2)
    async with session_factory() as session:
        rooms = {(h.unit, h.room) for h in await session.scalars(select(Household))}
    assert rooms == {(2, "602"), (2, "401")}
    with pytest.raises(RegisterFileError) as refused:
        async with session_factory() as session:
            await import_register(
                session, community_id=community, data=b"not a workbook", filename="x.xlsx", secret=b"k", now=clock()
            )
    assert refused.value.problems[0].kind == Problem.UNREADABLE


def test_phone_numbers_are_compared_as_digits_and_kept_as_keyed_hashes() -> None:
    assert normalise_phone("+86 138-9500-0101") == normalise_phone("008613895000101") == "13895000101"
    assert normalise_phone("0951-5012345") == "09515012345"
    digest = phone_digest(b"secret", "13895000101")
    assert digest == phone_digest(b"secret", "+8613895000101") and "13895000101" not in digest
    assert digest != phone_digest(b"another secret", "13895000101")
    assert phone_digest(b"secret", " - ") == ""


# --- verifying by phone --------------------------------------------------------------------------------------


async def test_verification_by_contact_match_no_match_and_another_persons_contact(harness: Harness) -> None:
    await speak_english(harness, LI_JUAN)
    await import_sample_register(harness)
    guilan = await resident(harness, MA_GUILAN)
    home = await guilan.send("/home")
    assert "not verified yet" in texts(home)

    # Someone else's contact card, or one whose user id is not the sender's: refused, still asked for their own.
    for forged in (None, MA_XIAOJUN):
        answer = await share_phone(guilan, GUILAN_PHONE, forged)
        assert "not your own contact" in texts(answer) and "Share my phone number" in str(reply_buttons_of(answer[-1]))
        await guilan.send("/cancel")
    assert await status_of(harness, MA_GUILAN) == []

    # Her own: the number is the register's for 101, so she is verified at once, for that room.
    answer = await share_phone(guilan, GUILAN_PHONE)
    assert "Verified: you speak for" in texts(answer) and "room 101" in texts(answer)
    assert "Verified household: room 101" in texts(await guilan.send("/home"))
    async with harness.sessions() as session:
        verified = await session.scalar(select(Verification).where(Verification.user_id == MA_GUILAN))
        assert verified is not None and verified.method == VerificationMethod.PHONE
        assert verified.decided_by is None and verified.decided_at == harness.clock()  # the register decided
    # Verified already: the button says so.
    assert alerted(await guilan.press(household_button(HouseholdAction.VERIFY)))

    # A number the register does not know: the room, an optional photo, and the grid workers are asked.
    newcomer = await resident(harness, NEWCOMER)
    answer = await share_phone(newcomer, "13900000000")
    assert "not in the household register" in texts(answer) and "Which room" in texts(answer)
    assert "Please write just your room number" in texts(await newcomer.send("a very long answer about my flat"))
    assert "add one photo" in texts(await newcomer.send("302室"))
    answer = await newcomer.send_photo("door-plate")
    assert "Sent to your grid worker" in texts(answer)
    cards = await harness.deliver()
    assert {r.chat_id for r in cards} == {LI_JUAN, MA_LI, ZHANG_WEI}  # type: ignore[attr-defined]
    card = sent_to(cards, LI_JUAN)[0]
    assert isinstance(card, SendPhoto) and card.photo == "door-plate"
    assert "Resident 950003" in text_of(card) and "room 302" in text_of(card)
    assert "not in the household register" in text_of(card) and "13900000000" not in text_of(card)
    assert household_button(HouseholdAction.APPROVE, (await pending_id(harness, NEWCOMER))) in callbacks([card])
    assert "Waiting for your grid worker to confirm room 302" in texts(await newcomer.send("/home"))


async def pending_id(harness: Harness, user_id: int) -> int:
    async with harness.sessions() as session:
        found = await session.scalar(
            select(Verification.id).where(
                Verification.user_id == user_id, Verification.status == VerificationStatus.PENDING
            )
        )
    assert found is not None
    return found


async def ask_worker(harness: Harness, person: Person, room: str) -> int:
    """The resident would rather not share their number: they name their room and ask the grid worker."""
    home = await person.send("/home")
    asked = await person.tap(home, "📱 Verify")  # "my household", or "again" while a request waits
    await person.tap(asked, "Ask my grid worker instead")
    photo_step = await person.send(room)
    await person.tap(photo_step, "Send without a photo")
    return await pending_id(harness, person.id)


# --- verifying by the grid worker ------------------------------------------------------------------------


async def test_the_grid_worker_verifies_or_declines_and_a_worker_of_another_grid_is_refused(harness: Harness) -> None:
    await import_sample_register(harness)
    newcomer = await resident(harness, NEWCOMER)
    request = await ask_worker(harness, newcomer, "101")
    # In the worker's language (Chinese by default), with what the register lists for the room.
    card = texts(sent_to(await harness.deliver(), MA_LI))
    assert (
        "住户核验申请" in card
        and "自报住址：银巴小区 1号楼 1单元 101室" in card
        and "台账中该户登记：马桂兰、马小军" in card
    )

    # A worker of grid 2: not in their list, and their forged buttons are refused on the server.
    other = harness.person(YANG_MIN, language="en")
    assert "No verification requests are waiting" in texts(await other.send("/verify"))
    for action in (HouseholdAction.OPEN, HouseholdAction.APPROVE, HouseholdAction.DECLINE):
        assert alerted(await other.press(household_button(action, request)))
    assert await status_of(harness, NEWCOMER) == [VerificationStatus.PENDING]
    # A resident is no verifier either.
    assert "only for grid workers" in texts(await newcomer.send("/verify"))

    # Grid 1's worker: the list, the request with what the register says of room 101, and Verify.
    worker = harness.person(LI_JUAN, language="en")
    listing = await worker.send("/verify")
    assert household_button(HouseholdAction.OPEN, request) in callbacks(listing)
    opened = await worker.press(household_button(HouseholdAction.OPEN, request))
    assert "The register lists this room with: 马桂兰、马小军" in texts(opened)
    assert "Verified: Resident 950003 now speaks for room 101" in texts(await worker.tap(opened, "Verify"))
    told = sent_to(await harness.deliver(), NEWCOMER)
    assert "Your grid worker confirmed your household" in texts(told)
    async with harness.sessions() as session:
        decided = await session.get(Verification, request)
        assert decided is not None and decided.status == VerificationStatus.VERIFIED
        assert (decided.decided_by, decided.decided_at, decided.method) == (LI_JUAN, harness.clock(), "worker")
        household = await session.get(Household, decided.household_id)
        assert household is not None and (household.room, household.in_register) == ("101", True)
    # Pressed again, by her or a colleague: out of date.
    assert alerted(await harness.person(MA_LI, language="en").press(household_button(HouseholdAction.APPROVE, request)))

    # Another request, declined with a reason the resident is told; a room not in the register says so.
    neighbour = await resident(harness, NEIGHBOUR)
    second = await ask_worker(harness, neighbour, "909")
    opened = await worker.press(household_button(HouseholdAction.OPEN, second))
    assert "This room is not in the household register" in texts(opened)
    assert "Why do you decline" in texts(await worker.tap(opened, "Decline"))
    assert "Declined" in texts(await worker.send("Nobody lives in 909: the building has six floors"))
    told = sent_to(await harness.deliver(), NEIGHBOUR)
    assert "could not confirm" in texts(told) and "six floors" in texts(told)
    async with harness.sessions() as session:
        declined = await session.get(Verification, second)
        assert declined is not None and declined.status == VerificationStatus.DECLINED
        assert (declined.decided_by, declined.reason) == (LI_JUAN, "Nobody lives in 909: the building has six floors")
    assert "did not confirm room 909" in texts(await neighbour.send("/home"))


async def test_a_room_the_register_lacks_becomes_a_household_on_the_workers_word(harness: Harness) -> None:
    newcomer = await resident(harness, NEWCOMER)
    request = await ask_worker(harness, newcomer, "1202")
    await harness.person(ZHANG_WEI, language="en").press(household_button(HouseholdAction.APPROVE, request))
    async with harness.sessions() as session:
        household = await session.scalar(select(Household).where(Household.room == "1202"))
        assert household is not None and not household.in_register and household.active
    # A register import neither lists it nor moves it out.
    assert "0 moved out" in texts(await import_sample_register(harness))
    assert await status_of(harness, NEWCOMER) == [VerificationStatus.VERIFIED]


async def test_a_resident_asks_the_grid_workers_at_most_three_times_a_day(harness: Harness, clock: FakeClock) -> None:
    newcomer = await resident(harness, NEWCOMER)
    first = await ask_worker(harness, newcomer, "301")
    for room in ("302", "303"):
        assert await ask_worker(harness, newcomer, room) > first  # a new request withdraws the one before
    home = await newcomer.send("/home")
    asked = await newcomer.tap(home, "📱 Verify again")
    await newcomer.tap(asked, "Ask my grid worker instead")
    photo_step = await newcomer.send("304")
    assert "three times today" in texts(await newcomer.tap(photo_step, "Send without a photo"))
    assert await status_of(harness, NEWCOMER) == ["withdrawn", "withdrawn", "pending"]
    clock.advance(days=1)
    await ask_worker(harness, newcomer, "304")
    assert await status_of(harness, NEWCOMER) == ["withdrawn", "withdrawn", "withdrawn", "pending"]


# --- staff: counts and revoking --------------------------------------------------------------------------


async def test_staff_see_counts_per_building_and_revoke(harness: Harness) -> None:
    await import_sample_register(harness)
    guilan = await resident(harness, MA_GUILAN)
    await share_phone(guilan, GUILAN_PHONE)
    newcomer = await resident(harness, NEWCOMER)
    await ask_worker(harness, newcomer, "102")
    await resident(harness, NEIGHBOUR)
    await harness.deliver()

    staff = harness.person(STAFF_WANG, language="en")
    counts = await staff.send("/households")
    assert "Yinba Compound Building 1: 4 · ✅ 1 / ⏳ 1 / ❔ 1" in texts(counts)
    assert "only for community staff" in texts(await harness.person(LI_JUAN, language="en").send("/households"))

    listing = await staff.tap(counts, "Yinba Compound Building 1")
    assert "Resident 950001" in texts(listing) and "room 101" in texts(listing)
    assert "Why do you revoke" in texts(await staff.tap(listing, "Revoke"))
    assert "Revoked" in texts(await staff.send("She sold the flat in October"))
    told = sent_to(await harness.deliver(), MA_GUILAN)
    assert "withdrew the verification" in texts(told) and "sold the flat" in texts(told)
    async with harness.sessions() as session:
        revoked = await session.scalar(select(Verification).where(Verification.user_id == MA_GUILAN))
        assert revoked is not None and revoked.status == VerificationStatus.REVOKED
        assert (revoked.ended_by, revoked.ended_at, revoked.end_reason) == (
            STAFF_WANG,
            harness.clock(),
            "She sold the flat in October",
        )
    assert "✅ 0 / ⏳ 1 / ❔ 2" in texts(await staff.send("/households"))
    assert "withdrew your verification" in texts(await guilan.send("/home"))


async def test_moving_to_another_building_drops_the_verification(harness: Harness) -> None:
    await import_sample_register(harness)
    guilan = await resident(harness, MA_GUILAN)
    await share_phone(guilan, GUILAN_PHONE)
    # Scanning the same building's code again changes nothing; another building ends it.
    await resident(harness, MA_GUILAN)
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.VERIFIED]
    await resident(harness, MA_GUILAN, link="jsx_yinba_11", unit="Unit 2")
    assert await status_of(harness, MA_GUILAN) == [VerificationStatus.MOVED_AWAY]
    assert "not verified yet" in texts(await guilan.send("/home"))
    # A request still waiting is withdrawn by a move as well.
    newcomer = await resident(harness, NEWCOMER)
    await ask_worker(harness, newcomer, "102")
    await resident(harness, NEWCOMER, link="jsx_xingfu_1", unit="Unit 1")
    assert await status_of(harness, NEWCOMER) == [VerificationStatus.WITHDRAWN]


# --- what verification decides -------------------------------------------------------------------------


async def report(person: Person, words: str) -> int:
    answer = await person.send("/report")
    answer = await person.tap(answer, "Blocked drain")
    if any(data.startswith("mt:") for data in callbacks(answer)):
        await person.tap(answer, "different")
    await person.send(words)
    summary = await person.send("✅ Done")
    done = await person.tap(summary, "Submit")
    async with person.harness.sessions() as session:
        number = await session.scalar(select(func.max(Ticket.id)))
    assert number is not None and f"#{number}" in texts(done)
    return number


async def test_each_gated_action_is_refused_unverified_and_allowed_once_verified(harness: Harness) -> None:
    await speak_english(harness, LI_JUAN)
    await import_sample_register(harness)
    # Anyone bound may report; the card marks a reporter who is not verified.
    guilan = await resident(harness, MA_GUILAN)
    number = await report(guilan, "Drain DESC-secret blocked by the bins")
    card = sent_to(await harness.deliver(), LI_JUAN)
    assert "household is not verified" in texts(card)

    # "Me too": an unverified neighbour learns that it was reported, not what was written, and cannot join.
    neighbour = await resident(harness, NEIGHBOUR)
    answer = await neighbour.send("/report")
    answer = await neighbour.tap(answer, "Blocked drain")
    assert f"#{number}" in texts(answer) and "DESC-secret" not in texts(answer)
    assert MeTooCb(action=MeTooAction.JOIN, ticket_id=number).pack() not in callbacks(answer)
    assert "verify yours in /home" in texts(answer)
    refused = await neighbour.press(MeTooCb(action=MeTooAction.JOIN, ticket_id=number).pack())
    assert alerted(refused) and "Only a verified household" in texts(refused)
    await neighbour.send("/cancel")
    await verify(neighbour)
    answer = await neighbour.send("/report")
    answer = await neighbour.tap(answer, "Blocked drain")
    assert "DESC-secret" in texts(answer)
    assert "joined ticket" in texts(await neighbour.tap(answer, f"#{number}"))

    # "Is it fixed?": the unverified reporter is refused; verified, she may answer and rate.
    worker = harness.person(LI_JUAN, language="en")
    await worker.press(TicketCb(action=TicketAction.ACCEPT, ticket_id=number).pack())
    await worker.press(TicketCb(action=TicketAction.RESOLVE, ticket_id=number).pack())
    await worker.send("Cleared")
    asked = sent_to(await harness.deliver(), MA_GUILAN)
    for action in (FeedbackAction.FIXED, FeedbackAction.NOT_FIXED):
        refused = await guilan.press(FeedbackCb(action=action, ticket_id=number).pack())
        assert alerted(refused) and "Only a verified household" in texts(refused)
    await share_phone(guilan, GUILAN_PHONE)
    assert "How satisfied" in texts(await guilan.tap(asked, "Yes"))
    # Rating: refused once her verification is revoked, allowed when she is verified again.
    async with harness.sessions() as session:
        mine = await session.scalar(select(Verification.id).where(Verification.user_id == MA_GUILAN))
    staff = harness.person(STAFF_WANG, language="en")
    await staff.press(household_button(HouseholdAction.REVOKE, mine or 0))
    await staff.send("checking")
    rate = FeedbackCb(action=FeedbackAction.RATE, ticket_id=number, stars=4).pack()
    assert "Only a verified household" in texts(await guilan.press(rate))
    await share_phone(guilan, GUILAN_PHONE)
    assert "you gave 4 of 5" in texts(await guilan.press(rate))
    async with harness.sessions() as session:
        saved = await session.get(Ticket, number)
        assert saved is not None and (saved.status, saved.rating) == (TicketStatus.CLOSED, 4)
        assert await session.scalar(select(func.count()).select_from(TicketFollower)) == 1

    # Voting: an unverified resident reads the survey without buttons, and a forged vote is refused.
    topic_id = await open_survey(harness)
    newcomer = await resident(harness, NEWCOMER, unit="Unit 2")
    shown = await newcomer.press(SurveyCb(topic_id=topic_id).pack())
    assert "Only verified households vote" in texts(shown) and not callbacks(shown)
    refused = await newcomer.press(SurveyCb(topic_id=topic_id, option=0).pack())
    assert alerted(refused) and "Only a verified household" in texts(refused)
    await verify(newcomer)
    assert "your vote is counted" in texts(await newcomer.press(SurveyCb(topic_id=topic_id, option=0).pack()))
    assert await votes(harness) == [(0, NEWCOMER)]


async def open_survey(harness: Harness) -> int:
    """A community-wide topic with its survey open, moved by staff through the domain."""
    now = harness.clock()
    async with harness.sessions() as session:
        topic = await deliberation.raise_by_staff(session, actor_id=STAFF_WANG, text="充电棚选址", now=now)
    async with harness.sessions() as session:
        await deliberation.draft(
            session,
            actor_id=STAFF_WANG,
            topic_id=topic.id,
            title="电动车充电棚选址",
            background="飞线充电",
            options=["3号楼东侧", "小区南门"],
            now=now,
        )
    async with harness.sessions() as session:
        await deliberation.open_survey(session, actor_id=STAFF_WANG, topic_id=topic.id, now=now)
    return topic.id


async def votes(harness: Harness) -> list[tuple[int, int]]:
    async with harness.sessions() as session:
        return [(v.option, v.user_id) for v in await session.scalars(select(SurveyVote).order_by(SurveyVote.id))]


async def test_one_vote_per_household_and_the_turnout(harness: Harness) -> None:
    await import_sample_register(harness)
    topic_id = await open_survey(harness)
    # Two members of 101, each verified by their own number.
    guilan, xiaojun = await resident(harness, MA_GUILAN), await resident(harness, MA_XIAOJUN)
    await share_phone(guilan, GUILAN_PHONE)
    await share_phone(xiaojun, XIAOJUN_PHONE)
    shown = await guilan.press(SurveyCb(topic_id=topic_id).pack())
    assert "One vote per household" in texts(shown)
    assert "your vote is counted" in texts(await guilan.press(SurveyCb(topic_id=topic_id, option=0).pack()))

    # Her son votes later: his vote replaces hers, and the survey says so to both.
    answer = await xiaojun.press(SurveyCb(topic_id=topic_id, option=1).pack())
    assert "yours replaces the one another member cast" in texts(answer)
    assert await votes(harness) == [(1, MA_XIAOJUN)]
    shown = await guilan.press(SurveyCb(topic_id=topic_id).pack())
    assert "Your household's vote, cast by another member: 小区南门" in texts(shown)

    # Another household votes; staff see two households of the eight on record.
    newcomer = await resident(harness, NEWCOMER, unit="Unit 2")
    await verify(newcomer, room="201")
    await newcomer.press(SurveyCb(topic_id=topic_id, option=0).pack())
    results = await harness.person(STAFF_WANG, language="en").press(
        TopicCb(action=TopicAction.RESULTS, topic_id=topic_id).pack()
    )
    assert "Turnout: 2 of 8 households on record voted" in texts(results)
    assert "1. 3号楼东侧: 1" in texts(results) and "2. 小区南门: 1" in texts(results)
    async with harness.sessions() as session:
        in_scope = await deliberation.survey_results(session, actor_id=STAFF_WANG, topic_id=topic_id)
    assert (in_scope.households_voted, in_scope.households_in_scope) == (2, 8)


async def test_a_survey_for_some_buildings_counts_only_their_households(
    harness: Harness, session_factory: SessionFactory
) -> None:
    await import_sample_register(harness)
    topic_id = await open_survey(harness)
    async with session_factory() as session, session.begin():
        household = await session.scalar(select(Household).where(Household.room == "301"))
        topic = await session.get(Topic, topic_id)
        assert household is not None and topic is not None
        topic.building_ids = [household.building_id]  # 银巴小区 11号楼: two households in the register
    async with session_factory() as session:
        results = await deliberation.survey_results(session, actor_id=STAFF_WANG, topic_id=topic_id)
    assert results.households_in_scope == 2


def test_the_community_file_names_the_registers_columns() -> None:
    spec = load_community_file(ROOT / "bot" / "communities" / "sample.toml")
    assert spec.register is not None and spec.register.columns["phone"] == "联系电话"
    broken = SAMPLE_TOML.replace('phone = "联系电话"', 'mobile = "联系电话"')
    with pytest.raises(CommunityFileError) as refused:
        loads_community(broken)
    assert "register: unknown key 'mobile'" in str(refused.value) and "register: phone is missing" in str(refused.value)
    without = re.sub(r"\[register\].*?(?=# ── Community staff)", "", SAMPLE_TOML, flags=re.S)
    assert "联系电话" not in without and loads_community(without).register is None
