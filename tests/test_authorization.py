"""The authorization matrix: every action × every role that must not do it, through the real dispatcher.

``FORBIDDEN`` is the one table. Each row is an action (a button of ``bot/callbacks.py``, one per value of its
action enum, or a command of the routers) with the roles that must not do it. For every pair the role presses
the forged button with the real ids of a ticket or topic the action applies to (or sends the command), types
whatever the action would ask for next, and then:

- nothing changed: tickets, their history, households and photos, topics and their history, tasks, votes,
  broadcasts, the outbox, the duties and everybody else's user record are row for row as before;
- nothing leaked: no internal reason (hand-back, escalation, send-down, why a topic was raised), no description
  of a ticket the role may not see, and no resident's name is in anything the bot sent them;
- they were answered, not met with silence.

``test_the_table_lists_every_action`` derives the actions from the callback factories and the routers and fails
for an action that is neither in the table nor in ``OPEN_TO_EVERYONE``: whoever adds a button adds its row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.methods import TelegramMethod
from sqlalchemy import select

from bot import callbacks, views
from bot.callbacks import (
    BroadcastAction,
    BroadcastCb,
    EscalateCb,
    FeedbackAction,
    FeedbackCb,
    HouseholdAction,
    HouseholdCb,
    MeTooAction,
    MeTooCb,
    StatsAction,
    StatsCb,
    SurveyCb,
    TicketAction,
    TicketCb,
    TopicAction,
    TopicCb,
)
from bot.i18n import create_i18n
from domain import confirmation, deliberation, escalation, followers, tickets, verification
from domain.community_file import import_community, loads_community
from domain.directory import Directory
from domain.errors import AccessDenied, DomainError, HandledElsewhere
from domain.people import touch_user
from domain.stats import Month
from handlers import ROUTERS, detached_routers
from storage.models import (
    Base,
    Broadcast,
    Building,
    Category,
    Community,
    Compound,
    Level,
    Ticket,
    TopicStatus,
    TopicTask,
    User,
    Verification,
    VerificationStatus,
)
from tests.conftest import FakeClock
from tests.fake_telegram import buttons_of, reply_buttons_of, text_of
from tests.harness import Harness
from tests.households import verify_household
from tests.test_community_import import SMALL

REPORTER, FOLLOWER, ELSEWHERE, NEIGHBOUR = 910001, 910002, 910003, 910004
UNVERIFIED, CLAIMANT = 910005, 910006
REPORTER_NAME, FOLLOWER_NAME = "Reporter-Name-居民甲", "Follower-Name-居民乙"
CLAIMANT_NAME = "Claimant-Name-居民丙"  # waits for the grid worker to verify them
LI_JUAN, ZHANG_WEI, YANG_MIN = 200001, 200003, 200011
STAFF_WANG, STAFF_LIU = 100001, 100002
STREET_CHEN, HOUSING_HAN, POWER_BAI = 500001, 600001, 600011
OTHER_STAFF = 700001  # of a second community, 测试社区
STRANGERS = itertools.count(990001)  # a new one for every pair: someone who never talked to the bot

ASSIGNEE = 0  # Action.by: whoever the target ticket is assigned to
ALL_LEVELS = (Level.GRID, Level.COMMUNITY, Level.STREET, Level.DEPARTMENT)


# --- the roles -----------------------------------------------------------------------------------------------


class Role(StrEnum):
    REPORTER = "the reporter"
    HOUSEHOLD = "a household that joined the ticket"
    ELSEWHERE = "a resident of another building"
    UNVERIFIED = "a resident of the ticket's building whose household is not verified"
    OTHER_GRID = "a worker of another grid"
    COLLEAGUE = "a worker of the ticket's grid who does not handle it"
    OWN_GRID = "the ticket's grid worker, once it is above the grid"
    OWN_STAFF = "the community's staff, once it is above the community"
    OTHER_STAFF = "staff of another community"
    STREET = "the street office, below its level"
    DEPARTMENT = "a department, below its level"
    OTHER_DEPARTMENT = "another department"
    STRANGER = "a stranger (never talked to the bot, not bound)"


# The tickets of the seeded world (see ``seed``), all reported by REPORTER in 银巴小区 1号楼 (grid 1): open at the
# grid, community office, street office or a department, waiting (A) or in progress (P); resolved; closed;
# taken to the deliberation (TD); and three of one category that made the bot propose a candidate (N1-N3).
TICKET_KEYS = ("GA", "GP", "CA", "CP", "SA", "SP", "DA", "DP", "RES", "CLOSED", "TD", "N1", "N2", "N3")
ABOVE_STREET = frozenset({"SA", "SP", "DA", "DP"})
AT_DEPARTMENT = frozenset({"DA", "DP"})
SUGGESTIONS = ("COLLECTED", "DRAFTED", "SURVEYED", "VOTED", "APPLIED", "FEEDBACK")


@dataclass(frozen=True)
class Who:
    user_id: int | None  # None: a stranger
    # On a ticket's worker actions, the levels at which they have no say (for a target at one of them).
    outside: tuple[str, ...] = ALL_LEVELS
    worker_of: frozenset[str] = frozenset()  # tickets they may see as a worker: description and reasons
    resident_of: frozenset[str] = frozenset()  # tickets they may see as a resident: the description
    topic_notes: frozenset[str] = frozenset()  # topics whose origin (suggestion, reason) they may read
    name: str = ""
    verifies: bool = False  # may see the verification requests of grid 1 (its workers, the community's staff)


EVERY_TICKET = frozenset(TICKET_KEYS)
ROLES: dict[Role, Who] = {
    Role.REPORTER: Who(REPORTER, resident_of=EVERY_TICKET, topic_notes=frozenset(SUGGESTIONS), name=REPORTER_NAME),
    Role.HOUSEHOLD: Who(FOLLOWER, resident_of=frozenset({"GA"}), name=FOLLOWER_NAME),
    Role.ELSEWHERE: Who(ELSEWHERE),
    Role.UNVERIFIED: Who(UNVERIFIED),
    Role.OTHER_GRID: Who(YANG_MIN),
    Role.COLLEAGUE: Who(ZHANG_WEI, worker_of=EVERY_TICKET, verifies=True),
    Role.OWN_GRID: Who(
        LI_JUAN, (Level.COMMUNITY, Level.STREET, Level.DEPARTMENT), worker_of=EVERY_TICKET, verifies=True
    ),
    Role.OWN_STAFF: Who(
        STAFF_WANG,
        (Level.STREET, Level.DEPARTMENT),
        worker_of=EVERY_TICKET,
        topic_notes=frozenset((*SUGGESTIONS, "TD")),
        verifies=True,
    ),
    Role.OTHER_STAFF: Who(OTHER_STAFF),
    Role.STREET: Who(STREET_CHEN, (Level.GRID, Level.COMMUNITY), worker_of=ABOVE_STREET),
    Role.DEPARTMENT: Who(HOUSING_HAN, (Level.GRID, Level.COMMUNITY, Level.STREET), worker_of=AT_DEPARTMENT),
    Role.OTHER_DEPARTMENT: Who(POWER_BAI),
    Role.STRANGER: Who(None),
}


def secrets(who: Who) -> set[str]:
    """What must not reach this role: markers seeded into descriptions, reasons, topic origins and names."""
    found = {FOLLOWER_NAME, REPORTER_NAME} - {who.name}
    if not who.verifies:
        found.add(CLAIMANT_NAME)
    for key in TICKET_KEYS:
        if key not in who.worker_of:
            found |= {f"HB-{key}", f"UP-{key}", f"DOWN-{key}"}
            if key not in who.resident_of:
                found.add(f"DESC-{key}")
    found |= {f"NOTE-{key}" for key in (*SUGGESTIONS, "TD") if key not in who.topic_notes}
    return found


# --- the actions ---------------------------------------------------------------------------------------------


@dataclass
class World:
    """The ids of what the seed made, by key."""

    tickets: dict[str, int] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)
    task: int = 0  # a task of the APPLIED topic
    survey_broadcast: int = 0  # the invitation to the SURVEYED topic's survey
    community: int = 0  # the sample community's id, for /stats buttons
    # Households: "REQUEST" the claimant's pending verification, "VERIFIED" the reporter's, "BUILDING" 银巴小区 1号楼.
    households: dict[str, int] = field(default_factory=dict)


LEVEL_OF = {  # the level of an open ticket, by the first letter of its key
    "G": Level.GRID,
    "C": Level.COMMUNITY,
    "S": Level.STREET,
    "D": Level.DEPARTMENT,
}


@dataclass(frozen=True)
class Action:
    data: Callable[[World, str], str]  # the forged button's callback data, or the command, for a target
    targets: tuple[str, ...] = ("",)  # world keys the action applies to, in order of preference
    worker: bool = False  # a ticket worker's action: the target is at a level the role has no say at
    typed: tuple[str, ...] = ()  # what the action asks for next, typed in order
    before: tuple[str, ...] = ()  # what brings the role to where the button is shown
    # Who may do it to targets[0]: the control that the forged button is live (ASSIGNEE: the ticket's assignee).
    # None only where no one can without a step the matrix does not take.
    by: int | None = ASSIGNEE

    def target(self, who: Who) -> str | None:
        if not self.worker:
            return self.targets[0]
        return next((t for t in self.targets if LEVEL_OF[t[0]] in who.outside), None)


def ticket_button(action: TicketAction, targets: tuple[str, ...], *typed: str) -> Action:
    return Action(
        lambda w, t: TicketCb(action=action, ticket_id=w.tickets[t]).pack(), targets, worker=True, typed=typed
    )


def escalate_to(level: str, department: str, targets: tuple[str, ...]) -> Action:
    return Action(
        lambda w, t: EscalateCb(ticket_id=w.tickets[t], level=level, department=department).pack(),
        targets,
        worker=True,
        typed=("probe: escalation reason",),
    )


def feedback(action: FeedbackAction, target: str, *typed: str, by: int | None = REPORTER) -> Action:
    return Action(
        lambda w, t: FeedbackCb(action=action, ticket_id=w.tickets[t], stars=5).pack(), (target,), typed=typed, by=by
    )


def topic_button(action: TopicAction, target: str, *typed: str) -> Action:
    return Action(
        lambda w, t: TopicCb(action=action, topic_id=w.topics[t], task_id=w.task).pack(),
        (target,),
        typed=typed,
        by=STAFF_WANG,
    )


def broadcast(action: BroadcastAction) -> Action:
    return Action(
        lambda w, t: BroadcastCb(action=action, kind="agenda", broadcast_id=w.survey_broadcast).pack(), by=STAFF_WANG
    )


def stats_button(action: StatsAction, by: int = STAFF_WANG) -> Action:
    """The sample community's figures for November, the month the seeded tickets were filed in."""
    month = Month(2026, 11).index
    return Action(lambda w, t: StatsCb(action=action, community_id=w.community, month=month).pack(), by=by)


