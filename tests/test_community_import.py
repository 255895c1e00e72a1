"""The community file: reading and checking it, and importing it idempotently."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from domain.categories import list_categories
from domain.community_file import (
    CommunityFileError,
    CommunitySpec,
    building_links,
    import_community,
    load_community_file,
    loads_community,
)
from domain.people import building_by_link
from storage.db import SessionFactory
from storage.models import (
    Base,
    Building,
    Category,
    Community,
    Compound,
    Department,
    Grid,
    Membership,
    Rank,
    Role,
    Ticket,
    User,
)
from tests.conftest import SAMPLE_COMMUNITY, FakeClock

SAMPLE_TEXT = SAMPLE_COMMUNITY.read_text(encoding="utf-8")

SMALL = """
[community]
code = "t"
name = "测试社区"
name_en = "Test Community"

[[staff]]
telegram_id = 100001
name = "王书记"

[[grids]]
code = "g1"
name = "第一网格"
workers = [
  { telegram_id = 200001, name = "李娟" },
  { telegram_id = 200002, name = "张伟", rank = "backup" },
]
  [[grids.compounds]]
  code = "yinba"
  name = "银巴小区"
  buildings = [ { code = "1", units = 3 }, { code = "11", units = 2 } ]

[[categories]]
code = "flying-lead"
name = "飞线充电"
keywords = ["飞线", "充电"]
response_hours = 2
resolve_hours = 24

[[categories]]
code = "other"
name = "其他"
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"test bug: {old!r} is not in the file"
    return text.replace(old, new, 1)


def problems_of(text: str) -> list[str]:
    with pytest.raises(CommunityFileError) as caught:
        loads_community(text)
    return caught.value.problems


async def do_import(session_factory: SessionFactory, spec: CommunitySpec, clock: FakeClock) -> Any:
    async with session_factory() as session:
        return await import_community(session, spec, clock.now)


async def snapshot(session_factory: SessionFactory) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every structure table, to prove a re-import changes nothing at all."""
    tables = [Community, Grid, Compound, Building, Category, User, Membership]
    async with session_factory() as session:
        result = {}
        for model in tables:
            table = Base.metadata.tables[model.__tablename__]
            rows = await session.execute(select(table).order_by(*table.primary_key.columns))
            result[table.name] = [tuple(row) for row in rows]
        return result


async def one(session_factory: SessionFactory, query: Any) -> Any:
    async with session_factory() as session:
        return (await session.scalars(query)).one()


# --- reading and checking ------------------------------------------------------------------------------


def test_sample_file_describes_a_realistic_community() -> None:
    spec = load_community_file(SAMPLE_COMMUNITY)

    assert spec.community.code == "jsx"
    assert spec.community.name == "建设巷社区"
    assert len(spec.staff) == 2
    assert [grid.code for grid in spec.grids] == ["g1", "g2", "g3"]
    for grid in spec.grids:
        ranks = [worker.rank for worker in grid.workers]
        assert 1 <= ranks.count(Rank.PRIMARY) <= 2, grid.code
        assert ranks.count(Rank.BACKUP) >= 1, grid.code
    compounds = spec.compounds()
    assert len(compounds) == 3
    assert compounds[0].name == "银巴小区"
    # 银巴小区 is split between two grids, and both parts carry its name.
    assert [c.name for g in spec.grids for c in g.compounds if c.code == "yinba"] == ["银巴小区", "银巴小区"]

    keys = [building.link_key for _, _, building in spec.buildings()]
    assert "jsx_yinba_11" in keys
    assert len(keys) == len(set(keys))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) for key in keys)
    assert all(building.units >= 1 for _, _, building in spec.buildings())

    categories = {category.code: category for category in spec.categories}
    flying = categories["flying-lead"]
    assert (flying.name, flying.level, flying.response_hours, flying.resolve_hours) == (
        "飞线充电",
        "grid",
        2,
        24,
    )
    assert categories["property"].level == "community"
    assert spec.categories[-1].code == "other"
    names = {category.name for category in spec.categories}
    for expected in (
        "楼顶建筑垃圾",
        "楼道扶手",
        "管道堵塞",
        "停车",
        "噪声扰民",
        "楼道杂物",
        "公共设施",
        "物业服务",
    ):
        assert expected in names
    for category in spec.categories[:-1]:
        assert any(re.search(r"[\u4e00-\u9fff]", k) for k in category.keywords), category.code
        assert any(re.fullmatch(r"[a-z -]+", k) for k in category.keywords), category.code


def test_defaults_fill_in_what_a_clerk_leaves_out() -> None:
    spec = loads_community(SMALL)

    assert spec.community.timezone == "Asia/Shanghai"
    building = spec.grids[0].compounds[0].buildings[1]
    assert (building.code, building.name, building.name_en, building.units) == (
        "11",
        "11号楼",
        "Building 11",
        2,
    )
    assert building.link_key == "t_yinba_11"
    assert spec.grids[0].name_en == "第一网格"  # no English name given: the Chinese one
    assert [w.rank for w in spec.grids[0].workers] == ["primary", "backup"]
    other = spec.categories[1]
    assert (other.level, other.response_hours, other.resolve_hours, other.keywords) == ("grid", 24, 168, ())

    unquoted = loads_community(edit(SMALL, '{ code = "11", units = 2 }', "{ code = 11 }"))
    building = unquoted.grids[0].compounds[0].buildings[1]
    assert (building.code, building.units, building.link_key) == ("11", 1, "t_yinba_11")


def test_a_compound_split_between_grids_needs_its_name_once() -> None:
    text = (
        SMALL
        + """
