"""The container image builds and runs ``resident-bot`` (only where a docker engine answers; CI machines without
one skip this with the reason)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAG = "resident-bot:ci-test"


def docker_engine() -> str | None:
    """Why docker cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    answer = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        return f"no docker engine answers: {(answer.stderr.strip().splitlines() or ['docker info failed'])[-1]}"
    return None


def test_the_image_builds_and_the_bot_checks_its_settings_in_it() -> None:
    if reason := docker_engine():
        pytest.skip(reason)
    subprocess.run(["docker", "build", "-t", TAG, str(ROOT)], check=True, timeout=1200)
    run = subprocess.run(
        ["docker", "run", "--rm", "-e", "TIMEZONE=Beijing", TAG],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert run.stderr.strip().startswith("TIMEZONE=Beijing: not a time zone"), run.stderr
    help_text = subprocess.run(
        ["docker", "run", "--rm", TAG, "resident-bot", "--help"], capture_output=True, text=True, timeout=300
    )
    assert "backup" in help_text.stdout and "init" in help_text.stdout


def test_the_image_and_the_compose_file_agree_on_the_data_volume() -> None:
    """Checked without an engine: the SQLite file the bot writes (data/ under its working directory) is the
    volume's path in the Dockerfile and in compose.yaml, so it survives a new container."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    compose = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "WORKDIR /srv/resident-bot\n" in dockerfile
    assert "VOLUME /srv/resident-bot/data\n" in dockerfile
    assert "- bot-data:/srv/resident-bot/data\n" in compose


def test_the_compose_health_check_asks_healthz_where_the_bot_serves_it_in_both_modes() -> None:
    """Polling serves /healthz on HEALTH_PORT, webhook mode on WEBHOOK_LISTEN_PORT (8080 by default): compose's
    check must ask that port, not pass whatever the mode (tests/test_polling_health.py runs the listener)."""
    compose = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert '      HEALTH_PORT: "8080"\n' in compose
    assert 'urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5)' in compose
    assert "WEBHOOK_URL" not in compose.split("healthcheck:")[1].split("postgres:")[0], "no mode is exempt"
