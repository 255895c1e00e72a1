"""Buildings and categories, read once a minute instead of on every update.

They change only when a community file is imported, and a wizard step that reads them from the database
costs more than the step's own write. A running bot sees an import within ``ttl`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from domain.categories import list_categories
from domain.people import Person, resident_home
from storage.models import Building, Category


class Directory:
    def __init__(self, ttl: float = 60.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.monotonic = monotonic
        self._categories: dict[int, tuple[float, list[Category]]] = {}
        self._buildings: dict[int, tuple[float, Building | None]] = {}

    def _fresh(self, taken_at: float) -> bool:
        return self.monotonic() - taken_at < self.ttl

    async def categories(self, session: AsyncSession, community_id: int) -> list[Category]:
        """The community's active categories, in the order of the community file."""
        cached = self._categories.get(community_id)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        found = await list_categories(session, community_id)
        self._categories[community_id] = (self.monotonic(), found)
        return found

    async def category(self, session: AsyncSession, community_id: int, category_id: int) -> Category | None:
        return next((c for c in await self.categories(session, community_id) if c.id == category_id), None)

    async def home(self, session: AsyncSession, person: Person) -> Building | None:
        """The active building a resident lives in, or None if they have not said (or it was removed)."""
        if person.building_id is None:
            return None
        cached = self._buildings.get(person.building_id)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        found = await resident_home(session, person)
        self._buildings[person.building_id] = (self.monotonic(), found)
        return found
