"""python -m bot export and posters: the month's spreadsheet and the stairwell posters from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from openpyxl import load_workbook

from bot.cli import main
from tests.conftest import SAMPLE_COMMUNITY
from tests.processes import Finished, run_command_line

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )


def test_export_writes_the_month_and_refuses_what_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"}

    def command(*args: str) -> Finished:
        return run_command_line(monkeypatch, capsys, tmp_path, *args, **database)

    assert command("import", str(SAMPLE_COMMUNITY)).code == 0
    out = tmp_path / "reports" / "jsx-2026-10.xlsx"
    done = run(tmp_path, "export", "--community", "jsx", "--month", "2026-10", "--out", str(out))  # a real process
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"jsx 2026-10: 0 tickets written to {out}"
    book = load_workbook(out)
    assert book.sheetnames == ["工单 2026-10", "当前台账", "按网格", "按承办人", "按类别", "按小区"]
    assert [cell.value for cell in book["按网格"][2]][2] in {"第一网格", "第二网格", "第三网格"}

    posters = command("posters", "--a5", "--out", str(tmp_path / "posters"), "--bot-username", "jsx_bot")
    assert posters.code == 0, posters.stderr
    assert posters.stdout.strip().endswith(
        "26 A5 posters in 3 files (one per compound) written to " + str(tmp_path / "posters")
    )

    unknown = command("export", "--community", "nope", "--month", "2026-10", "--out", str(out))
    assert unknown.code == 1 and "No community with the code 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_wrong_month_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["export", "--community", "jsx", "--month", "2026-13", "--out", "x.xlsx"])
    assert stopped.value.code == 2 and "not a month: '2026-13'" in capsys.readouterr().err
