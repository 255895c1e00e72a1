"""Starting the bot wrong gives one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import Finished, run_command_line, run_until_polling

ROOT = Path(__file__).resolve().parent.parent


def run_bot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}",
        "COMMUNITY_FILE": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
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


def test_the_household_register_is_imported_again_and_again_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    register = str(ROOT / "bot" / "communities" / "sample-register.csv")
    database = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}", "COMMUNITY_FILE": ""}
    secret = {**database, "HOUSEHOLD_PHONE_SECRET": "a-long-random-secret"}

    def command(*args: str, **env: str) -> Finished:
        return run_command_line(monkeypatch, capsys, tmp_path, *args, **env)

    assert command("import", str(ROOT / "bot" / "communities" / "sample.toml"), **database).code == 0
    unset = command("register", register, **database)
    assert unset.code == 1 and "HOUSEHOLD_PHONE_SECRET is not set" in unset.stderr

    first = run_bot(tmp_path, "register", register, HOUSEHOLD_PHONE_SECRET="a-long-random-secret")  # logs and all
    assert first.returncode == 0, first.stderr
    assert "10 rows, 8 households (8 new, 0 back, 0 changed, 0 unchanged); 0 moved out" in first.stdout
    again = command("register", register, **secret)
    assert "(0 new, 0 back, 0 changed, 8 unchanged)" in again.stdout

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("小区,楼号,单元,房号,姓名,联系电话\n银巴小区,99号楼,1,101,甲,13800000001\n", encoding="utf-8")
    refused = command("register", str(wrong), **secret)
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert "line 2: no building of the community file has this code or name ('99号楼')" in refused.stderr
    for output in (first.stdout + first.stderr, again.stdout + again.stderr, refused.stderr):
        assert "13895000101" not in output and "13800000001" not in output
