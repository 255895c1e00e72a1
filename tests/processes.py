"""The real ``python -m bot`` in a child process, started as an operator would start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import Settings
from bot.entry import main as front_door

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


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def run_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cwd: Path, *args: str, **env: str
) -> Finished:
    """``python -m bot ARGS`` in this process, through the same front door, with only ``env`` as settings.

    A child process costs seconds of imports; commands that only read and write files and the database are
    run here instead, and each command's own file keeps one run in a real child for the exit code."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)  # no .env here
    monkeypatch.setattr("bot.cli.setup_logging", lambda *_: None)  # the root logger stays pytest's
    code, message = 0, ""
    try:
        front_door(list(args))
    except SystemExit as stopped:  # sys.exit("…") prints its text only when the interpreter ends
        code = stopped.code if isinstance(stopped.code, int) else 1
        message = "" if stopped.code is None or isinstance(stopped.code, int) else f"{stopped.code}\n"
    captured = capsys.readouterr()
    return Finished(code, captured.out, captured.err + message)
