"""What households look like: /home with the resident's verification, the phone-number step, the grid worker's
requests, staff's counts per building, the register import, and the notices about each decision.

Names and rooms are what residents typed or Telegram gave: everything is escaped. A phone number never appears.
"""

from __future__ import annotations

from datetime import tzinfo
from functools import cache
from html import escape

from aiogram.types import InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup, ReplyKeyboardRemove
from aiogram.utils.i18n import get_i18n
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import lazy_gettext as __

from bot import views
from bot.callbacks import HouseholdAction, HouseholdCb
from domain.errors import DomainError
from domain.register import Problem, RegisterProblem, RegisterReport
from domain.verification import (
    AlreadyVerified,
    BadRoom,
    BuildingCount,
    ForeignContact,
    HomeStatus,
    RequestView,
    TooManyRequests,
)
from storage.models import Building, Verification, VerificationMethod, VerificationStatus

SHARE_PHONE = __("📱 Share my phone number")
ASK_WORKER = __("✍️ Ask my grid worker instead")
NO_PHOTO = __("➡️ Send without a photo")
SHOWN_PROBLEMS = 15
MAX_BUTTONS = 90  # Telegram refuses a keyboard of more than 100 buttons


def room_label(building: Building, unit: int | None, room: str) -> str:
    """ "银巴小区 11号楼 2单元 302": where a household is."""
    return _("{place}, room {room}").format(place=views.place_label(building, unit), room=room)


def _fit(lines: list[str], tail: int = 0) -> str:
    """The lines that fit one message: a long list (a district's buildings) is cut, with "…", before its last
    ``tail`` lines."""
    body, end = lines[: len(lines) - tail], lines[len(lines) - tail :]
    if views.visible_length("\n".join(lines)) <= views.MESSAGE_LIMIT - 2:
        return "\n".join(lines)
    while len(body) > 1 and views.visible_length("\n".join([*body, "…", *end])) > views.MESSAGE_LIMIT - 2:
        body.pop()
    return "\n".join([*body, "…", *end])


def _unit_shown(building: Building, unit: int) -> int | None:
    return unit if building.units > 1 else None


def verify_hint() -> str:
    return _("To join neighbours' reports, answer “Is it fixed?” and vote in surveys, verify your household in /home.")


# --- the resident ----------------------------------------------------------------------------------------


def home_text(status: HomeStatus, tz: tzinfo) -> str:
    building = status.building
    if building is None:
        return _("You have not told me where you live yet.")
    lines = [_("🏠 You live in {place}.").format(place=escape(views.place_label(building, status.unit)))]
    if status.verified is not None:
        v = status.verified
        how = (
            _("your phone number matched the household register")
            if v.method == VerificationMethod.PHONE
            else _("confirmed by your grid worker")
        )
        lines.append(
            _("✅ Verified household: room {room} ({how}, {date}).").format(
                room=escape(v.room), how=how, date=views.local_time(v.decided_at or v.created_at, tz)[:10]
            )
        )
        lines.append(_("You can join neighbours' reports, answer “Is it fixed?”, rate, and vote for your household."))
        return "\n".join(lines)
    if status.pending is not None:
        lines.append(
            _("⏳ Waiting for your grid worker to confirm room {room} (asked {date}).").format(
                room=escape(status.pending.room), date=views.local_time(status.pending.created_at, tz)[:10]
            )
        )
        return "\n".join(lines)
    lines.append(_("❔ Your household is not verified yet."))
    if (latest := _latest_decision(status.latest)) is not None:
        lines.append(latest)
    lines.append(
        _(
            "You can report problems as you are. To join neighbours' reports, see what they wrote, answer “Is it "
            "fixed?”, rate and vote, verify your household: one tap with your phone number, or your grid worker "
            "confirms you."
        )
    )
    return "\n".join(lines)


def _latest_decision(latest: Verification | None) -> str | None:
    if latest is None:
        return None
    match latest.status:
        case VerificationStatus.DECLINED:
            return _("Your grid worker did not confirm room {room}: {reason}").format(
                room=escape(latest.room), reason=escape(latest.reason)
            )
        case VerificationStatus.REVOKED:
            return _("The community office withdrew your verification: {reason}").format(
                reason=escape(latest.end_reason)
            )
        case VerificationStatus.MOVED_OUT:
            return _("Your household is no longer in the community's household register.")
    return None


def home_keyboard(status: HomeStatus) -> InlineKeyboardMarkup:
    buttons = []
    if status.building is not None and status.verified is None:
        label = _("📱 Verify my household") if status.pending is None else _("📱 Verify again")
        buttons.append((label, HouseholdCb(action=HouseholdAction.VERIFY)))
    buttons.append((_("🏠 Change my building"), HouseholdCb(action=HouseholdAction.MOVE)))
    return views.inline_keyboard(buttons, width=1)


def contact_prompt() -> str:
    return _(
        "Tap “📱 Share my phone number” below. I compare it with the community's household register and keep "
        "only a coded fingerprint of it, never the number itself.\n"
        "Would you rather not share it? Tap “✍️ Ask my grid worker instead”.\n/cancel to stop."
    )