def household(action: HouseholdAction, target: str, *typed: str, by: int = STAFF_WANG) -> Action:
    return Action(lambda w, t: HouseholdCb(action=action, id=w.households[t]).pack(), (target,), typed=typed, by=by)


def command(text: str, *typed: str, by: int = STAFF_WANG) -> Action:
    return Action(lambda w, t: text, typed=typed, by=by)


OPEN_TICKETS = ("GA", "GP", "CA", "CP", "SA", "SP", "DA", "DP")
REASON = "probe: a reason"

EVERYONE = frozenset(Role)
NOT_STAFF = EVERYONE - {Role.OWN_STAFF}
NOT_HOUSEHOLD = EVERYONE - {Role.REPORTER}  # of RES and CLOSED, which nobody joined; /my: all but the reporter
# They live in 银巴小区, where the surveyed topic applies, as verified households; the unverified resident there
# may read the survey but not vote.
IN_SCOPE = frozenset({Role.REPORTER, Role.HOUSEHOLD})
# Verification requests of grid 1: its workers and the community's staff decide them.
VERIFIERS = frozenset({Role.OWN_GRID, Role.COLLEAGUE, Role.OWN_STAFF})
# Open and History: who may not see the ticket at all, and its households, who must get the resident's view.
CANNOT_SEE = frozenset(
    {
        Role.REPORTER,
        Role.HOUSEHOLD,
        Role.ELSEWHERE,
        Role.OTHER_GRID,
        Role.OTHER_STAFF,
        Role.STREET,
        Role.DEPARTMENT,
        Role.OTHER_DEPARTMENT,
        Role.STRANGER,
    }
)
UNBOUND = EVERYONE - {Role.REPORTER, Role.HOUSEHOLD, Role.ELSEWHERE}
# The month's figures: the community's staff and its street office; a grid worker only their own row (no chart,
# no spreadsheet). Another community's staff get their own community's from /stats, never this one's.
GRID_WORKERS = frozenset({Role.OWN_GRID, Role.COLLEAGUE, Role.OTHER_GRID})
NO_FIGURES = EVERYONE - {Role.OWN_STAFF, Role.STREET} - GRID_WORKERS
UNBOUND = EVERYONE - {Role.REPORTER, Role.HOUSEHOLD, Role.ELSEWHERE, Role.UNVERIFIED}

