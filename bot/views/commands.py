"""The "/" command menus: the residents' (every private chat) and those of workers and staff (their own chat)."""

from __future__ import annotations

from aiogram.types import BotCommand
from aiogram.utils.i18n import gettext as _

from domain.menus import Menu

RESIDENT_COMMANDS = ("report", "my", "suggest", "home", "settings", "language", "help", "cancel")
COMMANDS = {
    Menu.RESIDENT: RESIDENT_COMMANDS,
    # Workers and staff may live in the community too: the residents' commands follow theirs.
    Menu.WORKER: ("tickets", "verify", "stats", *RESIDENT_COMMANDS),
    Menu.STAFF: (
        "tickets",
        "ledger",
        "stats",
        "topics",
        "newtopic",
        "broadcasts",
        "verify",
        "households",
        "register",
        *RESIDENT_COMMANDS,
    ),
}


def menu(which: Menu) -> list[BotCommand]:
    """The menu in the current language."""
    descriptions = {
        "report": _("Report a problem"),
        "my": _("My reports"),
        "tickets": _("Tickets to handle"),
        "ledger": _("Three-colour ledger"),
        "stats": _("Monthly figures and ranking"),
        "suggest": _("A suggestion for the deliberation"),
        "topics": _("Deliberation topics"),
        "newtopic": _("New deliberation topic"),
        "broadcasts": _("Monthly broadcasts"),
        "settings": _("Settings"),
        "home": _("My home and verification"),
        "verify": _("Verification requests (grid workers)"),
        "households": _("Verified households per building (staff)"),
        "register": _("Import the household register (staff)"),
        "language": _("Language"),
        "help": _("Help"),
        "cancel": _("Cancel"),
    }
    return [BotCommand(command=command, description=descriptions[command]) for command in COMMANDS[which]]
