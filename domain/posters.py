"""What a stairwell poster names: the building, its grid, and the grid's workers (a phone only if given)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.community_file import BuildingLink, building_links
from storage.models import Building, Grid, Membership, Rank, Role


@dataclass(frozen=True)
class GridContact:
    name: str
    phone: str  # "" when the community file gives none


@dataclass(frozen=True)
class PosterBuilding:
    link: BuildingLink
    grid_name: str
    grid_name_en: str
    workers: tuple[GridContact, ...]  # the grid's primary workers (its backups when it has no primary)


async def poster_buildings(session: AsyncSession, community_code: str | None = None) -> list[PosterBuilding]:
    """Every active building, in the order of ``building_links`` (community, compound, building number)."""
    links = await building_links(session, community_code)
    async with session.begin():
        grids = dict(
            (
                await session.execute(
                    select(Building.link_key, Grid.id)
                    .join(Grid, Grid.id == Building.grid_id)
                    .where(Building.link_key.in_([link.link_key for link in links]))
                )
            ).all()
        )
        names = {
            grid_id: (name, name_en or name)
            for grid_id, name, name_en in await session.execute(
                select(Grid.id, Grid.name, Grid.name_en).where(Grid.id.in_(grids.values()))
            )
        }
        workers: dict[int | None, list[tuple[str, GridContact]]] = {}
        for grid_id, rank, name, phone in await session.execute(
            select(Membership.grid_id, Membership.rank, Membership.display_name, Membership.phone)
            .where(
                Membership.grid_id.in_(grids.values()),
                Membership.role == Role.GRID_WORKER,
                Membership.active.is_(True),
            )
            .order_by(Membership.id)
        ):
            workers.setdefault(grid_id, []).append((rank, GridContact(name, phone)))
    posters = []
    for link in links:
        grid_id = grids[link.link_key]
        staff = workers.get(grid_id, [])
        primary = [contact for rank, contact in staff if rank == Rank.PRIMARY]
        shown = primary or [contact for _, contact in staff]
        posters.append(PosterBuilding(link, *names[grid_id], tuple(shown)))
    return posters