# The table: action → the roles that must not do it (with what it applies to and what it asks for).
FORBIDDEN: dict[str, tuple[Action, frozenset[Role]]] = {
    "TicketCb.OPEN": (ticket_button(TicketAction.OPEN, ("GA", "GP", "CP", "SP", "DP")), CANNOT_SEE),
    "TicketCb.HISTORY": (ticket_button(TicketAction.HISTORY, ("GP", "GA", "CP", "SP", "DP")), CANNOT_SEE),
    "TicketCb.ACCEPT": (ticket_button(TicketAction.ACCEPT, ("GA", "CA", "SA", "DA")), EVERYONE),
    "TicketCb.HAND_BACK": (ticket_button(TicketAction.HAND_BACK, OPEN_TICKETS, REASON), EVERYONE),
    "TicketCb.NOTE": (ticket_button(TicketAction.NOTE, ("GP", "CP", "SP", "DP"), "probe: a note"), EVERYONE),
    "TicketCb.RESOLVE": (ticket_button(TicketAction.RESOLVE, ("GP", "CP", "SP", "DP"), "probe: done"), EVERYONE),
    "TicketCb.ESCALATE": (ticket_button(TicketAction.ESCALATE, ("GP", "GA", "CP", "CA", "SP", "SA"), REASON), EVERYONE),
    "TicketCb.SEND_DOWN": (
        ticket_button(TicketAction.SEND_DOWN, ("CP", "CA", "SP", "SA", "DP", "DA"), REASON),
        EVERYONE,
    ),
    # A grid worker of the ticket's grid may take it to the deliberation while it is at the grid.
    "TicketCb.DELIBERATE": (ticket_button(TicketAction.DELIBERATE, OPEN_TICKETS, REASON), EVERYONE - {Role.COLLEAGUE}),
    # At the grid staff may step in, and the ticket's grid worker is at her own level: neither is forbidden.
    "EscalateCb:community": (escalate_to("community", "", ("GP", "GA")), EVERYONE - {Role.OWN_GRID, Role.OWN_STAFF}),
    "EscalateCb:street": (escalate_to("street", "", ("CP", "CA")), EVERYONE - {Role.OWN_STAFF}),
    "EscalateCb:department": (
        escalate_to("department", "housing", ("CP", "CA", "SP", "SA")),
        EVERYONE - {Role.OWN_STAFF},
    ),
    "FeedbackCb.FIXED": (feedback(FeedbackAction.FIXED, "RES"), NOT_HOUSEHOLD),
    "FeedbackCb.NOT_FIXED": (feedback(FeedbackAction.NOT_FIXED, "RES", "probe: still broken"), NOT_HOUSEHOLD),
    "FeedbackCb.RATE": (feedback(FeedbackAction.RATE, "CLOSED", "probe: a comment"), NOT_HOUSEHOLD),
    # "Add a comment" is live only after one's own rating (test_confirmation); for everyone else it changes nothing.
    "FeedbackCb.COMMENT": (feedback(FeedbackAction.COMMENT, "CLOSED", "probe: a comment", by=None), NOT_HOUSEHOLD),
    # "Me too" is offered inside the report wizard; the reporter may not join their own ticket.
    "MeTooCb.JOIN": (
        Action(
            lambda w, t: MeTooCb(action=MeTooAction.JOIN, ticket_id=w.tickets[t]).pack(),
            ("GA",),
            before=("/report",),
            by=NEIGHBOUR,
        ),
        EVERYONE,
    ),
    "TopicCb.OPEN": (topic_button(TopicAction.OPEN, "TD"), NOT_STAFF),
    "TopicCb.ACCEPT": (topic_button(TopicAction.ACCEPT, "CANDIDATE"), NOT_STAFF),
    "TopicCb.DISMISS": (topic_button(TopicAction.DISMISS, "COLLECTED", REASON), NOT_STAFF),
    "TopicCb.DRAFT": (
        topic_button(TopicAction.DRAFT, "COLLECTED", "probe title", "probe background", "A\nB"),
        NOT_STAFF,
    ),
    "TopicCb.OPEN_SURVEY": (topic_button(TopicAction.OPEN_SURVEY, "DRAFTED"), NOT_STAFF),
    "TopicCb.RESULTS": (topic_button(TopicAction.RESULTS, "SURVEYED"), NOT_STAFF),
    "TopicCb.RECORD_VOTE": (topic_button(TopicAction.RECORD_VOTE, "SURVEYED", "probe decision", "3 1 0"), NOT_STAFF),
    "TopicCb.ADD_TASK": (
        topic_button(TopicAction.ADD_TASK, "VOTED", "probe task", "probe party", "2026-12-20"),
        NOT_STAFF,
    ),
    "TopicCb.PROGRESS": (topic_button(TopicAction.PROGRESS, "APPLIED", "50", "probe progress"), NOT_STAFF),
    "TopicCb.FEEDBACK": (topic_button(TopicAction.FEEDBACK, "APPLIED"), NOT_STAFF),
    "TopicCb.NOTICE": (topic_button(TopicAction.NOTICE, "FEEDBACK"), NOT_STAFF),
    # Only residents in the topic's scope see and vote.
    "SurveyCb:view": (
        Action(lambda w, t: SurveyCb(topic_id=w.topics[t]).pack(), ("SURVEYED",), by=REPORTER),
        EVERYONE - IN_SCOPE - {Role.UNVERIFIED},
    ),
    "SurveyCb:vote": (
        Action(lambda w, t: SurveyCb(topic_id=w.topics[t], option=0).pack(), ("SURVEYED",), by=REPORTER),
        EVERYONE - IN_SCOPE,
    ),
    # Households: a resident's verification request is decided by its grid's workers or the community's staff (a
    # worker of another grid is refused); only staff see verified residents and revoke a verification.
    "HouseholdCb.OPEN": (household(HouseholdAction.OPEN, "REQUEST", by=LI_JUAN), EVERYONE - VERIFIERS),
    "HouseholdCb.DECLINE": (household(HouseholdAction.DECLINE, "REQUEST", REASON, by=LI_JUAN), EVERYONE - VERIFIERS),
    "HouseholdCb.APPROVE": (household(HouseholdAction.APPROVE, "REQUEST", by=LI_JUAN), EVERYONE - VERIFIERS),
    "HouseholdCb.BUILDING": (household(HouseholdAction.BUILDING, "BUILDING"), NOT_STAFF),
    "HouseholdCb.REVOKE": (household(HouseholdAction.REVOKE, "VERIFIED", REASON), NOT_STAFF),
    # Another community's staff preview and send their own community's broadcasts (nothing of this one's).
    "BroadcastCb.PREVIEW": (broadcast(BroadcastAction.PREVIEW), NOT_STAFF),
    "BroadcastCb.SEND_NOW": (broadcast(BroadcastAction.SEND_NOW), NOT_STAFF - {Role.OTHER_STAFF}),
    "BroadcastCb.PROGRESS": (broadcast(BroadcastAction.PROGRESS), NOT_STAFF),
    # Commands: the staff's ones, and the lists that must show nobody else's tickets.
    "/tickets": (command("/tickets", by=LI_JUAN), EVERYONE - {Role.COLLEAGUE, Role.OWN_GRID, Role.OWN_STAFF}),
    "/my": (command("/my", by=REPORTER), NOT_HOUSEHOLD),
    "/ledger": (command("/ledger"), NOT_STAFF),
    "/topics": (command("/topics"), NOT_STAFF),
    "/broadcasts": (command("/broadcasts"), NOT_STAFF),
    "/stats": (command("/stats"), NO_FIGURES),
    "StatsCb.SHOW": (stats_button(StatsAction.SHOW), NO_FIGURES),
    "StatsCb.CHART": (stats_button(StatsAction.CHART), NO_FIGURES | GRID_WORKERS),
    "StatsCb.SPREADSHEET": (stats_button(StatsAction.SPREADSHEET), NO_FIGURES | GRID_WORKERS),
    # The street office's communities ranked against each other: only the street office, never a community's staff.
    "StatsCb.STREET": (stats_button(StatsAction.STREET, by=STREET_CHEN), EVERYONE - {Role.STREET}),
    # Another community's staff write topics for their own community.
    "/newtopic": (command("/newtopic", "probe: a topic"), NOT_STAFF - {Role.OTHER_STAFF}),
    "/suggest": (command("/suggest", "probe: a suggestion", by=REPORTER), UNBOUND),
    "/verify": (command("/verify", by=LI_JUAN), EVERYONE - VERIFIERS),
    "/households": (command("/households"), NOT_STAFF),
    # Another community's staff import their own community's register.
    "/register": (command("/register", "probe: not a file"), NOT_STAFF - {Role.OTHER_STAFF}),
    "/report": (command("/report", "probe: a problem", by=REPORTER), UNBOUND),
}

