"""The "/" command menus (domain/menus.py): residents see only theirs, set once for every private chat; grid
workers and staff get theirs in their own chat, set once, changed when an import changes their duties, when
they press Start after Telegram could not reach them, and when they choose another language."""

from __future__ import annotations

from typing import Any

from aiogram.methods import DeleteMyCommands, SetMyCommands, TelegramMethod
from aiogram.types import BotCommandScopeAllPrivateChats, BotCommandScopeChat

from bot.app import set_commands
from bot.callbacks import LanguageCb
from bot.config import SAMPLE_COMMUNITY
from bot.i18n import create_i18n
from domain.community_file import import_community, loads_community
from domain.menus import queue_menus
from tests.conftest import FakeClock
from tests.fake_telegram import ScriptedError
from tests.harness import Harness
from tests.test_report_flow import LI_JUAN, STAFF_WANG, bind

RESIDENT = 960001
NEW_WORKER = 200009
CHAT_NOT_FOUND = ScriptedError(400, "Bad Request: chat not found")
WORKER_ONLY = {"tickets"}
STAFF_ONLY = {"tickets", "ledger", "topics", "newtopic", "broadcasts"}
# Everyone with a duty in the sample community: staff, street office, departments, grid workers.
PEOPLE_WITH_DUTIES = 2 + 2 + 5 + 8


def menus(requests: list[TelegramMethod[Any]]) -> dict[int, SetMyCommands | DeleteMyCommands]:
    """The menu calls for single chats, by chat."""
    found: dict[int, SetMyCommands | DeleteMyCommands] = {}
    for request in requests:
        if isinstance(request, SetMyCommands | DeleteMyCommands) and isinstance(request.scope, BotCommandScopeChat):
            assert isinstance(request.scope.chat_id, int)
            assert request.scope.chat_id not in found, "one call per person"
            found[request.scope.chat_id] = request
    return found


def commands(request: SetMyCommands | DeleteMyCommands) -> set[str]:
    assert isinstance(request, SetMyCommands)
    return {command.command for command in request.commands}


async def queued(harness: Harness, clock: FakeClock) -> int:
    async with harness.sessions() as session:
        return await queue_menus(session, clock())


async def test_every_private_chat_gets_the_residents_menu_in_each_language(harness: Harness) -> None:
    await set_commands(harness.bot, create_i18n("zh_CN"))
    calls = [r for r in harness.telegram.requests if isinstance(r, SetMyCommands)]
    assert {c.language_code for c in calls} == {None, "en"} and len(calls) == 2
    for call in calls:
        assert isinstance(call.scope, BotCommandScopeAllPrivateChats)
        assert {"report", "my", "help"} <= commands(call) and not commands(call) & STAFF_ONLY, "no worker commands"
    [chinese] = [c for c in calls if c.language_code is None]
    assert chinese.commands[0].description == "反映问题"


async def test_workers_and_staff_get_their_own_menu_once(harness: Harness, clock: FakeClock) -> None:
    await bind(harness.person(RESIDENT))
    assert await queued(harness, clock) == PEOPLE_WITH_DUTIES
    assert await queued(harness, clock) == 0, "a second process starting at once queues none again"
    sent = menus(await harness.deliver())
    assert len(sent) == PEOPLE_WITH_DUTIES and RESIDENT not in sent, "nothing per resident"
    assert commands(sent[LI_JUAN]) & STAFF_ONLY == WORKER_ONLY, "a grid worker: tickets, not the staff's commands"
    assert commands(sent[STAFF_WANG]) >= STAFF_ONLY
    assert {"report", "my", "help"} <= commands(sent[LI_JUAN])
    assert sent[LI_JUAN].commands[0].description == "待办工单"  # type: ignore[union-attr]
    assert await queued(harness, clock) == 0, "a start that changes nothing sets nothing"


async def test_an_import_that_changes_duties_changes_only_those_menus(harness: Harness, clock: FakeClock) -> None:
    await queued(harness, clock)
    await harness.deliver()
    # Li Juan leaves grid 1 and a new worker comes; Ma Li becomes community staff as well.
    text = SAMPLE_COMMUNITY.read_text(encoding="utf-8").replace(
        f"telegram_id = {LI_JUAN},", f"telegram_id = {NEW_WORKER},"
    )
    ma_li_as_staff = '[[staff]]\ntelegram_id = 200002\nname = "马丽"\n\n'
    text = text.replace("[[street]]\ntelegram_id = 500001", ma_li_as_staff + "[[street]]\ntelegram_id = 500001")
    async with harness.sessions() as session:
        await import_community(session, loads_community(text), clock())
    assert await queued(harness, clock) == 3
    sent = menus(await harness.deliver())
    assert sent.keys() == {LI_JUAN, NEW_WORKER, 200002}
    assert isinstance(sent[LI_JUAN], DeleteMyCommands), "back to the residents' menu"
    assert commands(sent[NEW_WORKER]) & STAFF_ONLY == WORKER_ONLY
    assert commands(sent[200002]) >= STAFF_ONLY


async def test_a_worker_telegram_could_not_reach_gets_the_menu_on_start(harness: Harness, clock: FakeClock) -> None:
    harness.telegram.fail_next(LI_JUAN, CHAT_NOT_FOUND)  # Li Juan has not pressed Start yet
    await queued(harness, clock)
    await harness.deliver()
    [refused] = harness.telegram.refused
    assert isinstance(refused, SetMyCommands) and refused.scope == BotCommandScopeChat(chat_id=LI_JUAN)
    assert await queued(harness, clock) == 1, "not taken, so still to do: the next start tries again"
    harness.telegram.fail_next(LI_JUAN, CHAT_NOT_FOUND)
    await harness.deliver()

    await harness.person(LI_JUAN).send("/start")
    sent = menus(await harness.deliver())
    assert commands(sent[LI_JUAN]) & STAFF_ONLY == WORKER_ONLY
    assert await queued(harness, clock) == 0


async def test_a_worker_who_chooses_english_gets_the_menu_in_english(harness: Harness, clock: FakeClock) -> None:
    await queued(harness, clock)
    await harness.deliver()
    await harness.person(LI_JUAN).press(LanguageCb(code="en").pack())
    [menu] = menus(await harness.deliver()).values()
    assert isinstance(menu, SetMyCommands) and menu.commands[0].description == "Tickets to handle"
    await harness.person(RESIDENT).press(LanguageCb(code="en").pack())
    assert not menus(await harness.deliver()), "a resident's menu follows their Telegram client, as before"


async def test_start_sets_the_menu_in_the_language_of_the_workers_client(harness: Harness, clock: FakeClock) -> None:
    await queued(harness, clock)  # at start the bot knows only the name in the community file: Chinese
    assert menus(await harness.deliver())[LI_JUAN].commands[0].description == "待办工单"  # type: ignore[union-attr]
    await harness.person(LI_JUAN, language="en").send("/start")
    [menu] = menus(await harness.deliver()).values()
    assert isinstance(menu, SetMyCommands) and menu.commands[0].description == "Tickets to handle"
