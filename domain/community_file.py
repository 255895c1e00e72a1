"""The community file: one TOML file that describes a community, and importing it into the database.

The file is written by a community office clerk, so reading it checks everything and names the place of
every problem (``grids[1].workers[0]: telegram_id must be an integer``) before anything is written.
``bot/communities/sample.toml`` (``resident-bot init`` copies it) documents the format field by field.

Importing is an idempotent upsert by natural keys (the codes in the file): importing the same file twice
changes nothing, an edited file updates what changed, and whatever disappeared from the file is switched
off (``active = False``), never deleted, because tickets refer to it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.month_summary import forget_summaries
from domain.ticket_counts import recount
from storage.models import (
    Building,
    Category,
    Community,
    Compound,
    Department,
    Grid,
    Level,
    Membership,
    Rank,
    Role,
    User,
)

CODE_PATTERN = re.compile(r"[A-Za-z0-9-]+")
MAX_CODE = 32  # the width of the code columns
MAX_NAME = 100  # the width of the name columns
MAX_LINK_KEY = 64  # Telegram's limit for the /start payload
MAX_UNITS = 99
MAX_HOURS = 24 * 366
MAX_TELEGRAM_ID = 2**63 - 1
MAX_PHONE = 32
PHONE = re.compile(r"\+?[0-9][0-9 \-]{4,30}")
DEFAULT_TIMEZONE = "Asia/Shanghai"
MEETING_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
DEFAULT_RESPONSE_HOURS = 24
DEFAULT_RESOLVE_HOURS = 168


class CommunityFileError(ValueError):
    """The community file cannot be used; ``problems`` lists every problem found, each with its place."""

    def __init__(self, problems: Iterable[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            message = f"{head}{len(self.problems)} problems in the community file:\n{lines}"
        super().__init__(message)


# --- what the file says --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliberationSpec:
    """The ``[deliberation]`` section: when the monthly meeting is, and when its broadcasts go out."""

    meeting_day: int = 28  # day of the month; in a shorter month, its last day
    meeting_time: str = "19:30"
    meeting_place: str = ""
    agenda: str = "0 9 25 * *"  # crontab, in the community's time zone
    feedback: str = "0 19 5 * *"
    candidate_threshold: int = 3  # tickets of one category in one compound in a month that make a topic


@dataclass(frozen=True)
class ReportsSpec:
    """The ``[reports]`` section: the office's monthly report, and the community's public notice chat (公示)."""

    monthly: str = "0 8 1 * *"  # crontab: figures, chart and spreadsheet of the last month, to staff and street
    public_chat_id: int | None = None  # a Telegram channel or group for public notices; None: none
    public_closed_tickets: bool = False  # also a short notice there of every closed ticket


@dataclass(frozen=True)
class CommunityInfo:
    code: str
    name: str
    name_en: str
    timezone: str
    deliberation: DeliberationSpec = DeliberationSpec()
    reports: ReportsSpec = ReportsSpec()


@dataclass(frozen=True)
class PersonSpec:
    """A grid worker (in a grid's ``workers``) or a community staff member (in ``[[staff]]``)."""

    telegram_id: int
    name: str
    rank: str = Rank.PRIMARY
    phone: str = ""  # printed on the stairwell poster of a grid worker's buildings, only when given


@dataclass(frozen=True)
class BuildingSpec:
    code: str
    name: str
    name_en: str
    units: int
    link_key: str  # the /start payload printed on the building's QR code


@dataclass(frozen=True)
class CompoundSpec:
    """A compound's buildings inside one grid; a compound split between grids appears once per grid."""

    code: str
    name: str
    name_en: str
    buildings: tuple[BuildingSpec, ...]


@dataclass(frozen=True)
class GridSpec:
    code: str
    name: str
    name_en: str
    workers: tuple[PersonSpec, ...]
    compounds: tuple[CompoundSpec, ...]


@dataclass(frozen=True)
class CategorySpec:
    code: str
    name: str
    name_en: str
    keywords: tuple[str, ...]
    level: str
    response_hours: int
    resolve_hours: int


@dataclass(frozen=True)
class DepartmentSpec:
    """A department (or the property company) that escalated tickets can go to, with its people."""

    code: str
    name: str
    name_en: str
    people: tuple[PersonSpec, ...]


# The household register's fields, each read from the column the [register] section names; building, room,
# name and phone are required there, unit (for buildings of one unit) and compound (for a community whose
# compounds share building numbers) are optional.
REGISTER_FIELDS = ("compound", "building", "unit", "room", "name", "phone")
REGISTER_REQUIRED = ("building", "room", "name", "phone")


@dataclass(frozen=True)
class RegisterSpec:
    """The ``[register]`` section: the household register's column headings, and the sheet of an .xlsx file."""

    columns: Mapping[str, str]  # field (REGISTER_FIELDS) -> the heading in the office's file
    sheet: str = ""  # "" : the first sheet

    def as_record(self) -> dict[str, Any]:
        """As kept in ``communities.register_columns``."""
        return {"columns": dict(self.columns), "sheet": self.sheet}


@dataclass(frozen=True)
class CommunitySpec:
    community: CommunityInfo
    staff: tuple[PersonSpec, ...]
    grids: tuple[GridSpec, ...]
    categories: tuple[CategorySpec, ...]
    street: tuple[PersonSpec, ...] = ()  # the street office's people (街道)
    departments: tuple[DepartmentSpec, ...] = ()
    register: RegisterSpec | None = None

    def buildings(self) -> list[tuple[GridSpec, CompoundSpec, BuildingSpec]]:
        """Every building with the grid and compound it is listed under, in file order."""
        return [
            (grid, compound, building)
            for grid in self.grids
            for compound in grid.compounds
            for building in compound.buildings
        ]

    def compounds(self) -> list[CompoundSpec]:
        """Each compound once (its first appearance), in file order."""
        seen: dict[str, CompoundSpec] = {}
        for grid in self.grids:
            for compound in grid.compounds:
                seen.setdefault(compound.code, compound)
        return list(seen.values())


# --- reading and checking ------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A value as the clerk wrote it, for error messages."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list [...]"
    if isinstance(value, dict):
        return "a table {...}"
    return f"a {type(value).__name__}"


class _Reader:
    """Reads values out of the parsed TOML, collecting every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}" if where else text)

    def known_keys(self, table: Mapping[str, Any], where: str, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (expected one of: {', '.join(allowed)})")

    def table(self, parent: Mapping[str, Any], key: str, *, optional: bool = False) -> dict[str, Any] | None:
        """The section ``[key]``; an optional one that is left out is empty (every key takes its default)."""
        value = parent.get(key)
        if value is None:
            if optional:
                return {}
            self.problem("", f"the [{key}] section is missing")
            return None
        if not isinstance(value, dict):
            self.problem(key, f"must be a section [{key}], not {_describe(value)}")
            return None
        return value

    def tables(self, parent: Mapping[str, Any], where: str, key: str) -> list[tuple[str, dict[str, Any]]]:
        """A list of tables (``[[grids]]``, or ``workers = [ {...}, {...} ]``), each with its place."""
        place = f"{where}.{key}" if where else key
        value = parent.get(key, [])
        if not isinstance(value, list):
            self.problem(
                place,
                f"must be a list of tables (write [[{place}]] with double brackets), not {_describe(value)}",
            )
            return []
        found = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                found.append((f"{place}[{index}]", item))
            else:
                self.problem(f"{place}[{index}]", f"must be a table like {{ code = ... }}, not {_describe(item)}")
        return found

    def text(
        self,
        table: Mapping[str, Any],
        where: str,
        key: str,
        *,
        default: str | None = None,
        limit: int = MAX_NAME,
    ) -> str | None:
        value = table.get(key)
        if value is None:
            if default is None:
                self.problem(where, f"{key} is missing")
            return default
        if not isinstance(value, str):
            self.problem(where, f"{key} must be text in quotes, not {_describe(value)}")
            return None
        value = value.strip()
        if not value:
            self.problem(where, f"{key} must not be empty")
            return None
        if len(value) > limit:
            self.problem(where, f"{key} is {len(value)} characters long; at most {limit} are allowed")
            return None
        return value

    def code(self, table: Mapping[str, Any], where: str, *, numbers_allowed: bool = False) -> str | None:
        value = table.get("code")
        if numbers_allowed and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)  # building numbers may be written without quotes: code = 11
        if value is None:
            self.problem(where, "code is missing")
            return None
        if not isinstance(value, str):
            self.problem(where, f"code must be text in quotes, not {_describe(value)}")
            return None
        if not CODE_PATTERN.fullmatch(value):
            self.problem(where, f"code {value!r} may contain only Latin letters, digits and '-' (no spaces, no '_')")
            return None
        if len(value) > MAX_CODE:
            self.problem(where, f"code {value!r} is {len(value)} characters long; at most {MAX_CODE} are allowed")
            return None
        return value

    def integer(
        self, table: Mapping[str, Any], where: str, key: str, *, default: int | None, low: int, high: int
    ) -> int | None:
        value = table.get(key)
        if value is None:
            if default is None:
                self.problem(where, f"{key} is missing")
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(where, f"{key} must be an integer, not {_describe(value)}")
            return None
        if not low <= value <= high:
            self.problem(where, f"{key} must be between {low} and {high}, not {value}")
            return None
        return value

    def choice(
        self, table: Mapping[str, Any], where: str, key: str, choices: Iterable[str], default: str
    ) -> str | None:
        choices = list(choices)
        value = table.get(key, default)
        if not isinstance(value, str) or value not in choices:
            self.problem(where, f"{key} must be one of {', '.join(map(repr, choices))}, not {_describe(value)}")
            return None
        return value

    def person(self, table: Mapping[str, Any], where: str) -> PersonSpec | None:
        self.known_keys(table, where, ["telegram_id", "name", "rank", "phone"])
        telegram_id = self.integer(table, where, "telegram_id", default=None, low=1, high=MAX_TELEGRAM_ID)
        name = self.text(table, where, "name")
        rank = self.choice(table, where, "rank", [r.value for r in Rank], Rank.PRIMARY.value)
        phone = self.text(table, where, "phone", default="", limit=MAX_PHONE)
        if phone and not PHONE.fullmatch(phone):
            self.problem(where, f"phone must be digits, spaces, + and - only, like '0951-1234567', not {phone!r}")
            phone = None
        if telegram_id is None or name is None or rank is None or phone is None:
            return None
        return PersonSpec(telegram_id, name, rank, phone.strip())


class _Unique:
    """Remembers where each code was first seen, to report a duplicate with both places."""

    def __init__(self, reader: _Reader, what: str, context: str = "") -> None:
        self.reader, self.what, self.context = reader, what, context
        self.seen: dict[str, str] = {}

    def add(self, key: str, where: str) -> bool:
        folded = key.lower()  # "Yinba" and "yinba" would confuse people and QR codes alike
        if folded in self.seen:
            self.reader.problem(
                where, f"duplicate {self.what} {key!r}{self.context} (already used at {self.seen[folded]})"
            )
            return False
        self.seen[folded] = where
        return True


def _parse_community(reader: _Reader, data: Mapping[str, Any]) -> CommunityInfo | None:
    table = reader.table(data, "community")
    if table is None:
        return None
    where = "community"
    reader.known_keys(table, where, ["code", "name", "name_en", "timezone"])
    code = reader.code(table, where)
    name = reader.text(table, where, "name")
    name_en = reader.text(table, where, "name_en", default=name or "")
    timezone = reader.text(table, where, "timezone", default=DEFAULT_TIMEZONE, limit=64)
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            reader.problem(where, f"timezone {timezone!r} is not a known time zone (e.g. 'Asia/Shanghai')")
            timezone = None
    if code is None or name is None or name_en is None or timezone is None:
        return None
    return CommunityInfo(code, name, name_en, timezone)


def _parse_deliberation(reader: _Reader, data: Mapping[str, Any], timezone: str) -> DeliberationSpec | None:
    """The optional ``[deliberation]`` section; every key has a default."""
    defaults = DeliberationSpec()
    table = data.get("deliberation", {})
    where = "deliberation"
    if not isinstance(table, dict):
        reader.problem(where, f"must be a section [deliberation], not {_describe(table)}")
        return None
    reader.known_keys(
        table, where, ["meeting_day", "meeting_time", "meeting_place", "agenda", "feedback", "candidate_threshold"]
    )
    day = reader.integer(table, where, "meeting_day", default=defaults.meeting_day, low=1, high=31)
    time = reader.text(table, where, "meeting_time", default=defaults.meeting_time, limit=5)
    if time is not None and not MEETING_TIME.fullmatch(time):
        reader.problem(where, f"meeting_time must be a time of day like '19:30', not {time!r}")
        time = None
    place = table.get("meeting_place", defaults.meeting_place)
    if not isinstance(place, str) or len(place) > 200:
        reader.problem(where, "meeting_place must be text in quotes of at most 200 characters")
        place = None
    schedules = {
        key: _crontab(reader, table, where, key, getattr(defaults, key), timezone) for key in ("agenda", "feedback")
    }
    threshold = reader.integer(
        table, where, "candidate_threshold", default=defaults.candidate_threshold, low=2, high=1000
    )
    if day is None or time is None or place is None or None in schedules.values() or threshold is None:
        return None
    return DeliberationSpec(day, time, place.strip(), schedules["agenda"] or "", schedules["feedback"] or "", threshold)


def _crontab(
    reader: _Reader, table: Mapping[str, Any], where: str, key: str, default: str, timezone: str
) -> str | None:
    line = reader.text(table, where, key, default=default, limit=64)
    if line is None:
        return None
    try:
        CronTrigger.from_crontab(line, timezone=ZoneInfo(timezone))
    except ValueError as error:
        reader.problem(
            where, f"{key} must be a crontab line 'minute hour day month weekday' like '0 9 25 * *': {error}"
        )
        return None
    return " ".join(line.split())


def _parse_reports(reader: _Reader, data: Mapping[str, Any], timezone: str) -> ReportsSpec | None:
    """The optional ``[reports]`` section; every key has a default."""
    defaults = ReportsSpec()
    where = "reports"
    table = reader.table(data, where, optional=True)
    if table is None:
        return None
    reader.known_keys(table, where, ["monthly", "public_chat_id", "public_closed_tickets"])
    monthly = _crontab(reader, table, where, "monthly", defaults.monthly, timezone)
    chat_id = reader.integer(table, where, "public_chat_id", default=0, low=-MAX_TELEGRAM_ID, high=-1)
    closed = table.get("public_closed_tickets", False)
    if not isinstance(closed, bool):
        reader.problem(where, f"public_closed_tickets must be true or false, not {_describe(closed)}")
        return None
    if closed and not chat_id:
        reader.problem(where, "public_closed_tickets needs public_chat_id: the chat to post them in")
        return None
    if monthly is None or chat_id is None:
        return None
    return ReportsSpec(monthly, chat_id or None, closed)


def _parse_staff(reader: _Reader, data: Mapping[str, Any]) -> list[PersonSpec]:
    raw = reader.tables(data, "", "staff")
    if not raw:
        reader.problem(
            "staff" if "staff" in data else "",
            "at least one community staff member ([[staff]]) is needed, "
            "otherwise reports that no grid worker can take would be lost",
        )
    staff = []
    ids = _Unique(reader, "staff telegram_id")
    for where, table in raw:
        person = reader.person(table, where)
        if person is not None and ids.add(str(person.telegram_id), where):
            staff.append(person)
    return staff


@dataclass
class _CompoundNames:
    """A compound's code and names, gathered from every grid it appears in."""

    code: str
    first_seen: str
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, where)