[[grids]]
code = "g2"
name = "第二网格"
  [[grids.compounds]]
  code = "yinba"
  buildings = [ { code = "12" } ]
"""
    )
    spec = loads_community(text)
    second = spec.grids[1].compounds[0]
    assert (second.code, second.name, [b.code for b in second.buildings]) == ("yinba", "银巴小区", ["12"])
    assert [c.code for c in spec.compounds()] == ["yinba"]

    problems = problems_of(
        edit(
            text,
            'code = "yinba"\n  buildings = [ { code = "12" } ]',
            'code = "yinba"\n  name = "银巴"\n  buildings = [ { code = "12" } ]',
        )
    )
    assert problems == [
        "grids[1].compounds[0]: compound 'yinba' has name '银巴' here but '银巴小区' at grids[0].compounds[0]"
    ]

    problems = problems_of(edit(text, '{ code = "12" }', '{ code = "11" }'))
    assert problems == [
        "grids[1].compounds[0].buildings[0]: duplicate building code '11' in compound 'yinba' "
        "(already used at grids[0].compounds[0].buildings[1])"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            '{ telegram_id = 200011, name = "杨敏" }',
            '{ telegram_id = "200011", name = "杨敏" }',
            "grids[1].workers[0]: telegram_id must be an integer, not text '200011'",
            id="telegram-id-as-text",
        ),
        pytest.param(
            '{ telegram_id = 200011, name = "杨敏" }',
            '{ name = "杨敏" }',
            "grids[1].workers[0]: telegram_id is missing",
            id="telegram-id-missing",
        ),
        pytest.param(
            'code = "chaoyang"',
            'code = "chao yang"',
            "grids[2].compounds[0]: code 'chao yang' may contain only Latin letters, digits and '-'",
            id="code-with-space",
        ),
        pytest.param(
            'code = "flying-lead"',
            'code = "flying_lead"',
            "categories[0]: code 'flying_lead' may contain only",
            id="code-with-underscore",
        ),
        pytest.param(
            'code = "g2"',
            'code = "g1"',
            "grids[1]: duplicate grid code 'g1' (already used at grids[0])",
            id="duplicate-grid",
        ),
        pytest.param(
            'code = "other"',
            'code = "Noise"',
            "categories[12]: duplicate category code 'Noise' (already used at categories[6])",
            id="duplicate-category-any-case",
        ),
        pytest.param(
            '{ telegram_id = 200012, name = "周强", rank = "backup" }',
            '{ telegram_id = 200011, name = "周强", rank = "backup" }',
            "grids[1].workers[1]: duplicate worker telegram_id '200011' (already used at grids[1].workers[0])",
            id="duplicate-worker",
        ),
        pytest.param(
            '{ code = "11", units = 2 },',
            '{ code = "11", units = "2" },',
            "grids[1].compounds[0].buildings[2]: units must be an integer, not text '2'",
            id="units-as-text",
        ),
        pytest.param(
            '{ code = "11", units = 2 },',
            '{ code = "11", units = 0 },',
            "grids[1].compounds[0].buildings[2]: units must be between 1 and 99, not 0",
            id="no-units",
        ),
        pytest.param(
            '{ code = "11", units = 2 },',
            '{ code = "11", unit = 2 },',
            "grids[1].compounds[0].buildings[2]: unknown key 'unit' (expected one of: code, name, name_en, units)",
            id="misspelt-key",
        ),
        pytest.param(
            'level = "community"\nresponse_hours = 24',
            'level = "city"\nresponse_hours = 24',
            "categories[10]: level must be one of 'grid', 'community', 'street', 'department', not text 'city'",
            id="unknown-level",
        ),
        pytest.param(
            'rank = "backup" },   # 楼栋长',
            'rank = "boss" },   # 楼栋长',
            "grids[0].workers[2]: rank must be one of 'primary', 'backup', not text 'boss'",
            id="unknown-rank",
        ),
        pytest.param(
            "response_hours = 2\nresolve_hours = 24",
            "response_hours = 2.5\nresolve_hours = 24",
            "categories[0]: response_hours must be an integer, not the number 2.5",
            id="hours-as-decimal",
        ),
        pytest.param(
            "response_hours = 2\nresolve_hours = 24",
            "response_hours = 48\nresolve_hours = 24",
            "categories[0]: resolve_hours (24) must not be shorter than response_hours (48)",
            id="resolve-before-response",
        ),
        pytest.param(
            "keywords = []",
            'keywords = "其他"',
            "categories[12]: keywords must be a list",
            id="keywords-not-a-list",
        ),
        pytest.param(
            'timezone = "Asia/Shanghai"',
            'timezone = "Beijing"',
            "community: timezone 'Beijing' is not a known time zone",
            id="bad-timezone",
        ),
        pytest.param(
            'name = "王书记"',
            'name = ""',
            "staff[0]: name must not be empty",
            id="empty-name",
        ),
    ],
)
def test_mistakes_are_reported_with_their_place(old: str, new: str, expected: str) -> None:
    problems = problems_of(edit(SAMPLE_TEXT, old, new))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_a_community_without_staff_is_refused() -> None:
    text = re.sub(r"\[\[staff\]\].*?(?=# ── Grids)", "", SAMPLE_TEXT, flags=re.DOTALL)
    assert "[[staff]]" not in text
    problems = problems_of(text)
    assert len(problems) == 1
    assert "at least one community staff member ([[staff]]) is needed" in problems[0]

    problems = problems_of(SMALL.replace("[[staff]]", "[[nobody]]"))
    assert any("at least one community staff member" in p for p in problems)


def test_link_keys_longer_than_telegram_allows_are_refused() -> None:
    community, compound = "c" * 30, "k" * 30
    text = edit(edit(SMALL, 'code = "t"', f'code = "{community}"'), 'code = "yinba"', f'code = "{compound}"')
    # 30 + 1 + 30 + 1 + 2 = 64: exactly at the limit.
    spec = loads_community(text)
    assert len(spec.grids[0].compounds[0].buildings[1].link_key) == 64

    problems = problems_of(edit(text, '{ code = "11", units = 2 }', '{ code = "110", units = 2 }'))
    assert len(problems) == 1
    assert problems[0].startswith(
        f"grids[0].compounds[0].buildings[1]: the QR link key '{community}_{compound}_110' is 65 characters long"
    )


def test_every_problem_is_reported_at_once_and_it_is_a_value_error(tmp_path: Path) -> None:
    text = edit(SMALL, "telegram_id = 200001", 'telegram_id = "x"')
    text = edit(text, 'code = "other"', 'code = "flying-lead"')
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        load_community_file(path)
    assert isinstance(caught.value, CommunityFileError)
    assert caught.value.problems == [
        "grids[0].workers[0]: telegram_id must be an integer, not text 'x'",
        "categories[1]: duplicate category code 'flying-lead' (already used at categories[0])",
    ]
    message = str(caught.value)
    assert message.startswith(f"{path}: 2 problems")
    assert "grids[0].workers[0]: telegram_id must be an integer" in message


def test_unreadable_files_are_community_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CommunityFileError, match="cannot read the file"):
        load_community_file(tmp_path / "missing.toml")
    with pytest.raises(CommunityFileError, match="not valid TOML"):
        loads_community('[community]\ncode = "jsx')
    with pytest.raises(CommunityFileError, match=r"\[\[grids\]\] with double brackets"):
        loads_community(edit(SMALL, "[[grids]]", "[grids]").replace("[[grids.compounds]]", "[grids.compounds]"))


# --- importing -----------------------------------------------------------------------------------------


async def test_sample_imports(session_factory: SessionFactory, clock: FakeClock) -> None:
    spec = load_community_file(SAMPLE_COMMUNITY)
    report = await do_import(session_factory, spec, clock)

    assert report["community"].created == 1
    assert report["grids"].created == 3
    assert report["compounds"].created == 3  # 银巴小区 is one row although two grids list it
    assert report["buildings"].created == len(spec.buildings()) == 26
    assert report["categories"].created == len(spec.categories)
    assert report["users"].created == 17  # 2 staff, 8 grid workers, 2 street office, 5 department people
    assert report["memberships"].created == 17
    assert report["departments"].created == 4
    assert "grids:" in report.summary() and "3 created" in report.summary()

    async with session_factory() as session:
        community = (await session.scalars(select(Community))).one()
        assert (community.code, community.name, community.timezone) == ("jsx", "建设巷社区", "Asia/Shanghai")
        assert report.community_id == community.id

        building = await session.scalar(select(Building).where(Building.link_key == "jsx_yinba_11"))
        assert building is not None
        assert (building.name, building.name_en, building.units) == ("11号楼", "Building 11", 2)
        assert (building.compound.name, building.grid.code) == ("银巴小区", "g2")
        first = await session.scalar(select(Building).where(Building.link_key == "jsx_yinba_1"))
        assert first is not None and first.grid.code == "g1" and first.compound_id == building.compound_id

        codes = list(await session.scalars(select(Category.code).order_by(Category.sort_order)))
        assert codes == [category.code for category in spec.categories]

        backup = await session.scalar(select(Membership).where(Membership.user_id == 200003))
        assert backup is not None
        assert (backup.role, backup.scope, backup.rank, backup.display_name) == (
            "grid_worker",
            "g1",
            "backup",
            "张伟",
        )
        assert backup.grid_id == first.grid_id
        staff = await session.scalar(select(Membership).where(Membership.user_id == 100001))
        assert staff is not None
        assert (staff.role, staff.scope, staff.grid_id, staff.display_name) == ("staff", "", None, "王书记")

        worker = await session.get(User, 200001)
        assert worker is not None
        assert (worker.full_name, worker.language, worker.building_id) == ("李娟", None, None)
        assert worker.created_at == clock.now

    # The resident-facing lookups see what was imported.
    async with session_factory() as session:
        assert (await building_by_link(session, "jsx_yinba_11")) is not None
    async with session_factory() as session:
        listed = await list_categories(session, report.community_id)
    assert [c.code for c in listed] == [c.code for c in spec.categories]


async def test_importing_the_same_file_again_changes_nothing(session_factory: SessionFactory, clock: FakeClock) -> None:
    spec = load_community_file(SAMPLE_COMMUNITY)
    await do_import(session_factory, spec, clock)
    before = await snapshot(session_factory)

    clock.advance(days=1)
    report = await do_import(session_factory, load_community_file(SAMPLE_COMMUNITY), clock)

    assert await snapshot(session_factory) == before
    assert not report.changed
    assert report["buildings"].unchanged == 26
    assert report["users"].unchanged == 17
    assert "no changes" in report.summary()


async def test_an_edited_file_updates_and_switches_off_without_breaking_tickets(
    session_factory: SessionFactory, clock: FakeClock
) -> None:
    await do_import(session_factory, loads_community(SMALL), clock)
    async with session_factory() as session, session.begin():
        building = await session.scalar(select(Building).where(Building.link_key == "t_yinba_11"))
        category = await session.scalar(select(Category).where(Category.code == "flying-lead"))
        assert building is not None and category is not None
        session.add(User(id=300001, full_name="张女士", building_id=building.id, created_at=clock.now))
        await session.flush()
        ticket = Ticket(
            community_id=category.community_id,
            category_id=category.id,
            building_id=building.id,
            grid_id=building.grid_id,
            reporter_id=300001,
            assignee_id=200001,
            description="楼上有人从窗户飞线给电动车充电",
            created_at=clock.now,
            updated_at=clock.now,
        )
        session.add(ticket)
    ticket_id, building_id, category_id = ticket.id, building.id, category.id

    edited = edit(
        SMALL,
        '{ code = "1", units = 3 }, { code = "11", units = 2 }',
        '{ code = "1", name = "一号楼", units = 4 }',
    )
    edited = edit(edited, '  { telegram_id = 200002, name = "张伟", rank = "backup" },\n', "")
    edited = edit(
        edited,
        '{ telegram_id = 200001, name = "李娟" }',
        '{ telegram_id = 200001, name = "李娟", rank = "backup" }',
    )
    edited = edit(
        edited,
        'code = "flying-lead"\nname = "飞线充电"\nkeywords = ["飞线", "充电"]\n'
        "response_hours = 2\nresolve_hours = 24\n",
        "",
    )
    edited += '\n[[categories]]\ncode = "noise"\nname = "噪声扰民"\nkeywords = ["噪音", "noise"]\n'
    edited = edit(edited, "\n[[categories]]\n\n[[categories]]", "\n[[categories]]")  # the emptied block
    clock.advance(days=3)
    report = await do_import(session_factory, loads_community(edited), clock)

    assert (report["buildings"].updated, report["buildings"].deactivated, report["buildings"].created) == (
        1,
        1,
        0,
    )
    assert (report["categories"].created, report["categories"].deactivated) == (1, 1)
    assert (report["memberships"].updated, report["memberships"].deactivated) == (1, 1)
    assert report["users"].created == 0

    async with session_factory() as session:
        first = await session.scalar(select(Building).where(Building.link_key == "t_yinba_1"))
        assert first is not None and (first.name, first.name_en, first.units) == ("一号楼", "Building 1", 4)
        gone = await session.get(Building, building_id)
        assert gone is not None and not gone.active and gone.link_key == "t_yinba_11"
        assert not (await session.get(Category, category_id)).active  # type: ignore[union-attr]
        # The ticket still loads with its (now inactive) building and category.
        kept = await session.get(Ticket, ticket_id)
        assert kept is not None
        assert (kept.building.code, kept.category.code, kept.reporter_id) == ("11", "flying-lead", 300001)
        memberships = {m.user_id: m for m in await session.scalars(select(Membership))}
        assert memberships[200001].rank == Rank.BACKUP and memberships[200001].active
        assert not memberships[200002].active
        assert await session.get(User, 200002) is not None  # people are never deleted
        noise = await session.scalar(select(Category).where(Category.code == "noise"))
        assert noise is not None and noise.keywords == ["噪音", "noise"] and noise.sort_order == 1
    async with session_factory() as session:
        assert await building_by_link(session, "t_yinba_11") is None
    async with session_factory() as session:
        listed = await list_categories(session, kept.community_id)
    assert [c.code for c in listed] == ["other", "noise"]

    # Bringing the old file back switches the same rows on again rather than adding new ones.
    report = await do_import(session_factory, loads_community(SMALL), clock)
    assert report["buildings"].reactivated == 1 and report["buildings"].created == 0
    assert report["categories"].reactivated == 1 and report["categories"].deactivated == 1
    assert report["memberships"].reactivated == 1
    async with session_factory() as session:
        again = await session.scalar(select(Building).where(Building.link_key == "t_yinba_11"))
        assert again is not None and again.id == building_id and again.active
        assert await session.scalar(select(func.count()).select_from(Building)) == 2
        flying = await session.get(Category, category_id)
        assert flying is not None and flying.active and flying.sort_order == 0


async def test_a_workers_own_user_record_is_left_alone(session_factory: SessionFactory, clock: FakeClock) -> None:
    async with session_factory() as session, session.begin():
        # 李娟 used the bot as a resident before the community file named her.
        session.add(User(id=200001, full_name="Li Juan", language="en", telegram_language="en", created_at=clock.now))
    clock.advance(hours=1)
    await do_import(session_factory, loads_community(SMALL), clock)
    async with session_factory() as session, session.begin():
        home = await session.scalar(select(Building).where(Building.link_key == "t_yinba_1"))
        user = await session.get(User, 200001)
        assert home is not None and user is not None
        user.building_id, user.unit = home.id, 2

    renamed = edit(SMALL, 'name = "李娟"', 'name = "李娟（网格长）"')
    report = await do_import(session_factory, loads_community(renamed), clock)

    assert report["users"].created == 0
    async with session_factory() as session:
        user = await session.get(User, 200001)
        assert user is not None
        assert (user.full_name, user.language, user.unit) == ("Li Juan", "en", 2)
        assert user.building_id == home.id
        assert user.created_at == clock.now - timedelta(hours=1)
        membership = await session.scalar(select(Membership).where(Membership.user_id == 200001))
        assert membership is not None and membership.display_name == "李娟（网格长）"


async def test_a_building_can_move_to_another_grid(session_factory: SessionFactory, clock: FakeClock) -> None:
    await do_import(session_factory, loads_community(SMALL), clock)
    moved = (
        edit(SMALL, '{ code = "1", units = 3 }, ', "")
        + """
