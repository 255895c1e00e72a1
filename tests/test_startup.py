"""What a start loads, and what it leaves for later (docs/delivery.md, "Start-up"): the libraries of reports,
printouts, migrations and proxies are imported where they are used, and those features still work through their
handlers in a process that started without them. bench/startup.py measures the start itself."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT, clean_environment

# Imported by the command or handler that needs them, never by the bot's start.
LATER = ("numpy", "alembic", "mako", "matplotlib", "openpyxl", "fpdf", "segno", "PIL", "aiohttp_socks", "redis")


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=clean_environment(), capture_output=True, text=True, timeout=300
    )


def test_the_bots_start_imports_none_of_the_libraries_used_later() -> None:
    script = "import json, sys; import bot.cli; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) & set(LATER) == set()


def test_stats_work_through_the_handler_in_a_process_that_started_without_numpy() -> None:
    """/stats (its medians need numpy, its chart matplotlib) through the dispatcher, in a fresh process that has
    imported what the bot's start imports and nothing more."""
    test = "tests/test_stats_flow.py::test_staff_get_last_month_ranked_with_the_chart"
    script = f"""
import sys
import bot.cli
assert "numpy" not in sys.modules
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "-k", "sqlite", "{test}"])
assert "numpy" in sys.modules
sys.exit(code)
"""
    done = run_python(script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_aiogram_builds_a_telegram_type_when_first_used_and_right() -> None:
    """aiogram's import leaves its types' and methods' validators to be built on first use (bot/lazy_types.py),
    and a type first met in an update, whose annotations name types imported only for type checkers, is read in
    full."""
    script = """
import json
from bot.lazy_types import import_aiogram
import_aiogram()
from aiogram.methods import SendSticker
from aiogram.types import Sticker, Update
assert not Sticker.__pydantic_complete__ and not SendSticker.__pydantic_complete__
update = Update.model_validate({"update_id": 1, "message": {
    "message_id": 7, "date": 1700000000, "chat": {"id": 5, "type": "private"},
    "from": {"id": 5, "is_bot": False, "first_name": "Li"},
    "sticker": {"file_id": "f", "file_unique_id": "u", "type": "regular", "width": 512, "height": 512,
                "is_animated": False, "is_video": False, "emoji": "👍", "thumbnail": {
                    "file_id": "t", "file_unique_id": "tu", "width": 64, "height": 64}}}})
sticker = update.message.sticker
print(json.dumps([sticker.emoji, sticker.thumbnail.width, update.message.from_user.first_name]))
"""
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["👍", 64, "Li"]


def test_the_tests_run_on_aiogram_as_the_bot_loads_it() -> None:
    from aiogram.types import RichBlockSlideshow

    assert not RichBlockSlideshow.__pydantic_complete__


def test_every_type_and_method_of_aiogram_can_be_built_after_the_import() -> None:
    """Whatever Telegram sends or the bot calls one day, its model resolves every name its annotations use."""
    script = """
from bot.lazy_types import import_aiogram
import_aiogram()
import aiogram.methods, aiogram.types, json
from pydantic import BaseModel
built, failed = 0, []
for package in (aiogram.types, aiogram.methods):
    for name in package.__all__:
        model = getattr(package, name)
        generic = isinstance(model, type) and model.__dict__.get("__pydantic_generic_metadata__", {}).get("parameters")
        if isinstance(model, type) and issubclass(model, BaseModel) and not generic:
            try:
                model.model_rebuild()
                built += model.__pydantic_complete__
            except Exception as error:
                failed.append(f"{name}: {error}")
print(json.dumps([built, failed]))
"""
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    built, failed = json.loads(done.stdout)
    assert failed == []
    assert built > 500