def _parse_buildings(
    reader: _Reader, where: str, table: Mapping[str, Any], link_prefix: str | None, unique: _Unique
) -> list[BuildingSpec]:
    buildings = []
    for building_where, building_table in reader.tables(table, where, "buildings"):
        reader.known_keys(building_table, building_where, ["code", "name", "name_en", "units"])
        code = reader.code(building_table, building_where, numbers_allowed=True)
        name = reader.text(building_table, building_where, "name", default=f"{code}号楼")
        name_en = reader.text(building_table, building_where, "name_en", default=f"Building {code}")
        units = reader.integer(building_table, building_where, "units", default=1, low=1, high=MAX_UNITS)
        if code is None or not unique.add(code, building_where) or link_prefix is None:
            continue
        link_key = f"{link_prefix}_{code}"
        if len(link_key) > MAX_LINK_KEY:
            reader.problem(
                building_where,
                f"the QR link key {link_key!r} is {len(link_key)} characters long; Telegram allows at most "
                f"{MAX_LINK_KEY}: shorten the community, compound or building code",
            )
            continue
        if name is not None and name_en is not None and units is not None:
            buildings.append(BuildingSpec(code, name, name_en, units, link_key))
    return buildings


def _parse_grids(reader: _Reader, data: Mapping[str, Any], community_code: str | None) -> list[GridSpec]:
    raw_grids = reader.tables(data, "", "grids")
    if not raw_grids:
        reader.problem("grids" if "grids" in data else "", "at least one grid ([[grids]]) is needed")

    grid_codes = _Unique(reader, "grid code")
    compounds: dict[str, _CompoundNames] = {}  # by folded code: a compound may be split between grids
    building_codes: dict[str, _Unique] = {}  # per compound, across grids
    parsed = []
    for grid_where, grid_table in raw_grids:
        reader.known_keys(grid_table, grid_where, ["code", "name", "name_en", "workers", "compounds"])
        code = reader.code(grid_table, grid_where)
        if code is not None and not grid_codes.add(code, grid_where):
            code = None
        name = reader.text(grid_table, grid_where, "name")
        name_en = reader.text(grid_table, grid_where, "name_en", default=name or "")

        workers = []
        worker_ids = _Unique(reader, "worker telegram_id")
        for worker_where, worker_table in reader.tables(grid_table, grid_where, "workers"):
            worker = reader.person(worker_table, worker_where)
            if worker is not None and worker_ids.add(str(worker.telegram_id), worker_where):
                workers.append(worker)

        grid_compounds = []
        for compound_where, compound_table in reader.tables(grid_table, grid_where, "compounds"):
            reader.known_keys(compound_table, compound_where, ["code", "name", "name_en", "buildings"])
            compound_code = reader.code(compound_table, compound_where)
            if compound_code is None:
                continue
            known = compounds.setdefault(compound_code.lower(), _CompoundNames(compound_code, compound_where))
            if known.code != compound_code:
                reader.problem(
                    compound_where,
                    f"compound code {compound_code!r} is written {known.code!r} at {known.first_seen}; "
                    "use the same spelling",
                )
                continue
            for key in ("name", "name_en"):
                value = reader.text(compound_table, compound_where, key, default="")
                if not value:
                    continue  # a compound split between grids needs its names only once
                earlier = known.names.setdefault(key, (value, compound_where))
                if earlier[0] != value:
                    reader.problem(
                        compound_where,
                        f"compound {compound_code!r} has {key} {value!r} here but {earlier[0]!r} at {earlier[1]}",
                    )
            unique = building_codes.setdefault(
                compound_code.lower(), _Unique(reader, "building code", f" in compound {compound_code!r}")
            )
            link_prefix = f"{community_code}_{compound_code}" if community_code else None
            buildings = _parse_buildings(reader, compound_where, compound_table, link_prefix, unique)
            grid_compounds.append((compound_code, buildings))
        parsed.append((code, name, name_en, workers, grid_compounds))

    for known in compounds.values():
        if "name" not in known.names:
            reader.problem(known.first_seen, "name is missing")

    grids = []
    for code, name, name_en, workers, grid_compounds in parsed:
        if code is None or name is None or name_en is None:
            continue
        specs = []
        for compound_code, buildings in grid_compounds:
            names = compounds[compound_code.lower()].names
            compound_name = names.get("name", ("", ""))[0]
            compound_name_en = names.get("name_en", (compound_name, ""))[0]
            specs.append(CompoundSpec(compound_code, compound_name, compound_name_en, tuple(buildings)))
        grids.append(GridSpec(code, name, name_en, tuple(workers), tuple(specs)))
    return grids