# Actions anyone may take, and why no role is refused: each acts only on the presser's own record or wizard.
OPEN_TO_EVERYONE = {
    "LanguageCb": "one's own language",
    "SettingsCb.BROADCASTS_ON": "one's own broadcast setting",
    "SettingsCb.BROADCASTS_OFF": "one's own broadcast setting",
    "SettingsCb.PUBLIC_COPY_ON": "one's own broadcast setting",
    "SettingsCb.PUBLIC_COPY_OFF": "one's own broadcast setting",
    "PlaceCb.COMMUNITY": "lists the compounds anyone may live in",
    "PlaceCb.COMPOUND": "lists the buildings anyone may live in",
    "PlaceCb.BUILDING": "binds the presser to where they live",
    "PlaceCb.UNIT": "binds the presser to where they live",
    "CategoryCb": "a step of the presser's own report wizard (the id is checked against their community)",
    "MeTooCb.DIFFERENT": "goes on with the presser's own report",
    "/start": "greeting and binding oneself",
    "/home": "one's own home and verification",
    "HouseholdCb.VERIFY": "verifying one's own household (the contact must be one's own, checked in the domain)",
    "HouseholdCb.MOVE": "lists the places anyone may live in",
    "/help": "the list of commands",
    "/language": "one's own language",
    "/cancel": "ends one's own step",
    "/settings": "one's own broadcast setting",
    "StatsCb.DEFINITIONS": "how the figures are counted: the same text for everyone, no figures",
}


