"""Languages: every string in the code is translated, the compiled catalogs are current, and users get
their language."""

from __future__ import annotations

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
