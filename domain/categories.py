"""Problem categories of a community, and guessing one from what a resident typed."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Category


async def list_categories(session: AsyncSession, community_id: int) -> list[Category]:
    async with session.begin():
        return list(
            await session.scalars(
                select(Category)
                .where(Category.community_id == community_id, Category.active.is_(True))
                .order_by(Category.sort_order, Category.id)
            )
        )


def suggest_category(categories: list[Category], text: str) -> Category | None:
    """The category whose keywords occur most often in the text; None when nothing matches."""
    lowered = text.lower()
    best, best_hits = None, 0
    for category in categories:
        hits = sum(1 for keyword in category.keywords if keyword and keyword.lower() in lowered)
        if hits > best_hits:
            best, best_hits = category, hits
    return best