def button_actions() -> set[str]:
    """Every button: each CallbackData factory, once per value of its action enum if it has one."""
    found: set[str] = set()
    for factory in vars(callbacks).values():
        if not (isinstance(factory, type) and issubclass(factory, CallbackData) and factory is not CallbackData):
            continue
        enums = [
            f.annotation
            for f in factory.model_fields.values()
            if isinstance(f.annotation, type) and issubclass(f.annotation, StrEnum)
        ]
        found |= {f"{factory.__name__}.{member.name}" for enum in enums for member in enum} or {factory.__name__}
    return found


def commands() -> set[str]:
    detached_routers()
    return {
        f"/{name}"
        for router in ROUTERS
        for handler in router.message.handlers
        for found in handler.filters or ()
        if isinstance(found.callback, Command)
        for name in found.callback.commands
        if isinstance(name, str)
    }


def test_the_table_lists_every_action() -> None:
    existing = button_actions() | commands()
    listed = {key.split(":")[0] for key in FORBIDDEN}
    assert not listed & OPEN_TO_EVERYONE.keys()
    missing = existing - listed - OPEN_TO_EVERYONE.keys()
    assert not missing, f"add a row to FORBIDDEN (or to OPEN_TO_EVERYONE, saying why) for {sorted(missing)}"
    unknown = (listed | OPEN_TO_EVERYONE.keys()) - existing
    assert not unknown, f"the table lists actions that no longer exist: {sorted(unknown)}"
    for key, (action, roles) in FORBIDDEN.items():
        for role in roles:
            assert action.target(ROLES[role]) is not None, f"{key}: nothing to forge for {role}"


