"""The tests import aiogram as the bot does, its types built when first used (bot/lazy_types.py)."""

from bot.lazy_types import import_aiogram

import_aiogram()