def contact_keyboard() -> ReplyKeyboardMarkup:
    return _contact_keyboard(get_i18n().current_locale)


@cache
def _contact_keyboard(locale: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(
        keyboard=[
            [KeyboardButton(text=str(SHARE_PHONE), request_contact=True)],
            [KeyboardButton(text=str(ASK_WORKER))],
        ],
        resize_keyboard=True,
        one_time_keyboard=True,
    )


def no_keyboard() -> ReplyKeyboardRemove:
    """Takes the phone-number buttons away while the resident types their room."""
    return ReplyKeyboardRemove()


def photo_keyboard() -> ReplyKeyboardMarkup:
    return _photo_keyboard(get_i18n().current_locale)


@cache
def _photo_keyboard(locale: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text=str(NO_PHOTO))]], resize_keyboard=True)


def verified_by_phone(verification: Verification, building: Building) -> str:
    return _(
        "✅ Verified: you speak for {place}. You can now join neighbours' reports, answer “Is it fixed?”, rate "
        "and vote for your household."
    ).format(place=escape(room_label(building, _unit_shown(building, verification.unit), verification.room)))


def no_match() -> str:
    return _(
        "This number is not in the household register of your building (or not yet). Your grid worker can "
        "confirm you instead. Which room do you live in? Just the number, e.g. 302.\n/cancel to stop."
    )


def ask_room() -> str:
    return _(
        "Your grid worker will confirm you. Which room do you live in? Just the number, e.g. 302.\n/cancel to stop."
    )


def ask_photo() -> str:
    return _(
        "If you like, add one photo that helps your grid worker recognise your home (your door plate, for "
        "example; cover anything private). Or tap “➡️ Send without a photo”."
    )


def request_sent(asked: int) -> str:
    if not asked:
        return _("Your request is saved; the community office will look at it. /home shows how it stands.")
    return _("Sent to your grid worker. I will tell you here when they have decided. /home shows how it stands.")


def contact_only() -> str:
    return _("Please tap “📱 Share my phone number” below, or “✍️ Ask my grid worker instead”, or /cancel.")


def result_notice(verification: Verification, building: Building, outcome: str) -> str:
    """What the resident is told of a decision about their household."""
    where = escape(room_label(building, _unit_shown(building, verification.unit), verification.room))
    match outcome:
        case VerificationStatus.VERIFIED:
            return _(
                "✅ Your grid worker confirmed your household: {place}. You can now join neighbours' reports, "
                "answer “Is it fixed?”, rate and vote."
            ).format(place=where)
        case VerificationStatus.DECLINED:
            return _("Your grid worker could not confirm {place}: {reason}\n/home to try again.").format(
                place=where, reason=escape(verification.reason)
            )
    return _("The community office withdrew the verification of your household ({place}): {reason}").format(
        place=where, reason=escape(verification.end_reason)
    )


# --- the grid worker -------------------------------------------------------------------------------------


def request_text(view: RequestView, tz: tzinfo) -> str:
    v, building = view.verification, view.building
    lines = [
        _("🏠 <b>Verification request #{number}</b>").format(number=v.id),
        _("Resident: {name}").format(name=escape(v.name or "?")),
        _("Says they live in: {place}").format(
            place=escape(room_label(building, _unit_shown(building, v.unit), v.room))
        ),
    ]
    if view.in_register:
        names = "、".join(escape(n) for n in view.register_names) or "—"
        lines.append(_("The register lists this room with: {names}").format(names=names))
    else:
        lines.append(_("This room is not in the household register."))
    lines.append(_("Asked: {date}").format(date=views.local_time(v.created_at, tz)))
    if v.photo_file_id:
        lines.append(_("📷 The resident added a photo."))
    return "\n".join(lines)


def request_keyboard(verification_id: int) -> InlineKeyboardMarkup:
    return views.inline_keyboard(
        [
            (_("✅ Verify"), HouseholdCb(action=HouseholdAction.APPROVE, id=verification_id)),
            (_("✖️ Decline"), HouseholdCb(action=HouseholdAction.DECLINE, id=verification_id)),
        ]
    )


def pending_text(found: list[Verification]) -> str:
    if not found:
        return _("No verification requests are waiting in your grids.")
    return _("<b>Verification requests</b> waiting in your grids, oldest first. Tap one to open it:")


def pending_keyboard(found: list[Verification]) -> InlineKeyboardMarkup | None:
    if not found:
        return None
    return views.inline_keyboard(
        [(f"#{v.id} {v.room} · {v.name}", HouseholdCb(action=HouseholdAction.OPEN, id=v.id)) for v in found], width=1
    )


def workers_only() -> str:
    return _("Sorry, verification requests are only for grid workers and community staff.")


def approved(verification: Verification) -> str:
    return _("Verified: {name} now speaks for room {room}. They have been told.").format(
        name=escape(verification.name), room=escape(verification.room)
    )


def decline_prompt() -> str:
    return _("Why do you decline? The resident is told your reason.")


def declined() -> str:
    return _("Declined. The resident has been told your reason.")


# --- community staff -------------------------------------------------------------------------------------


