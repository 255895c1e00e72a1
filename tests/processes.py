"""The real ``python -m bot`` in a child process, started as an operator would start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [name.upper() for name in Settings.model_fields]


def clean_environment(**env: str) -> dict[str, str]:
    """The test's environment without any of the bot's settings (a developer's shell may have some)."""
    base = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    return {**base, "PYTHONPATH": str(ROOT), **env}


def run_until_polling(cwd: Path, **env: str) -> tuple[int, str]:
    """Start the bot, stop it (SIGTERM) once it polls; returns its exit code and everything it logged."""
    bot = subprocess.Popen(
        [sys.executable, "-m", "bot"], cwd=cwd, env=clean_environment(**env), stderr=subprocess.PIPE, text=True
    )
    assert bot.stderr is not None
    seen: list[str] = []
    try:
        for line in bot.stderr:
            seen.append(line)
            if "polling for updates" in line:
                break
        else:
            raise AssertionError("".join(seen))
    finally:
        bot.send_signal(signal.SIGTERM)
        _, rest = bot.communicate(timeout=30)
    return bot.returncode, "".join(seen) + rest