# --- the seeded world ----------------------------------------------------------------------------------------


class Seed:
    """Builds the world through the domain, the way the people in it would have."""

    def __init__(self, harness: Harness, clock: FakeClock) -> None:
        self.sessions, self.clock = harness.sessions, clock
        self.world = World()

    async def do(self, step: Callable[..., Any], **arguments: Any) -> Any:
        async with self.sessions() as session:
            return await step(session, now=self.clock(), **arguments)

    async def assignee(self, key: str) -> int:
        async with self.sessions() as session:
            ticket = await session.get(Ticket, self.world.tickets[key])
            assert ticket is not None and ticket.assignee_id is not None
            return ticket.assignee_id

    async def file(self, key: str, code: str) -> None:
        async with self.sessions() as session:
            category = await session.scalar(
                select(Category).join(Community).where(Category.code == code, Community.code == "jsx")
            )
        assert category is not None
        async with self.sessions() as session:
            reporter = await touch_user(session, REPORTER, REPORTER_NAME, "zh-hans", self.clock())
            home = await Directory().home(session, reporter)
            assert home is not None
            draft = tickets.ReportDraft(category_id=category.id, description=f"{code} DESC-{key}")
            filed = await tickets.file_report(
                session, reporter=reporter, building=home, category=category, draft=draft, now=self.clock()
            )
        self.world.tickets[key] = filed.ticket.id

    async def act(self, key: str, step: Callable[..., Any], **arguments: Any) -> None:
        """The ticket's current assignee takes the step."""
        actor = await self.assignee(key)
        await self.do(step, actor_id=actor, ticket_id=self.world.tickets[key], **arguments)

    async def up(self, key: str, level: Level, department: str | None = None) -> None:
        await self.act(key, escalation.escalate, level=level, department=department, reason=f"UP-{key}")

    async def ticket_at(self, key: str, code: str, level: Level, accepted: bool) -> None:
        """A ticket escalated from the grid to ``level``, each step with its reason."""
        await self.file(key, code)
        await self.act(key, tickets.accept)
        await self.up(key, Level.COMMUNITY)
        if level in (Level.STREET, Level.DEPARTMENT):
            await self.act(key, tickets.accept)
            await self.up(key, Level.STREET)
        if level == Level.DEPARTMENT:
            await self.act(key, tickets.accept)
            await self.up(key, Level.DEPARTMENT, "housing")
        if accepted:
            await self.act(key, tickets.accept)

    async def suggestion(self, key: str, until: TopicStatus) -> None:
        """The reporter's suggestion, moved by staff (Liu, who is no role here) to step ``until``."""
        topic = await self.do(deliberation.suggest, user_id=REPORTER, text=f"NOTE-{key}")
        self.world.topics[key] = topic_id = topic.id
        steps: list[tuple[TopicStatus, Callable[..., Any], dict[str, Any]]] = [
            (
                TopicStatus.DRAFTED,
                deliberation.draft,
                {"title": f"title {key}", "background": "background", "options": ["A", "B"]},
            ),
            (TopicStatus.SURVEYED, deliberation.open_survey, {}),
            (TopicStatus.VOTED, deliberation.record_decision, {"decision": "decision", "votes": (5, 1, 0)}),
            (
                TopicStatus.APPLIED,
                deliberation.add_task,
                {"title": "task", "responsible": "物业", "due_on": date(2026, 12, 20)},
            ),
            (TopicStatus.FEEDBACK, deliberation.start_feedback, {}),
        ]
        for status, step, arguments in steps:
            if TopicStatus.steps().index(status) > TopicStatus.steps().index(until):
                break
            await self.do(step, actor_id=STAFF_LIU, topic_id=topic_id, **arguments)


async def people(harness: Harness, clock: FakeClock) -> None:
    """The residents, and a second community with its own staff (and workers who are nobody here)."""
    small = SMALL.replace("100001", str(OTHER_STAFF)).replace("200001", "700011").replace("200002", "700012")
    async with harness.sessions() as session:
        await import_community(session, loads_community(small), clock())
    async with harness.sessions() as session, session.begin():
        for user_id, name, compound, building in (
            (REPORTER, REPORTER_NAME, "yinba", "1"),
            (FOLLOWER, FOLLOWER_NAME, "yinba", "1"),
            (ELSEWHERE, "resident", "chaoyang", "1"),
            (NEIGHBOUR, "neighbour", "yinba", "1"),
            (UNVERIFIED, "unverified", "yinba", "1"),
            (CLAIMANT, CLAIMANT_NAME, "yinba", "1"),
        ):
            home = await session.scalar(
                select(Building.id).join(Compound).where(Compound.code == compound, Building.code == building)
            )
            session.add(User(id=user_id, full_name=name, building_id=home, unit=1, created_at=clock()))
    # Who speaks for a household: the reporter, the household that joins, the neighbour (the control of "me too")
    # and the resident elsewhere; the claimant waits for the grid worker.
    for user_id in (REPORTER, FOLLOWER, NEIGHBOUR, ELSEWHERE):
        await verify_household(harness.sessions, user_id, clock(), room=str(user_id % 1000))