def _parse_keywords(reader: _Reader, table: Mapping[str, Any], where: str) -> list[str]:
    raw = table.get("keywords", [])
    if not isinstance(raw, list):
        reader.problem(where, f'keywords must be a list like ["飞线", "充电"], not {_describe(raw)}')
        return []
    keywords: list[str] = []
    for index, keyword in enumerate(raw):
        if not isinstance(keyword, str) or not keyword.strip():
            reader.problem(f"{where}.keywords[{index}]", f"must be non-empty text, not {_describe(keyword)}")
        elif keyword.strip().lower() not in {k.lower() for k in keywords}:
            keywords.append(keyword.strip())
    return keywords


def _parse_categories(reader: _Reader, data: Mapping[str, Any]) -> list[CategorySpec]:
    raw = reader.tables(data, "", "categories")
    if not raw:
        reader.problem(
            "categories" if "categories" in data else "",
            "at least one category ([[categories]]) is needed, otherwise residents cannot report anything",
        )
    categories = []
    codes = _Unique(reader, "category code")
    for where, table in raw:
        reader.known_keys(
            table, where, ["code", "name", "name_en", "keywords", "level", "response_hours", "resolve_hours"]
        )
        code = reader.code(table, where)
        if code is not None and not codes.add(code, where):
            code = None
        name = reader.text(table, where, "name")
        name_en = reader.text(table, where, "name_en", default=name or "")
        keywords = _parse_keywords(reader, table, where)
        level = reader.choice(table, where, "level", [level.value for level in Level], Level.GRID.value)
        response = reader.integer(table, where, "response_hours", default=DEFAULT_RESPONSE_HOURS, low=1, high=MAX_HOURS)
        resolve = reader.integer(table, where, "resolve_hours", default=DEFAULT_RESOLVE_HOURS, low=1, high=MAX_HOURS)
        if response is not None and resolve is not None and resolve < response:
            reader.problem(where, f"resolve_hours ({resolve}) must not be shorter than response_hours ({response})")
            continue
        if code and name and name_en and level and response and resolve:
            categories.append(CategorySpec(code, name, name_en, tuple(keywords), level, response, resolve))
    return categories