def staff_only() -> str:
    return _("Sorry, this is only for community staff.")


def counts_text(counts: list[BuildingCount]) -> str:
    lines = [
        _("<b>Households by building</b>"),
        _("households on record · residents ✅ verified / ⏳ waiting / ❔ not verified"),
    ]
    lines += [
        _("{place}: {households} · ✅ {verified} / ⏳ {pending} / ❔ {unverified}").format(
            place=escape(views.place_label(c.building, None)),
            households=c.households,
            verified=c.verified,
            pending=c.pending,
            unverified=c.unverified,
        )
        for c in counts
    ]
    lines.append(_("Tap a building to see its verified residents (and revoke one)."))
    return _fit(lines, tail=1)


def counts_keyboard(counts: list[BuildingCount]) -> InlineKeyboardMarkup:
    return views.inline_keyboard(
        [
            (views.place_label(c.building, None), HouseholdCb(action=HouseholdAction.BUILDING, id=c.building.id))
            for c in counts
            if c.verified
        ][:MAX_BUTTONS],
        width=2,
    )


def verified_text(building: Building, found: list[Verification], tz: tzinfo) -> str:
    lines = [_("<b>{place}</b>: verified residents").format(place=escape(views.place_label(building, None)))]
    if not found:
        lines.append(_("Nobody is verified here yet."))
    for v in found:
        how = _("phone") if v.method == VerificationMethod.PHONE else _("grid worker")
        lines.append(
            f"{escape(room_label(building, _unit_shown(building, v.unit), v.room))} · {escape(v.name)} "
            f"({how}, {views.local_time(v.decided_at or v.created_at, tz)[:10]})"
        )
    return _fit(lines)


def verified_keyboard(found: list[Verification]) -> InlineKeyboardMarkup | None:
    if not found:
        return None
    return views.inline_keyboard(
        [
            (
                _("↩️ Revoke {room} · {name}").format(room=v.room, name=v.name),
                HouseholdCb(action=HouseholdAction.REVOKE, id=v.id),
            )
            for v in found[:MAX_BUTTONS]
        ],
        width=1,
    )


def revoke_prompt() -> str:
    return _("Why do you revoke this verification? The resident is told your reason.")


def revoked() -> str:
    return _("Revoked. The resident has been told your reason.")


def register_prompt() -> str:
    return _(
        "Send the household register (居民台账) as a document: a CSV or Excel .xlsx file with the column headings "
        "the community file's [register] section names. Rooms missing from it are marked moved out.\n/cancel to stop."
    )


def register_too_big() -> str:
    return _("That file is too large for a register (at most 10 MB). Please send the CSV or .xlsx file itself.")


def register_done(report: RegisterReport) -> str:
    return _(
        "Register imported: {rows} rows, {households} households ({created} new, {returned} back, {updated} "
        "changed). {moved_out} moved out; {unverified} residents are no longer verified."
    ).format(
        rows=report.rows,
        households=report.households,
        created=report.created,
        returned=report.returned,
        updated=report.updated,
        moved_out=report.moved_out,
        unverified=report.unverified,
    )


def register_problems(problems: list[RegisterProblem]) -> str:
    lines = [_("Nothing was imported: the register has {count} problem(s).").format(count=len(problems))]
    lines += [_problem(p) for p in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(_("… and {count} more.").format(count=len(problems) - SHOWN_PROBLEMS))
    return "\n".join(lines)


def _problem(problem: RegisterProblem) -> str:
    what = {
        Problem.UNREADABLE: _("the file cannot be read as CSV (UTF-8 or GBK) or as an Excel .xlsx workbook"),
        Problem.NO_SHEET: _("the workbook has no sheet named “{value}”"),
        Problem.EMPTY: _("the file is empty"),
        Problem.NO_COLUMN: _("no column has the heading “{value}” that [register] names"),
        Problem.COMPOUND: _("no compound of the community is called “{value}”"),
        Problem.BUILDING: _("the community file has no building “{value}”"),
        Problem.AMBIGUOUS: _("several compounds have a building “{value}”: add the compound column"),
        Problem.UNIT: _("“{value}” is not a unit of that building"),
        Problem.ROOM: _("the room “{value}” is missing or too long"),
    }[problem.kind].format(value=escape(problem.value))
    if problem.line:
        return _("Line {line}: {what}").format(line=problem.line, what=what)
    return what


def register_unset() -> str:
    return _(
        "The bot cannot import a register yet: the community file needs a [register] section naming its "
        "columns, and the operator must set HOUSEHOLD_PHONE_SECRET."
    )


def refusal(error: DomainError) -> str:
    if isinstance(error, ForeignContact):
        return _("That is not your own contact. Please tap “📱 Share my phone number” to share your own.")
    if isinstance(error, AlreadyVerified):
        return _("Your household is verified already. /home shows it.")
    if isinstance(error, BadRoom):
        return _("Please write just your room number, e.g. 302.")
    if isinstance(error, TooManyRequests):
        return _("You have asked your grid worker three times today. Please wait for an answer, or try tomorrow.")
    return views.refusal(error)
