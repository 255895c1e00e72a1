"""The installed package works from any directory: the sample community ships inside it, the database goes to
the current directory's data/, ``resident-bot init`` writes files to start from, ``backup`` copies SQLite."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import clean_environment

ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", *map(str, args)], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install .`` of this source into a folder of its own (the dependencies come from the test's venv)."""
    place = tmp_path_factory.mktemp("installed")
    source = place / "source"  # a copy: building writes build/ and *.egg-info/ next to the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "data", "build", "*.egg-info", "__pycache__"))
    wheels, site = place / "wheels", place / "site"
    pip("wheel", "-q", "--no-deps", "-w", wheels, source)
    (wheel,) = wheels.glob("*.whl")
    pip("install", "-q", "--no-deps", "--target", site, wheel)
    return site


def resident_bot(site: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``resident-bot`` script, run in ``cwd`` with only the installed package importable."""
    environment = {**clean_environment(**env), "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    return subprocess.run(
        [sys.executable, str(site / "bin" / "resident-bot"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_package_runs_from_any_directory(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import bot.config as c; print(c.__file__); print(c.Settings().community_file)"],
        cwd=tmp_path,
        env={**clean_environment(), "PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert where[0].startswith(str(installed)), "the installed copy, not the source tree"
    sample = Path(where[1])
    assert sample.is_file() and sample.is_relative_to(installed), "the sample community ships in the package"

    imported = resident_bot(installed, tmp_path, "import", str(sample))
    assert imported.returncode == 0, imported.stderr
    assert (tmp_path / "data" / "bot.sqlite3").is_file(), "the database is in the current directory's data/"
    assert not list(installed.rglob("*.sqlite3")), "nothing is written inside the installed package"


def test_init_writes_a_community_file_and_env_and_never_overwrites(installed: Path, tmp_path: Path) -> None:
    first = resident_bot(installed, tmp_path, "init")
    assert first.returncode == 0, first.stderr
    env = (tmp_path / ".env").read_text(encoding="utf-8")
    assert "BOT_TOKEN=\n" in env and "COMMUNITY_FILE=community.toml\n" in env and "# TELEGRAM_PROXY=" in env
    community = (tmp_path / "community.toml").read_text(encoding="utf-8")
    assert community.startswith("# ") and "telegram_id" in community

    (tmp_path / ".env").write_text("BOT_TOKEN=mine\nCOMMUNITY_FILE=community.toml\n", encoding="utf-8")
    again = resident_bot(installed, tmp_path, "init")
    assert ".env exists: left as it is" in again.stdout
    assert (tmp_path / ".env").read_text(encoding="utf-8").startswith("BOT_TOKEN=mine")

    # The files it wrote are good to start from: the community file imports as it is.
    imported = resident_bot(installed, tmp_path, "import", "community.toml")
    assert imported.returncode == 0, imported.stderr
    assert "建设巷" in imported.stdout or "created" in imported.stdout.lower(), imported.stdout


def test_backup_is_a_consistent_copy_while_another_connection_writes(tmp_path: Path) -> None:
    database = tmp_path / "live.sqlite3"
    url = f"sqlite+aiosqlite:///{database}"
    environment = clean_environment(DATABASE_URL=url)
    subprocess.run([sys.executable, "-m", "bot", "migrate"], cwd=tmp_path, env=environment, check=True, timeout=120)
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("INSERT INTO sender_leases (holder, expires_at) VALUES ('committed', '2026-12-06 00:00:00')")
    writer.execute("BEGIN IMMEDIATE")  # a write in progress: the copy must not contain it
    writer.execute("INSERT INTO sender_leases (holder, expires_at) VALUES ('in-flight', '2026-12-06 00:00:00')")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bot", "backup", "backups/copy.sqlite3"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert result.returncode == 0, result.stderr
    assert "integrity ok" in result.stdout
    copy = sqlite3.connect(tmp_path / "backups" / "copy.sqlite3")
    assert copy.execute("SELECT holder FROM sender_leases").fetchall() == [("committed",)]
    assert ("tickets",) in copy.execute("SELECT name FROM sqlite_master").fetchall()
    assert not (tmp_path / "backups" / "copy.sqlite3.part").exists()


def test_backup_of_postgresql_names_pg_dump_and_hides_the_password(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "backup", "out.dump"],
        cwd=tmp_path,
        env=clean_environment(DATABASE_URL="postgresql+asyncpg://bot:s3cret@db.example:5432/feedback"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("DATABASE_URL is PostgreSQL: back it up with pg_dump")
    assert "pg_dump --format=custom --file=out.dump 'postgresql://bot:***@db.example:5432/feedback'" in result.stderr
    assert "s3cret" not in result.stderr and os.linesep not in result.stderr.strip()