def _parse_street(reader: _Reader, data: Mapping[str, Any]) -> list[PersonSpec]:
    people = []
    ids = _Unique(reader, "street telegram_id")
    for where, table in reader.tables(data, "", "street"):
        person = reader.person(table, where)
        if person is not None and ids.add(str(person.telegram_id), where):
            people.append(person)
    return people


def _parse_departments(reader: _Reader, data: Mapping[str, Any]) -> list[DepartmentSpec]:
    departments = []
    codes = _Unique(reader, "department code")
    for where, table in reader.tables(data, "", "departments"):
        reader.known_keys(table, where, ["code", "name", "name_en", "people"])
        code = reader.code(table, where)
        if code is not None and not codes.add(code, where):
            code = None
        name = reader.text(table, where, "name")
        name_en = reader.text(table, where, "name_en", default=name or "")
        raw_people = reader.tables(table, where, "people")
        if not raw_people and isinstance(table.get("people", []), list):
            reader.problem(where, "at least one person is needed: people = [ { telegram_id = ..., name = ... } ]")
        people = []
        ids = _Unique(reader, "telegram_id", f" in department {code!r}" if code else "")
        for person_where, person_table in raw_people:
            person = reader.person(person_table, person_where)
            if person is not None and ids.add(str(person.telegram_id), person_where):
                people.append(person)
        if code and name and name_en and people:
            departments.append(DepartmentSpec(code, name, name_en, tuple(people)))
    return departments