async def seed(harness: Harness, clock: FakeClock) -> World:
    await people(harness, clock)
    s = Seed(harness, clock)
    async with harness.sessions() as session:
        s.world.community = await session.scalar(select(Community.id).where(Community.code == "jsx")) or 0
    # At the grid: waiting (after a hand-back, with a household that joined), and in progress after a trip up
    # and down the ladder, so its history holds every kind of internal reason.
    await s.file("GA", "flying-lead")
    await s.act("GA", tickets.hand_back, reason="HB-GA")
    await s.do(followers.join, user_id=FOLLOWER, ticket_id=s.world.tickets["GA"])
    await s.file("GP", "rooftop-waste")
    await s.act("GP", tickets.hand_back, reason="HB-GP")
    await s.act("GP", tickets.accept)
    await s.up("GP", Level.COMMUNITY)
    await s.act("GP", escalation.send_down, instruction="DOWN-GP")
    await s.act("GP", tickets.accept)
    # Above the grid, waiting and in progress at each level (each category under three a month: no candidate).
    for key, code, level, accepted in (
        ("CA", "handrail", Level.COMMUNITY, False),
        ("CP", "drain", Level.COMMUNITY, True),
        ("SA", "light", Level.STREET, False),
        ("SP", "parking", Level.STREET, True),
        ("DA", "clutter", Level.DEPARTMENT, False),
        ("DP", "water", Level.DEPARTMENT, True),
    ):
        await s.ticket_at(key, code, level, accepted)
    # Resolved (asks "Is it fixed?"), and closed by the reporter's yes (asks for a rating).
    for key, code in (("RES", "facilities"), ("CLOSED", "other")):
        await s.file(key, code)
        await s.act(key, tickets.accept)
        await s.act(key, tickets.resolve, note=f"fixed {key}", photo=None)
    await s.do(confirmation.confirm_fixed, actor_id=REPORTER, ticket_id=s.world.tickets["CLOSED"])
    # A topic raised from a ticket, a candidate from three reports, and suggestions at every step.
    await s.file("TD", "flying-lead")
    topic = await s.do(
        deliberation.raise_from_ticket, actor_id=STAFF_LIU, ticket_id=s.world.tickets["TD"], reason="NOTE-TD"
    )
    s.world.topics["TD"] = topic.id
    for key in ("N1", "N2", "N3"):
        await s.file(key, "noise")
    proposed = await s.do(deliberation.propose_candidates)
    [s.world.topics["CANDIDATE"]] = proposed.proposed
    for key in SUGGESTIONS:
        await s.suggestion(key, TopicStatus(key.lower()))
    await s.do(deliberation.vote, user_id=REPORTER, topic_id=s.world.topics["SURVEYED"], option=1)
    request, _asked = await s.do(verification.request_verification, user_id=CLAIMANT, room="909")
    async with harness.sessions() as session:
        reporter = await session.get(User, REPORTER)
        assert reporter is not None and reporter.building_id is not None
        s.world.households = {
            "REQUEST": request.id,
            "BUILDING": reporter.building_id,
            "VERIFIED": (
                await session.scalar(
                    select(Verification.id).where(
                        Verification.user_id == REPORTER, Verification.status == VerificationStatus.VERIFIED
                    )
                )
                or 0
            ),
        }
    async with harness.sessions() as session:
        s.world.task = (
            await session.scalar(select(TopicTask.id).where(TopicTask.topic_id == s.world.topics["APPLIED"])) or 0
        )
        s.world.survey_broadcast = (
            await session.scalar(select(Broadcast.id).where(Broadcast.period == f"t{s.world.topics['SURVEYED']}")) or 0
        )
    return s.world


# --- one pair ----------------------------------------------------------------------------------------------

# What a forbidden action could change. Of users, every record but the actor's own (the bot keeps their name).
WATCHED = (
    "tickets",
    "ticket_events",
    "ticket_followers",
    "ticket_photos",
    "topics",
    "topic_events",
    "topic_tasks",
    "survey_votes",
    "broadcasts",
    "outbox",
    "memberships",
    "users",
    "households",
    "household_members",
    "verifications",
)


Snapshot = dict[str, dict[str, str]]  # table → primary key → the row, as text (JSON columns hold dicts)


async def snapshot(harness: Harness) -> Snapshot:
    found = {}
    async with harness.sessions() as session:
        for name in WATCHED:
            table = Base.metadata.tables[name]
            key = list(table.primary_key.columns)
            rows = (await session.execute(select(table).order_by(*key))).mappings()
            found[name] = {"/".join(str(row[c.name]) for c in key): repr(dict(row)) for row in rows}
    return found


def changes(before: Snapshot, after: Snapshot, actor: int) -> list[str]:
    found = []
    for name in WATCHED:
        old, new = before[name], after[name]
        if name == "users":
            old, new = ({k: v for k, v in rows.items() if k != str(actor)} for rows in (old, new))
        added = sorted(new.keys() - old.keys())
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        removed = sorted(old.keys() - new.keys())
        found += [
            f"{name} {label} {', '.join(keys)}"
            for label, keys in (("+", added), ("~", changed), ("-", removed))
            if keys
        ]
    return found


