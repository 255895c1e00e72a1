"""The bot's own filters decide as aiogram's would, only cheaper (bot/filters.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiogram.filters import Command as AiogramCommand
from aiogram.types import Chat, Message, User

from bot.filters import Command
from tests.fake_telegram import fake_bot


def message(text: str | None, caption: str | None = None) -> Message:
    return Message(
        message_id=1,
        date=datetime(2026, 12, 7, tzinfo=UTC),
        chat=Chat(id=5, type="private"),
        from_user=User(id=5, is_bot=False, first_name="居民"),
        text=text,
        caption=caption,
    )


@pytest.mark.parametrize(
    ("text", "caption"),
    [
        ("/report", None),
        ("/report 2单元的灯", None),
        ("/report@feedback_test_bot", None),
        ("/report@other_bot", None),
        ("/REPORT", None),
        ("/my", None),
        ("report", None),
        ("2单元门口的路灯坏了", None),
        ("📨 提交", None),
        (" /report", None),
        ("", None),
        (None, None),
        (None, "/report"),
        (None, "楼道里的照片"),
    ],
)
async def test_a_command_is_matched_as_aiogram_matches_it(text: str | None, caption: str | None) -> None:
    bot, _ = fake_bot()
    event = message(text, caption)
    for commands in (("report",), ("report", "my")):
        assert await Command(*commands)(event, bot) == await AiogramCommand(*commands)(event, bot)
