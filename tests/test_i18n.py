"""Languages: every string in the code is translated, the compiled catalogs are current, and users get
their language."""

from __future__ import annotations

import ast
import gettext
import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot.callbacks import LanguageCb
from bot.i18n import DOMAIN, LOCALES_DIR
from tests.fake_telegram import text_of
from tests.harness import Harness

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {"_": None, "gettext": None, "__": None, "lazy_gettext": None}
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def source_messages() -> set[str]:
    found: set[str] = set()
    for folder in ("bot", "handlers", "domain"):
        for _file, _line, message, _comments, _context in extract_from_dir(
            ROOT / folder, method_map=[("**.py", "python")], keywords=KEYWORDS
        ):
            found.add(message if isinstance(message, str) else message[0])
    return found


GETTEXT_CALLS = {"_", "__", "gettext", "lazy_gettext"}
# Modules whose strings reach people in Telegram: every literal there with words in it must be translatable.
SPEAKING_MODULES = ("handlers", "bot/views", "bot/guard.py", "bot/outbound/notices.py")
# Words a person reads: any Chinese, or a capitalised word followed by another ("Location on the map").
USER_WORDS = re.compile(r"[\u4e00-\u9fff]|\b[A-Z][a-z]+ [a-z]+")
HTML_TAG = re.compile(r"<[^>]*>")


def _python_files(*places: str) -> list[Path]:
    found: list[Path] = []
    for place in places:
        path = ROOT / place
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def _called(node: ast.Call) -> str:
    function = node.func
    return function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")


def _translation_problems(source: str, where: str, speaking: bool) -> list[str]:
    """Where the extractor misses a string: gettext inside an f-string (it is seen, if at all, as a different
    text from the one looked up), gettext of anything but one literal, and in the modules that speak to people,
    literals with words that no gettext call wraps."""
    tree = ast.parse(source)
    problems: list[str] = []
    wrapped: set[int] = set()  # literals that gettext sees, or that nobody reads (docstrings)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in GETTEXT_CALLS:
            if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) or node.keywords:
                problems.append(f"{where}:{node.lineno}: gettext of something that is not one literal")
            wrapped.update(id(inner) for inner in ast.walk(node))
        if isinstance(node, ast.JoinedStr):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and _called(inner) in GETTEXT_CALLS:
                    problems.append(f"{where}:{node.lineno}: gettext inside an f-string")
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            wrapped.add(id(body[0].value))
    if speaking:
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and id(node) not in wrapped else None
            if isinstance(text, str) and USER_WORDS.search(HTML_TAG.sub("", text)):
                problems.append(f"{where}:{node.lineno}: untranslated text {node.value!r}")
    return problems


def test_every_user_facing_string_is_visible_to_the_extractor() -> None:
    speaking = set(_python_files(*SPEAKING_MODULES))
    problems = [
        problem
        for path in _python_files("bot", "handlers", "domain")
        for problem in _translation_problems(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), path in speaking
        )
    ]
    assert not problems, "\n".join(problems)


def test_the_extractor_check_finds_what_it_is_for() -> None:
    """The check above would pass on an empty tree; here it must catch each kind of miss."""
    sample = (
        "from aiogram.utils.i18n import gettext as _\n"
        'LINK = f\'<a href="x">{_("Location on the map")}</a>\'\n'
        "NAME = 'x'\nHIDDEN = _(NAME)\n"
        "PLAIN = 'Thank you for your report'\n"
        "CHINESE = '谢谢'\n"
    )
    problems = _translation_problems(sample, "sample.py", speaking=True)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "gettext inside an f-string",
        "gettext of something that is not one literal",
        "untranslated text 'Thank you for your report'",
        "untranslated text '谢谢'",
    ], problems


def catalog(locale: str):  # type: ignore[no-untyped-def]
    with (LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as po:
        return read_po(po)


def test_every_string_in_the_code_is_translated_into_chinese_and_english() -> None:
    messages = source_messages()
    assert len(messages) > 50
    for locale in ("zh_CN", "en"):
        translated = {m.id: m for m in catalog(locale) if m.id}
        missing = sorted(m for m in messages if m not in translated or not translated[m].string)
        assert not missing, f"{locale}: untranslated {missing}"
        fuzzy = sorted(str(m.id) for m in translated.values() if m.fuzzy)
        assert not fuzzy, f"{locale}: fuzzy {fuzzy}"


def test_translations_keep_placeholders_and_compiled_catalogs_are_current() -> None:
    for locale in ("zh_CN", "en"):
        with (LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.mo").open("rb") as mo:
            compiled = gettext.GNUTranslations(mo)
        for message in catalog(locale):
            if not message.id or not message.string:
                continue
            assert set(PLACEHOLDER.findall(message.id)) == set(PLACEHOLDER.findall(message.string)), message.id
            assert compiled.gettext(message.id) == message.string, f"{locale}: run pybabel compile ({message.id!r})"


async def test_chinese_by_default_english_for_english_clients_and_switchable(harness: Harness) -> None:
    chinese = harness.person(910001, language="zh-hans")
    assert "您好" in text_of((await chinese.send("/start"))[0])
    unknown = harness.person(910002, language="fr")
    assert "您好" in text_of((await unknown.send("/start"))[0])
    english = harness.person(910003, language="en")
    assert "Hello" in text_of((await english.send("/start"))[0])

    answer = await chinese.press(LanguageCb(code="en").pack())
    assert "Language changed." in " ".join(text_of(r) for r in answer)
    assert "Hello" in text_of((await chinese.send("/start"))[0])
    answer = await chinese.press(LanguageCb(code="zh_CN").pack())
    assert "您好" in text_of((await chinese.send("/start"))[0])