[[grids]]
code = "g2"
name = "第二网格"
workers = [ { telegram_id = 200001, name = "李娟" } ]
  [[grids.compounds]]
  code = "yinba"
  buildings = [ { code = "1", units = 3 } ]
"""
    )
    report = await do_import(session_factory, loads_community(moved), clock)
    assert report["buildings"].updated == 1 and report["buildings"].deactivated == 0
    assert report["compounds"].created == 0
    async with session_factory() as session:
        building = await session.scalar(select(Building).where(Building.link_key == "t_yinba_1"))
        assert building is not None and building.active and building.grid.code == "g2"
        roles = set(
            (await session.execute(select(Membership.user_id, Membership.scope).where(Membership.active))).all()
        )
    assert roles == {(100001, ""), (200001, "g1"), (200002, "g1"), (200001, "g2")}


async def test_communities_do_not_touch_each_other(session_factory: SessionFactory, clock: FakeClock) -> None:
    await do_import(session_factory, load_community_file(SAMPLE_COMMUNITY), clock)
    await do_import(session_factory, loads_community(SMALL), clock)
    shrunk = edit(SMALL, ', { code = "11", units = 2 }', "")
    report = await do_import(session_factory, loads_community(shrunk), clock)
    assert report["buildings"].deactivated == 1

    async with session_factory() as session:
        jsx = await building_links(session, "jsx")
    assert len(jsx) == 26
    async with session_factory() as session:
        everything = await building_links(session)
    assert len(everything) == 27
    async with session_factory() as session:
        counts = dict(
            (
                await session.execute(select(Membership.community_id, func.count()).group_by(Membership.community_id))
            ).all()
        )
    assert sorted(counts.values()) == [3, 17]


async def test_building_links_list_active_buildings_in_printing_order(
    session_factory: SessionFactory, clock: FakeClock
) -> None:
    await do_import(session_factory, load_community_file(SAMPLE_COMMUNITY), clock)
    async with session_factory() as session:
        links = await building_links(session, "jsx")

    keys = [link.link_key for link in links]
    assert keys[:3] == ["jsx_yinba_1", "jsx_yinba_2", "jsx_yinba_3"]
    assert keys.index("jsx_yinba_2") < keys.index("jsx_yinba_10") < keys.index("jsx_yinba_zh")
    assert keys[-1] == "jsx_chaoyang_6"
    eleven = links[keys.index("jsx_yinba_11")]
    assert (eleven.community_name, eleven.compound_name, eleven.building_name, eleven.units) == (
        "建设巷社区",
        "银巴小区",
        "11号楼",
        2,
    )
    async with session_factory() as session:
        assert await building_links(session, "nowhere") == []


# --- the street office and departments (escalation ladder) -------------------------------------------------

LADDER = """
[[street]]
telegram_id = 500001
name = "陈主任"

