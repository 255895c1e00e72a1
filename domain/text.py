"""Text people type, made fit to store and to show: every typed text enters the domain through here.

Typed text may carry characters nobody sees: NUL (which PostgreSQL refuses in a text column), other control
characters, and invisible ones such as the zero-width space. Control characters are removed, except line
breaks and tabs. Invisible characters stay inside the text, where some of them do work (the zero-width joiner
builds 👨‍👩‍👧), but a text made only of them, or only of spaces, counts as empty.
"""

from __future__ import annotations

import unicodedata

from domain.errors import DomainError

KEPT_CONTROLS = frozenset("\n\t")
# Letters that render as nothing (Hangul fillers, the blank Braille pattern), next to the categories of
# characters that are invisible by nature: format characters (zero-width space, joiners, word joiner, BOM,
# direction marks, soft hyphen) and combining marks, which show nothing without a letter to sit on.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me"})


class TextTooLong(DomainError):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class TextEmpty(DomainError):
    """Text was required, and what came has nothing visible in it."""


def _is_blank(char: str) -> bool:
    return char.isspace() or char in _BLANK_LETTERS or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def _is_edge_junk(char: str) -> bool:
    # Spaces and format characters at either end serve nothing; a combining mark at the end may (the
    # variation selector that makes ❤️ an emoji), so it stays.
    return char.isspace() or unicodedata.category(char) == "Cf"


def clean(text: str) -> str:
    """``text`` without control characters (line breaks and tabs stay), and without blanks at either end."""
    kept = "".join(c for c in text if c in KEPT_CONTROLS or unicodedata.category(c) != "Cc")
    start, end = 0, len(kept)
    while start < end and _is_edge_junk(kept[start]):
        start += 1
    while end > start and _is_edge_junk(kept[end - 1]):
        end -= 1
    return kept[start:end]


def is_blank(text: str) -> bool:
    """Nothing in ``text`` would show: it is empty, or only spaces and invisible characters."""
    return all(_is_blank(c) for c in text)


def required_text(text: str, limit: int) -> str:
    """Typed text that must say something, cleaned; refused when blank (TextEmpty) or over ``limit`` characters."""
    cleaned = clean(text)
    if is_blank(cleaned):
        raise TextEmpty()
    if len(cleaned) > limit:
        raise TextTooLong(limit)
    return cleaned
