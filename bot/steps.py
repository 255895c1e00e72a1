"""Every step that waits for someone's words has a way out, so nothing they say later is swallowed by it.

A step (an FSM state: a wizard's page, a prompt for a reason or a note) ends

- on /cancel (handlers/common.py);
- on any other command or main-menu button, which then does what it always does (:class:`StepExits`);
- after ``TEXT_STEP_TIMEOUT_MINUTES`` (:class:`ExpiringSteps`): whatever comes after that is taken as new, so a
  problem typed the next day becomes a report, not the reason for an old prompt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from functools import cache
from typing import Any

from aiogram import BaseMiddleware
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.types import Message, TelegramObject
from aiogram.utils.i18n import get_i18n

from bot import views
from domain.clock import Clock

# The stored state carries the second it was entered: "ReportWizard:photos@1764979200". Kept in the state itself
# so that reading it costs nothing more than reading the state, on the database and on Redis alike.
STAMP = "@"


class ExpiringSteps(BaseStorage):
    """Wraps the FSM storage: a state entered more than ``timeout`` ago reads as no state, and is cleared.

    Handlers never see the stamp: they set and compare states as usual.
    """

    def __init__(self, inner: BaseStorage, timeout: timedelta, clock: Clock) -> None:
        self.inner = inner
        self.timeout = timeout.total_seconds()
        self.clock = clock

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        name = state.state if isinstance(state, State) else state
        if name is not None:
            name = f"{name}{STAMP}{int(self.clock().timestamp())}"
        await self.inner.set_state(key, name)

    async def get_state(self, key: StorageKey) -> str | None:
        stored = await self.inner.get_state(key)
        if stored is None:
            return None
        name, _, entered = stored.rpartition(STAMP)
        if not entered.isdigit():
            return stored  # a state stored before steps were stamped: it stays until it ends
        if self.clock().timestamp() - int(entered) > self.timeout:
            await self.inner.set_state(key, None)
            await self.inner.set_data(key, {})
            return None
        return name

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self.inner.set_data(key, data)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return await self.inner.get_data(key)

    async def close(self) -> None:
        await self.inner.close()


class StepExits(BaseMiddleware):
    """Message outer middleware, after the guard and i18n: a command or a main-menu button typed in the middle
    of a step ends the step first, and is then handled as it would be anywhere else.

    /cancel is left to its handler, which says what it cancelled.
    """

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        state: FSMContext | None = data.get("state")
        # An update fed again after a crash (handlers/resume.py) already left its step, if it did, the first time.
        resumed = data.get("resume", False)
        if state is not None and not resumed and data.get("raw_state") is not None and _leaves_the_step(event):
            await state.clear()
            data["raw_state"] = None  # what StateFilter reads: the handlers see no step
        return await handler(event, data)


def _leaves_the_step(event: TelegramObject) -> bool:
    if not isinstance(event, Message) or event.text is None:
        return False
    text = event.text
    if text.startswith("/"):
        return text.split(maxsplit=1)[0].partition("@")[0] != "/cancel"
    return text in _main_menu_labels(get_i18n().current_locale)


@cache
def _main_menu_labels(locale: str) -> frozenset[str]:
    """The main menu's buttons in ``locale``, the current one (translated once, not for every message)."""
    return frozenset(str(label) for label in views.MAIN_MENU_BUTTONS)