def _parse_register(reader: _Reader, data: Mapping[str, Any]) -> RegisterSpec | None:
    """The optional ``[register]`` section: which column of the household register holds what."""
    table = data.get("register")
    where = "register"
    if table is None:
        return None
    if not isinstance(table, dict):
        reader.problem(where, f"must be a section [register], not {_describe(table)}")
        return None
    reader.known_keys(table, where, [*REGISTER_FIELDS, "sheet"])
    columns = {}
    for key in REGISTER_FIELDS:
        heading = reader.text(table, where, key, default=None if key in REGISTER_REQUIRED else "")
        if heading:
            columns[key] = heading
    headings = _Unique(reader, "column heading")
    for key, heading in columns.items():
        headings.add(heading, f"{where}.{key}")
    sheet = reader.text(table, where, "sheet", default="")
    if sheet is None or any(key not in columns for key in REGISTER_REQUIRED):
        return None
    return RegisterSpec(columns, sheet)


def parse_community(data: Mapping[str, Any], source: str = "") -> CommunitySpec:
    """Check already-parsed TOML data; raises :class:`CommunityFileError` listing every problem."""
    reader = _Reader()
    reader.known_keys(
        data,
        "",
        ["community", "deliberation", "reports", "staff", "street", "departments", "grids", "categories", "register"],
    )
    community = _parse_community(reader, data)
    deliberation = _parse_deliberation(reader, data, community.timezone if community else DEFAULT_TIMEZONE)
    reports = _parse_reports(reader, data, community.timezone if community else DEFAULT_TIMEZONE)
    staff = _parse_staff(reader, data)
    street = _parse_street(reader, data)
    departments = _parse_departments(reader, data)
    grids = _parse_grids(reader, data, community.code if community else None)
    categories = _parse_categories(reader, data)
    register = _parse_register(reader, data)
    if reader.problems or community is None or deliberation is None or reports is None:
        raise CommunityFileError(reader.problems or ["the [community] section is missing"], source)
    community = replace(community, deliberation=deliberation, reports=reports)
    return CommunitySpec(
        community, tuple(staff), tuple(grids), tuple(categories), tuple(street), tuple(departments), register
    )