def everything_shown(requests: list[TelegramMethod[Any]]) -> str:
    return "\n".join(
        [text_of(r) for r in requests]
        + [label for r in requests for label, _ in buttons_of(r)]
        + [label for r in requests for label in reply_buttons_of(r)]
    )


def refusal(error: DomainError) -> str:
    i18n = create_i18n()
    with i18n.context(), i18n.use_locale(i18n.default_locale):  # the roles' clients speak zh-hans
        return views.refusal(error)


def expected_answer(key: str, who: Who, target: str) -> str | None:
    """On a ticket, the real reason: who may follow it (a worker of it, or a household) hears that someone else
    handles it, and on Open or History gets the view they may have; who may not see it, that they cannot open it.
    """
    action, _roles = FORBIDDEN[key]
    if not action.worker:
        return None
    follows = target in who.worker_of | who.resident_of
    if key in ("TicketCb.OPEN", "TicketCb.HISTORY"):
        return f"DESC-{target}" if follows else refusal(AccessDenied())
    return refusal(HandledElsewhere() if follows else AccessDenied())


@dataclass
class Outcome:
    key: str
    role: Role
    changed: list[str]
    leaked: list[str]
    answer: str
    expected: str | None
    after: Snapshot  # the next pair's "before": one snapshot per pair


async def attempt(harness: Harness, world: World, key: str, role: Role, before: Snapshot) -> Outcome:
    action, _roles = FORBIDDEN[key]
    who = ROLES[role]
    user_id = who.user_id if who.user_id is not None else next(STRANGERS)
    actor = harness.person(user_id, who.name)
    target = action.target(who)
    assert target is not None
    shown: list[TelegramMethod[Any]] = []
    for text in action.before:
        shown += await actor.send(text)
    data = action.data(world, target)
    pressed = await (actor.send(data) if data.startswith("/") else actor.press(data))
    for text in action.typed:
        shown += await actor.send(text)
    await actor.send("/cancel")  # a wizard the refusal left running is the actor's own; it must not carry over
    shown += pressed
    leaked = sorted(secret for secret in secrets(who) if secret in everything_shown(shown))
    after = await snapshot(harness)
    answer = everything_shown(pressed)
    return Outcome(key, role, changes(before, after, user_id), leaked, answer, expected_answer(key, who, target), after)


def alerted(requests: list[TelegramMethod[Any]]) -> bool:
    return any(getattr(r, "show_alert", False) for r in requests)


async def rightful(harness: Harness, world: World, key: str, refused: str) -> str | None:
    """The control: whoever may do the action presses the same forged button and is not refused.

    Without it, a row whose button is malformed or whose target is in the wrong state would pass for nothing.
    """
    action, _roles = FORBIDDEN[key]
    if action.by is None:
        return None
    target = action.targets[0]
    user_id = action.by
    if user_id == ASSIGNEE:
        async with harness.sessions() as session:
            ticket = await session.get(Ticket, world.tickets[target])
            assert ticket is not None and ticket.assignee_id is not None
            user_id = ticket.assignee_id
    actor = harness.person(user_id, REPORTER_NAME if user_id == REPORTER else "")
    for text in action.before:
        await actor.send(text)
    data = action.data(world, target)
    answer = await (actor.send(data) if data.startswith("/") else actor.press(data))
    await actor.send("/cancel")
    if alerted(answer) or everything_shown(answer) == refused:
        return f"{key}: refused to {user_id} too: {everything_shown(answer)[:200]}"
    return None


async def test_no_forbidden_action_changes_anything_or_leaks(harness: Harness, clock: FakeClock) -> None:
    world = await seed(harness, clock)
    failures = []
    pairs = 0
    refused_to_stranger = {}
    state = await snapshot(harness)
    for key, (_action, roles) in FORBIDDEN.items():
        for role in sorted(roles):
            outcome = await attempt(harness, world, key, role, state)
            state = outcome.after
            pairs += 1
            problems = outcome.changed + [f"leaked {', '.join(outcome.leaked)}"] * bool(outcome.leaked)
            if not outcome.answer.strip():
                problems.append("no answer at all")
            elif outcome.expected is not None and outcome.expected not in outcome.answer:
                problems.append(f"answered {outcome.answer[:80]!r}, not {outcome.expected[:80]!r}")
            if problems:
                failures.append(f"{key} × {role}: {'; '.join(problems)}")
            if role is Role.STRANGER:
                refused_to_stranger[key] = outcome.answer
    assert pairs >= 400, pairs
    assert not failures, f"{len(failures)} of {pairs} forbidden pairs failed:\n" + "\n".join(failures)
    # The controls: buttons that only ask for text first (their step is cancelled), then those that act at once
    # (each on a target of its own).
    ordered = sorted(FORBIDDEN, key=lambda key: not FORBIDDEN[key][0].typed)
    live = [await rightful(harness, world, key, refused_to_stranger[key]) for key in ordered]
    problems = [problem for problem in live if problem]
    assert not problems, "\n".join(problems)
