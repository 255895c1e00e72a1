"""What Telegram would refuse in a request: the limits and the HTML subset of the Bot API.

The fake Bot API answers every request "ok"; these checks say which of them the real one would have refused
(https://core.telegram.org/bots/api#formatting-options and the limits of sendMessage, sendPhoto,
answerCallbackQuery and inline keyboards).
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from aiogram.client.default import Default
from aiogram.methods import TelegramMethod

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64  # bytes, UTF-8
CALLBACK_ANSWER_LIMIT = 200

# Tag → the attributes it may carry. Telegram refuses any other tag, and an unknown attribute.
ALLOWED_TAGS: dict[str, frozenset[str]] = {
    "b": frozenset(),
    "strong": frozenset(),
    "i": frozenset(),
    "em": frozenset(),
    "u": frozenset(),
    "ins": frozenset(),
    "s": frozenset(),
    "strike": frozenset(),
    "del": frozenset(),
    "span": frozenset({"class"}),  # only class="tg-spoiler"
    "tg-spoiler": frozenset(),
    "a": frozenset({"href"}),
    "code": frozenset({"class"}),  # a language inside <pre>
    "pre": frozenset(),
    "blockquote": frozenset({"expandable"}),
    "tg-emoji": frozenset({"emoji-id"}),
}
# The only named entities Telegram knows; numeric ones are all accepted.
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
_TAG = re.compile(r"<(/?)([a-z][a-z-]*)((?:\s+[a-z-]+(?:=\"[^\"<>]*\"|='[^'<>]*')?)*)\s*>")
_ATTRIBUTE = re.compile(r"([a-z-]+)(?:=(?:\"([^\"]*)\"|'([^']*)'))?")


def html_problem(text: str) -> str | None:
    """Why Telegram would refuse ``text`` with parse_mode HTML, or None when it would take it."""
    open_tags: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "<":
            tag = _TAG.match(text, position)
            if tag is None:
                return f"an unescaped '<' at {position}: {text[position : position + 20]!r}"
            closing, name, attributes = tag.groups()
            if name not in ALLOWED_TAGS:
                return f"tag <{name}> is not supported"
            if closing:
                if attributes.strip():
                    return f"a closing tag </{name}> with attributes"
                if not open_tags or open_tags[-1] != name:
                    return f"</{name}> does not close {open_tags[-1:] or 'anything'}"
                open_tags.pop()
            else:
                for attribute in _ATTRIBUTE.finditer(attributes):
                    attribute_name, value = attribute.group(1), attribute.group(2) or attribute.group(3) or ""
                    if attribute_name not in ALLOWED_TAGS[name]:
                        return f"<{name}> may not have {attribute_name}="
                    if name == "span" and value != "tg-spoiler":
                        return '<span> must be class="tg-spoiler"'
                    if name == "a" and not value:
                        return "<a> without href"
                open_tags.append(name)
            position = tag.end()
        elif char == "&":
            entity = _ENTITY.match(text, position)
            if entity is None:
                return f"an unescaped '&' at {position}: {text[position : position + 20]!r}"
            position = entity.end()
        elif char == ">":
            return f"an unescaped '>' at {position}"
        else:
            position += 1
    if open_tags:
        return f"unclosed {open_tags}"
    return None


def visible(text: str, html: bool) -> str:
    """The text Telegram shows (and counts against its limits)."""
    return unescape(re.sub(r"<[^>]+>", "", text)) if html else text


def _is_html(value: Any) -> bool:
    # The bot's default parse mode is HTML; a request that leaves it unset uses it.
    return isinstance(value, Default) or value == "HTML"


def request_problems(method: TelegramMethod[Any]) -> list[str]:
    """Everything in one request that the real Bot API would refuse."""
    problems: list[str] = []
    name = method.__api_method__
    texts: list[tuple[str, str, bool, int]] = []  # (field, value, html, limit)
    if (text := getattr(method, "text", None)) is not None and name != "answerCallbackQuery":
        texts.append(("text", text, _is_html(getattr(method, "parse_mode", None)), MESSAGE_LIMIT))
    if (caption := getattr(method, "caption", None)) is not None:
        texts.append(("caption", caption, _is_html(getattr(method, "parse_mode", None)), CAPTION_LIMIT))
    for item in getattr(method, "media", None) or []:
        if (caption := getattr(item, "caption", None)) is not None:
            texts.append(("media caption", caption, _is_html(getattr(item, "parse_mode", None)), CAPTION_LIMIT))
    for field, value, html, limit in texts:
        if html and (problem := html_problem(value)) is not None:
            problems.append(f"{name}.{field}: {problem}")
            continue
        shown = visible(value, html)
        if len(shown) > limit:
            problems.append(f"{name}.{field}: {len(shown)} characters, over {limit}")
        if field == "text" and not shown.strip():
            problems.append(f"{name}.text is empty")
    if name == "answerCallbackQuery" and len(getattr(method, "text", None) or "") > CALLBACK_ANSWER_LIMIT:
        problems.append(f"answerCallbackQuery.text over {CALLBACK_ANSWER_LIMIT} characters")
    markup = getattr(method, "reply_markup", None)
    for row in getattr(markup, "inline_keyboard", None) or []:
        for button in row:
            if not button.text.strip():
                problems.append(f"{name}: an inline button without text")
            data = button.callback_data
            if data is not None and not 1 <= len(data.encode()) <= CALLBACK_DATA_LIMIT:
                problems.append(f"{name}: callback_data of {len(data.encode())} bytes: {data!r}")
    for row in getattr(markup, "keyboard", None) or []:
        for button in row:
            if not button.text.strip():
                problems.append(f"{name}: a keyboard button without text")
    return problems