def loads_community(text: str, source: str = "") -> CommunitySpec:
    """Parse and check the text of a community file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CommunityFileError([f"not valid TOML: {error}"], source) from error
    return parse_community(data, source)


def load_community_file(path: str | Path) -> CommunitySpec:
    """Read and check a community file; raises :class:`CommunityFileError` (a ``ValueError``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CommunityFileError(["the file must be saved as UTF-8"], str(path)) from error
    except OSError as error:
        raise CommunityFileError([f"cannot read the file: {error.strerror or error}"], str(path)) from error
    return loads_community(text, str(path))


# --- importing -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    created: int = 0
    updated: int = 0
    reactivated: int = 0
    deactivated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.reactivated + self.deactivated


KINDS = ("community", "grids", "compounds", "buildings", "categories", "departments", "users", "memberships")


@dataclass
class ImportReport:
    """How many rows of each kind were created, updated, reactivated, deactivated or left alone."""

    community_code: str
    community_id: int = 0
    tallies: dict[str, Tally] = field(default_factory=lambda: {kind: Tally() for kind in KINDS})

    def __getitem__(self, kind: str) -> Tally:
        return self.tallies[kind]

    @property
    def changed(self) -> bool:
        return any(tally.changed for tally in self.tallies.values())

    def summary(self) -> str:
        lines = [f"Community {self.community_code!r}: " + ("changes saved" if self.changed else "no changes")]
        for kind, tally in self.tallies.items():
            parts = [
                f"{count} {word}"
                for count, word in (
                    (tally.created, "created"),
                    (tally.updated, "updated"),
                    (tally.reactivated, "reactivated"),
                    (tally.deactivated, "deactivated"),
                    (tally.unchanged, "unchanged" if kind != "users" else "already known"),
                )
                if count
            ]
            lines.append(f"  {kind + ':':<12} {', '.join(parts) or 'none'}")
        return "\n".join(lines)


def _sync(row: Any, values: Mapping[str, Any]) -> bool:
    """Set the values that differ; True when anything did."""
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def _upsert(session: AsyncSession, tally: Tally, existing: Any, model: type[Any], values: Mapping[str, Any]) -> Any:
    """Create the row, or update (and reactivate) the existing one, counting what happened."""
    if existing is None:
        row = model(**values, active=True)
        session.add(row)
        tally.created += 1
        return row
    was_active = existing.active
    changed = _sync(existing, {**values, "active": True})
    if not was_active:
        tally.reactivated += 1
    elif changed:
        tally.updated += 1
    else:
        tally.unchanged += 1
    return existing


def _deactivate_missing(tally: Tally, rows: Iterable[Any], kept: set[int]) -> None:
    for row in rows:
        if id(row) not in kept and row.active:
            row.active = False
            tally.deactivated += 1


async def _sync_by_code(
    session: AsyncSession,
    tally: Tally,
    model: type[Any],
    community_id: int,
    specs: Iterable[Any],
    values: Callable[[Any, int], dict[str, Any]],
) -> dict[str, Any]:
    """Make the community's rows of ``model`` match ``specs`` by code: create, update, reactivate, switch off."""
    existing = list(await session.scalars(select(model).where(model.community_id == community_id)))
    by_code = {row.code: row for row in existing}
    rows = {
        spec.code: _upsert(
            session,
            tally,
            by_code.get(spec.code),
            model,
            {"community_id": community_id, "code": spec.code, **values(spec, position)},
        )
        for position, spec in enumerate(specs)
    }
    _deactivate_missing(tally, existing, {id(row) for row in rows.values()})
    return rows


def _names(spec: Any, _position: int) -> dict[str, Any]:
    return {"name": spec.name, "name_en": spec.name_en}


async def import_community(session: AsyncSession, spec: CommunitySpec, now: datetime) -> ImportReport:
    """Bring the database in line with the file, in one transaction; safe to run again and again."""
    report = ImportReport(spec.community.code)
    async with session.begin():
        # The community itself.
        info = spec.community
        community = await session.scalar(select(Community).where(Community.code == info.code))
        meeting = info.deliberation
        values = {
            "name": info.name,
            "name_en": info.name_en,
            "timezone": info.timezone,
            "meeting_day": meeting.meeting_day,
            "meeting_time": meeting.meeting_time,
            "meeting_place": meeting.meeting_place,
            "agenda_cron": meeting.agenda,
            "feedback_cron": meeting.feedback,
            "candidate_threshold": meeting.candidate_threshold,
            "report_cron": info.reports.monthly,
            "public_chat_id": info.reports.public_chat_id,
            "public_closed_tickets": info.reports.public_closed_tickets,
            "register_columns": spec.register.as_record() if spec.register else {},
        }
        moved_months = community is not None and community.timezone != info.timezone
        if community is None:
            community = Community(code=info.code, **values)
            session.add(community)
            report["community"].created += 1
        elif _sync(community, values):
            report["community"].updated += 1
        else:
            report["community"].unchanged += 1
        await session.flush()
        report.community_id = community.id

        # Grids, and compounds (one row each, even when split between grids).
        grids = await _sync_by_code(session, report["grids"], Grid, community.id, spec.grids, _names)
        compounds = await _sync_by_code(session, report["compounds"], Compound, community.id, spec.compounds(), _names)
        await session.flush()

        # Buildings.
        old_buildings = list(
            await session.scalars(
                select(Building).where(
                    Building.compound_id.in_(select(Compound.id).where(Compound.community_id == community.id))
                )
            )
        )
        buildings_by_key = {(b.compound_id, b.code): b for b in old_buildings}
        kept_buildings = set()
        for grid_spec, compound_spec, building_spec in spec.buildings():
            compound = compounds[compound_spec.code]
            building = _upsert(
                session,
                report["buildings"],
                buildings_by_key.get((compound.id, building_spec.code)),
                Building,
                {
                    "compound_id": compound.id,
                    "grid_id": grids[grid_spec.code].id,
                    "code": building_spec.code,
                    "name": building_spec.name,
                    "name_en": building_spec.name_en,
                    "units": building_spec.units,
                    "link_key": building_spec.link_key,
                },
            )
            kept_buildings.add(id(building))
        _deactivate_missing(report["buildings"], old_buildings, kept_buildings)

        # Categories and departments (with the property company), in file order.
        await _sync_by_code(
            session,
            report["categories"],
            Category,
            community.id,
            spec.categories,
            lambda category, position: {
                **_names(category, position),
                "keywords": list(category.keywords),
                "level": category.level,
                "response_hours": category.response_hours,
                "resolve_hours": category.resolve_hours,
                "sort_order": position,
            },
        )
        await _sync_by_code(
            session,
            report["departments"],
            Department,
            community.id,
            spec.departments,
            lambda department, position: {**_names(department, position), "sort_order": position},
        )

        if report["community"].updated or report["categories"].updated:
            # A new time zone moves the months' bounds, new windows what is "in time": the ended months are
            # summed again from scratch by the statistics job.
            await forget_summaries(session, community.id)
        if moved_months:
            # Its tickets' months are counted again by the new bounds, for the topic-candidates job.
            await recount(session, community.id)

        # People: a user record for everyone named in the file, never overwriting one that exists.
        duties: list[tuple[PersonSpec, Role, str, Grid | None]] = [
            (person, Role.STAFF, "", None) for person in spec.staff
        ]
        duties.extend((person, Role.STREET, "", None) for person in spec.street)
        for department_spec in spec.departments:
            duties.extend((person, Role.DEPARTMENT, department_spec.code, None) for person in department_spec.people)
        for grid_spec in spec.grids:
            grid = grids[grid_spec.code]
            duties.extend((person, Role.GRID_WORKER, grid_spec.code, grid) for person in grid_spec.workers)
        names: dict[int, str] = {}
        for person, *_ in duties:
            names.setdefault(person.telegram_id, person.name)
        known = set(await session.scalars(select(User.id).where(User.id.in_(list(names)))))
        for user_id, name in names.items():
            if user_id in known:
                report["users"].unchanged += 1
            else:
                session.add(User(id=user_id, full_name=name, created_at=now))
                report["users"].created += 1
        await session.flush()

        # Memberships: who works in which grid, who staffs the community.
        old_memberships = list(await session.scalars(select(Membership).where(Membership.community_id == community.id)))
        memberships_by_key = {(m.user_id, m.role, m.scope): m for m in old_memberships}
        kept_memberships = set()
        for person, role, scope, duty_grid in duties:
            membership = _upsert(
                session,
                report["memberships"],
                memberships_by_key.get((person.telegram_id, role.value, scope)),
                Membership,
                {
                    "community_id": community.id,
                    "user_id": person.telegram_id,
                    "role": role.value,
                    "scope": scope,
                    "grid_id": duty_grid.id if duty_grid is not None else None,
                    "rank": person.rank,
                    "display_name": person.name,
                    "phone": person.phone,
                },
            )
            kept_memberships.add(id(membership))
        _deactivate_missing(report["memberships"], old_memberships, kept_memberships)
    return report


# --- QR codes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildingLink:
    """What a stairwell QR label needs: where it hangs, and the /start payload it carries."""

    community_code: str
    community_name: str
    compound_code: str
    compound_name: str
    building_code: str
    building_name: str
    units: int
    link_key: str


def _natural(code: str) -> tuple[Any, ...]:
    """Sort "2" before "11", and "2-1" before "2-10"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", code) if part)


async def building_links(session: AsyncSession, community_code: str | None = None) -> list[BuildingLink]:
    """Active buildings with their link keys, by community, compound (file order) and building number."""
    query = (
        select(
            Community.id.label("community_id"),
            Community.code.label("community_code"),
            Community.name.label("community_name"),
            Compound.id.label("compound_id"),
            Compound.code.label("compound_code"),
            Compound.name.label("compound_name"),
            Building.code.label("building_code"),
            Building.name.label("building_name"),
            Building.units,
            Building.link_key,
        )
        .select_from(Building)
        .join(Compound, Building.compound_id == Compound.id)
        .join(Community, Compound.community_id == Community.id)
        .where(Building.active.is_(True), Compound.active.is_(True))
    )
    if community_code is not None:
        query = query.where(Community.code == community_code)
    async with session.begin():
        rows = (await session.execute(query)).all()
    rows = sorted(rows, key=lambda r: (r.community_id, r.compound_id, _natural(r.building_code)))
    return [
        BuildingLink(
            r.community_code,
            r.community_name,
            r.compound_code,
            r.compound_name,
            r.building_code,
            r.building_name,
            r.units,
            r.link_key,
        )
        for r in rows
    ]
