"""The real ``python -m bot`` in long polling against a loopback fake Bot API: with HEALTH_PORT it answers
``GET /healthz`` as webhook mode does (so compose's health check means something in both modes), and at start
it sets the residents' "/" menu for every private chat and each worker's and staff member's in their own chat,
once: a second start that changes nothing sets no one's again."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession

from bench.fake_api import FakeBotAPI
from tests.processes import clean_environment
from tests.test_menus import PEOPLE_WITH_DUTIES
from tests.test_several_processes import _async, free_port, read, start_bot, until

BOT_ID = 4545


async def health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        async with ClientSession() as client, client.get(f"http://127.0.0.1:{port}/healthz") as answer:
            return answer.status, await answer.json()
    except ClientError:
        return None  # not listening yet


def menu_scopes(fake: FakeBotAPI) -> list[str]:
    """The scope type of every setMyCommands / deleteMyCommands the bot made, in order."""
    calls = [r.params["scope"] for r in fake.requests if r.method in ("setmycommands", "deletemycommands")]
    return [(json.loads(scope) if isinstance(scope, str) else scope)["type"] for scope in calls]


async def run_once(tmp_path: Path, fake: FakeBotAPI, api: str, per_chat_menus: int) -> None:
    """Start the bot, wait for /healthz and the menus, stop it."""
    port = free_port()
    log = (tmp_path / "bot.log").open("w+", encoding="utf-8")
    environment = clean_environment(BOT_TOKEN=f"{BOT_ID}:POLLING", TELEGRAM_API_SERVER=api, HEALTH_PORT=str(port))
    earlier = len(menu_scopes(fake))
    bot = start_bot(tmp_path, environment, log)
    try:
        status, report = await until(lambda: health(port), "/healthz to answer")
        assert status == 200 and report["status"] == "ok" and report["database"] == "ok", report
        assert set(report["outbox"]) == {"due", "oldest_due_seconds"}

        def menus_set() -> bool:
            scopes = menu_scopes(fake)[earlier:]
            return scopes.count("all_private_chats") == 2 and scopes.count("chat") == per_chat_menus

        await until(_async(menus_set), "the menus to be set")
    finally:
        bot.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(bot.wait, 60)
    assert code == 0, read(log)
    assert f"health check: listening on 127.0.0.1:{port}/healthz" in read(log)


async def test_polling_answers_healthz_and_sets_each_menu_once(tmp_path: Path) -> None:
    fake = FakeBotAPI(BOT_ID, username="polling_bot")
    api = await fake.start()
    try:
        await run_once(tmp_path, fake, api, per_chat_menus=PEOPLE_WITH_DUTIES)
        await run_once(tmp_path, fake, api, per_chat_menus=0)
    finally:
        await fake.stop()
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as database:
        [(queued,)] = database.execute("SELECT count(*) FROM outbox WHERE kind = 'command_menu'").fetchall()
    assert queued == PEOPLE_WITH_DUTIES, "the second start queued no menu"
