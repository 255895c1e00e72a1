"""Starting the bot wrong gives one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import run_until_polling

ROOT = Path(__file__).resolve().parent.parent


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}",
        "COMMUNITY_FILE": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env here
        env={**environment, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_missing_token_says_how_to_get_one(tmp_path: Path) -> None:
    result = run_bot(tmp_path, BOT_TOKEN="")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "BOT_TOKEN is not set" in last_line(result) and "@BotFather" in last_line(result)


def test_unreachable_telegram_is_one_line_and_the_bot_keeps_trying(tmp_path: Path) -> None:
    """An outage at start must not keep the bot down: it says so once and retries until Telegram answers."""
    code, log = run_until_polling(
        tmp_path, COMMUNITY_FILE="", BOT_TOKEN="123456:TEST", TELEGRAM_API_SERVER="http://127.0.0.1:9"
    )
    assert code == 0, log
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "Cannot reach Telegram (http://127.0.0.1:9)" in line]
    assert len(warnings) == 1 and "Retrying until it answers" in warnings[0], log
