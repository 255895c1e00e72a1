"""Languages: Simplified Chinese by default, English complete. Catalogs live in ``bot/locales``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiogram.types import TelegramObject
from aiogram.utils.i18n import I18n, SimpleI18nMiddleware, get_i18n

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
DOMAIN = "bot"
LANGUAGES = {"zh_CN": "简体中文", "en": "English"}


def create_i18n(default_locale: str = "zh_CN") -> I18n:
    return I18n(path=LOCALES_DIR, default_locale=default_locale, domain=DOMAIN)


class SpeaksLanguage(Protocol):
    language: str | None
    telegram_language: str | None


def locale_of(user: SpeaksLanguage | None, i18n: I18n) -> str:
    """The user's chosen language, else their Telegram client's if we have it, else the default."""
    if user is None:
        return i18n.default_locale
    if user.language in i18n.available_locales:
        return user.language
    client = (user.telegram_language or "").lower().split("-")[0]
    if client == "zh":  # zh, zh-hans, zh-cn … all read Simplified Chinese here
        return "zh_CN"
    return client if client in i18n.available_locales else i18n.default_locale


class UserI18nMiddleware(SimpleI18nMiddleware):
    async def get_locale(self, event: TelegramObject, data: dict[str, Any]) -> str:
        user: SpeaksLanguage | None = data.get("user")
        if user is not None:
            return locale_of(user, self.i18n)
        return await super().get_locale(event, data)


def localized(obj: Any) -> str:
    """The English name in English when there is one, else the Chinese name."""
    if get_i18n().current_locale == "en" and getattr(obj, "name_en", None):
        return str(obj.name_en)
    return str(obj.name)
