"""Settings: a bad one stops every entry point with one line naming it, before anything is touched; every one is
documented; ``python -m storage.migrate`` reads them as the bot does; an empty COMMUNITY_FILE imports nothing."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import SETTINGS, clean_environment, run_until_polling

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=clean_environment(**env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("SEND_RATE_PER_SECOND", "0", "SEND_RATE_PER_SECOND=0: should be greater than 0"),
        ("TIMEZONE", "Beijing", "TIMEZONE=Beijing: not a time zone; use a name such as Asia/Shanghai"),
        ("DEFAULT_LOCALE", "zh", "DEFAULT_LOCALE=zh: must be one of en, zh_CN"),
        ("DATABASE_URL", "mysql://bot@db/feedback", "DATABASE_URL=mysql://bot@db/feedback: must start with"),
        ("TELEGRAM_PROXY", "socks5://me:secret@proxy", "TELEGRAM_PROXY=socks5://me:***@proxy: has no port"),
        ("TELEGRAM_PROXY", "ftp://proxy:21", "TELEGRAM_PROXY=ftp://proxy:21: must start with socks5://"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL=verbose: should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("WEBHOOK_URL", "https://bot.example.org/tg", "WEBHOOK_SECRET is required with WEBHOOK_URL"),
        ("REDIS_URL", "127.0.0.1:6379", "REDIS_URL=127.0.0.1:6379: must start with redis://"),
    ],
)
def test_a_bad_setting_is_one_line_and_nothing_is_touched(tmp_path: Path, setting: str, value: str, says: str) -> None:
    result = run(["-m", "bot"], tmp_path, BOT_TOKEN="123:TOKEN", **{setting: value})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "secret" not in result.stderr
    assert not (tmp_path / "data").exists(), "no database was created"


def test_several_bad_settings_are_one_line_each_from_env_file_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIMEZONE=Beijing\nSEND_RATE_PER_CHAT_SECONDS=-1\n", encoding="utf-8")
    result = run(["-m", "bot", "import", "community.toml"], tmp_path)
    assert result.returncode == 1
    assert sorted(result.stderr.strip().splitlines()) == [
        "SEND_RATE_PER_CHAT_SECONDS=-1: should be greater than or equal to 0",
        "TIMEZONE=Beijing: not a time zone; use a name such as Asia/Shanghai or Asia/Urumqi",
    ]


def test_a_webhook_secret_is_never_shown(tmp_path: Path) -> None:
    result = run(["-m", "bot"], tmp_path, WEBHOOK_URL="https://x.example/tg", WEBHOOK_SECRET="not/allowed")
    assert result.stderr.strip() == (
        "WEBHOOK_SECRET=(hidden): must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)"
    )


def test_migrate_reads_the_same_env_file_as_the_bot(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite+aiosqlite:///from-env-file.sqlite3\n", encoding="utf-8")
    result = run(["-m", "storage.migrate"], tmp_path)
    assert result.returncode == 0, result.stderr
    tables = sqlite3.connect(tmp_path / "from-env-file.sqlite3").execute("SELECT name FROM sqlite_master").fetchall()
    assert ("tickets",) in tables
    assert not (tmp_path / "data").exists(), "not the default database"

    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///no-driver.sqlite3\n", encoding="utf-8")
    refused = run(["-m", "storage.migrate"], tmp_path)
    assert refused.returncode == 1 and refused.stderr.startswith("DATABASE_URL=sqlite:///no-driver.sqlite3: must")


def test_the_default_database_is_in_data_under_the_current_directory(tmp_path: Path) -> None:
    result = run(["-m", "bot", "migrate"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "bot.sqlite3").is_file()


def test_an_empty_community_file_setting_imports_nothing_and_logs_can_be_json(tmp_path: Path) -> None:
    """COMMUNITY_FILE= in .env switches the start-up import off; LOG_FORMAT=json makes every line a JSON object."""
    (tmp_path / ".env").write_text("COMMUNITY_FILE=\nLOG_FORMAT=json\nLOG_LEVEL=info\n", encoding="utf-8")
    code, log = run_until_polling(tmp_path, BOT_TOKEN="123456:TEST", TELEGRAM_API_SERVER="http://127.0.0.1:9")
    assert code == 0, log
    lines = [json.loads(line) for line in log.splitlines()]
    assert {line["level"] for line in lines} <= {"INFO", "WARNING"}
    assert not [line for line in lines if "community file" in line["message"]]
    database = sqlite3.connect(tmp_path / "data" / "bot.sqlite3")
    assert database.execute("SELECT count(*) FROM communities").fetchone() == (0,)


def documented_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md")))


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_is_in_env_example_and_in_the_docs(setting: str) -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.search(rf"^#? ?{setting}=", example, re.MULTILINE), f"{setting} is not in .env.example"
    assert f"`{setting}`" in documented_text(), f"{setting} is not in docs/*.md"


def test_a_community_file_that_cannot_be_read_stops_the_bot_before_the_database_is_made(tmp_path: Path) -> None:
    result = run(["-m", "bot"], tmp_path, BOT_TOKEN="123:TOKEN", COMMUNITY_FILE="no-such-file.toml")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("community file: no-such-file.toml: cannot read the file")
    assert not (tmp_path / "data").exists()