[[departments]]
code = "housing"
name = "住建局"
name_en = "Housing Bureau"
people = [ { telegram_id = 600001, name = "韩工" } ]
"""


def test_street_and_department_problems_are_named_with_their_place() -> None:
    broken = (
        SMALL
        + LADDER
        + """
[[street]]
telegram_id = 500001
name = "again"

[[departments]]
code = "housing"
name = "重复"
people = [ { telegram_id = 600002, name = "x" } ]

[[departments]]
code = "power"
name = "供电局"
people = []

[[departments]]
code = "enforcement"
name = "综合执法局"
people = [ { telegram_id = "600021", name = "丁队长" } ]
"""
    )
    found = problems_of(broken)
    assert "street[1]: duplicate street telegram_id '500001' (already used at street[0])" in found
    assert "departments[1]: duplicate department code 'housing' (already used at departments[0])" in found
    assert any(p.startswith("departments[2]: at least one person is needed") for p in found)
    assert any(p.startswith("departments[3].people[0]: telegram_id must be an integer") for p in found)


async def test_street_and_departments_import_as_memberships_and_deactivate(
    session_factory: SessionFactory, clock: FakeClock
) -> None:
    report = await do_import(session_factory, loads_community(SMALL + LADDER), clock)
    assert report["departments"].created == 1
    async with session_factory() as session:
        duties = {(m.user_id, m.role, m.scope, m.active) for m in await session.scalars(select(Membership))}
        assert (500001, Role.STREET, "", True) in duties
        assert (600001, Role.DEPARTMENT, "housing", True) in duties
        department = (await session.scalars(select(Department))).one()
        assert (department.code, department.name_en, department.active) == ("housing", "Housing Bureau", True)
    assert not (await do_import(session_factory, loads_community(SMALL + LADDER), clock)).changed
    report = await do_import(session_factory, loads_community(SMALL), clock)
    assert report["departments"].deactivated == 1
    async with session_factory() as session:
        department = (await session.scalars(select(Department))).one()
        assert not department.active
        ladder = list(
            await session.scalars(select(Membership).where(Membership.role.in_([Role.STREET, Role.DEPARTMENT])))
        )
        assert ladder and not any(m.active for m in ladder)


DELIBERATION = """
[deliberation]
meeting_day = 30
meeting_time = "20:00"
meeting_place = "银巴小区活动室"
agenda = "0 10  27 * *"
feedback = "30 18 3 * *"
candidate_threshold = 4
"""


def test_deliberation_problems_are_named_with_their_place() -> None:
    broken = SMALL + DELIBERATION.replace("= 30\n", "= 0\n").replace('"20:00"', '"8pm"')
    broken = broken.replace('"0 10  27 * *"', '"every month"').replace("candidate_threshold = 4", "threshold = 4")
    found = problems_of(broken)
    assert "deliberation: meeting_day must be between 1 and 31, not 0" in found
    assert "deliberation: meeting_time must be a time of day like '19:30', not '8pm'" in found
    assert any(p.startswith("deliberation: agenda must be a crontab line") for p in found)
    assert any(p.startswith("deliberation: unknown key 'threshold'") for p in found)


async def test_the_deliberation_schedule_imports_and_defaults(
    session_factory: SessionFactory, clock: FakeClock
) -> None:
    await do_import(session_factory, loads_community(SMALL), clock)
    async with session_factory() as session:
        community = await session.scalar(select(Community))
        assert community is not None
        assert (community.meeting_day, community.meeting_time, community.agenda_cron) == (28, "19:30", "0 9 25 * *")
    report = await do_import(session_factory, loads_community(SMALL + DELIBERATION), clock)
    assert report["community"].updated == 1
    async with session_factory() as session:
        community = await session.scalar(select(Community))
        assert community is not None
        assert (community.meeting_day, community.meeting_time, community.meeting_place) == (
            30,
            "20:00",
            "银巴小区活动室",
        )
        assert (community.agenda_cron, community.feedback_cron, community.candidate_threshold) == (
            "0 10 27 * *",
            "30 18 3 * *",
            4,
        )
    again = await do_import(session_factory, loads_community(SMALL + DELIBERATION), clock)
    assert again["community"].unchanged == 1
