"""The README is a door into docs/: its table of contents links every docs/*.md, every relative link in the
README and docs/ leads to a file that exists, and CI runs the test command the README gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_readme_links_every_page_in_docs(page: Path) -> None:
    assert f"](docs/{page.name})" in README, f"add docs/{page.name} to the README's Documentation list"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=["README.md", *[p.name for p in PAGES]])
def test_relative_links_lead_to_files_that_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    (command,) = re.findall(r"\.venv/bin/python -m pytest[^\n`]*", README)
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
