"""The household register (居民台账): reading the office's own file and bringing the households in line with it.

The office keeps its register as a spreadsheet: one row per person with building, unit, room, name and phone
number, under column headings of its own. The community file's ``[register]`` section names those headings
(kept in ``communities.register_columns``); this module reads a CSV or .xlsx file with them, checks every row
and names the line of every problem before anything is written, and imports it in one transaction.

Importing is repeatable: rooms are matched by building, unit and room, so the same file twice changes nothing.
A room missing from a newer file is marked moved out (never deleted) and whoever was verified for it loses
the verification; a room that comes back is active again. Rooms only a grid worker vouched for are left alone.
Phone numbers become keyed hashes as they are read (domain/households.py) and are never kept or printed.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.community_file import REGISTER_REQUIRED
from domain.households import MAX_ROOM, end_for_households, normalise_room, phone_digest
from domain.text import clean
from storage.models import Building, Community, Compound, Household, HouseholdMember

MAX_PROBLEMS = 20  # a clerk fixes the first twenty and tries again; a longer list helps nobody
MAX_NAME = 100
BUILDING_SUFFIXES = ("号楼", "栋", "幢", "楼", "号")
CSV_ENCODINGS = ("utf-8-sig", "gb18030")  # Excel in China saves CSV as GBK unless told otherwise
CHUNK = 500


class Problem(StrEnum):
    """What can be wrong with a register file; the bot says each in the reader's language (bot/views)."""

    UNREADABLE = "unreadable"  # not an .xlsx workbook, or CSV neither UTF-8 nor GBK (value: the error)
    NO_SHEET = "no_sheet"  # value: the sheet named in [register]
    EMPTY = "empty"
    NO_COLUMN = "no_column"  # value: the heading named in [register]
    COMPOUND = "compound"  # value: the compound as written
    BUILDING = "building"  # not a building of the community; value: as written
    AMBIGUOUS = "ambiguous"  # a building number several compounds have; value: as written
    UNIT = "unit"  # value: as written
    ROOM = "room"  # missing or too long; value: as written


@dataclass(frozen=True)
class RegisterProblem:
    kind: Problem
    line: int = 0  # 0: the file as a whole
    value: str = ""

    def __str__(self) -> str:
        """For the command line; the bot says it in the reader's language."""
        place = f"line {self.line}: " if self.line else ""
        value = f" ({self.value!r})" if self.value else ""
        return f"{place}{_DESCRIBED[self.kind]}{value}"


_DESCRIBED = {
    Problem.UNREADABLE: "the file cannot be read as CSV (UTF-8 or GBK) or as an .xlsx workbook",
    Problem.NO_SHEET: "the workbook has no sheet of the name [register] gives",
    Problem.EMPTY: "the file is empty",
    Problem.NO_COLUMN: "no column has the heading [register] gives",
    Problem.COMPOUND: "no compound of the community has this code or name",
    Problem.BUILDING: "no building of the community file has this code or name",
    Problem.AMBIGUOUS: "several compounds have a building of this number: add the compound column",
    Problem.UNIT: "not a unit of the building",
    Problem.ROOM: "the room is missing or longer than 16 characters",
}


class RegisterFileError(ValueError):
    """The register cannot be imported; ``problems`` names each problem with its line. Nothing was written."""

    def __init__(self, problems: Iterable[RegisterProblem]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n".join(f"  - {problem}" for problem in shown)
        tail = f"\n  … and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the register, nothing was imported:\n{lines}{tail}")


class NoRegisterColumns(ValueError):
    """The community file has no [register] section, so the bot does not know the register's columns."""


@dataclass
class RegisterReport:
    """What an import did: rows read, and households created, back, changed, unchanged and moved out."""

    community_code: str
    rows: int = 0
    created: int = 0
    returned: int = 0  # listed again after they had moved out
    updated: int = 0  # the people of the room changed
    unchanged: int = 0
    moved_out: int = 0
    unverified: int = 0  # residents who were verified for a household that moved out

    @property
    def households(self) -> int:
        return self.created + self.returned + self.updated + self.unchanged

    def summary(self) -> str:
        return (
            f"Register of {self.community_code!r}: {self.rows} rows, {self.households} households "
            f"({self.created} new, {self.returned} back, {self.updated} changed, {self.unchanged} unchanged); "
            f"{self.moved_out} moved out, {self.unverified} residents no longer verified"
        )


@dataclass
class _Room:
    building_id: int
    unit: int
    room: str
    people: dict[tuple[str, str], None] = field(default_factory=dict)  # (name, phone hash), in file order, once


# --- reading the file ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A cell as text: Excel gives building 11 as 11 or 11.0, and a phone number as 13895000101."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _table(data: bytes, filename: str, sheet: str) -> Iterator[list[str]]:
    """The file's rows as text, the heading row first."""
    if filename.lower().endswith((".xlsx", ".xlsm")):
        import openpyxl  # only an .xlsx needs it

        try:
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as error:  # openpyxl raises many kinds for a file that is no workbook
            raise RegisterFileError([RegisterProblem(Problem.UNREADABLE, value=type(error).__name__)]) from error
        if sheet and sheet not in book.sheetnames:
            raise RegisterFileError([RegisterProblem(Problem.NO_SHEET, value=sheet)])
        worksheet = book[sheet] if sheet else book.worksheets[0]
        for row in worksheet.iter_rows(values_only=True):
            yield [_cell(value) for value in row]
        book.close()
        return
    for encoding in CSV_ENCODINGS:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise RegisterFileError([RegisterProblem(Problem.UNREADABLE, value="encoding")])
    for row in csv.reader(io.StringIO(text)):
        yield [_cell(value) for value in row]


def _columns(heading: list[str], wanted: dict[str, str]) -> dict[str, int]:
    """Where each field's column is, by the heading the community file gives it."""
    positions = {name: index for index, name in reversed(list(enumerate(heading)))}
    missing = [RegisterProblem(Problem.NO_COLUMN, 1, title) for title in wanted.values() if title not in positions]
    if missing:
        raise RegisterFileError(missing)
    return {key: positions[title] for key, title in wanted.items()}


class _Places:
    """The community's active buildings, found by what a clerk writes: code, name, or "11号楼" for code 11."""

    def __init__(self, compounds: list[Compound], buildings: list[Building]) -> None:
        self.compounds: dict[str, int] = {}
        for compound in compounds:
            for key in (compound.code, compound.name, compound.name_en):
                if key:
                    self.compounds.setdefault(key.lower(), compound.id)
        self.buildings: dict[int, dict[str, Building]] = {}
        for building in buildings:
            keys = self.buildings.setdefault(building.compound_id, {})
            for key in (building.code, building.name, building.name_en):
                if key:
                    keys.setdefault(key.lower(), building)

    def compound(self, written: str) -> int | None:
        return self.compounds.get(written.lower())

    def building(self, compound_id: int | None, written: str) -> list[Building]:
        """Every building the words can mean: one, none, or several when no compound narrows it down."""
        keys = [written.lower()]
        keys += [written[: -len(s)].strip().lower() for s in BUILDING_SUFFIXES if written.endswith(s) and written != s]
        scopes = [self.buildings.get(compound_id, {})] if compound_id is not None else list(self.buildings.values())
        found: dict[int, Building] = {}
        for scope in scopes:
            match = next((scope[key] for key in keys if key in scope), None)
            if match is not None:
                found[match.id] = match
        return list(found.values())


def _unit(written: str, building: Building) -> int | None:
    """The unit from "2" or "2单元"; an empty cell means the only unit of a one-unit building."""
    if not written:
        return 1 if building.units == 1 else None
    digits = re.sub(r"\D", "", written)
    if not digits or not 1 <= int(digits) <= building.units:
        return None
    return int(digits)


def read_rooms(
    rows: Iterator[list[str]], columns: dict[str, str], places: _Places, secret: bytes
) -> tuple[int, dict[tuple[int, int, str], _Room]]:
    """Check every row; the rooms the file lists with their people, or RegisterFileError naming each problem."""
    heading = next(rows, None)
    if heading is None:
        raise RegisterFileError([RegisterProblem(Problem.EMPTY)])
    where = _columns(heading, columns)
    problems: list[RegisterProblem] = []
    rooms: dict[tuple[int, int, str], _Room] = {}
    count = 0
    for line, row in enumerate(rows, start=2):
        values = {key: row[index] if index < len(row) else "" for key, index in where.items()}
        if not any(values.values()):
            continue  # a blank line
        count += 1
        compound_id = None
        if "compound" in values:
            compound_id = places.compound(values["compound"])
            if compound_id is None:
                problems.append(RegisterProblem(Problem.COMPOUND, line, values["compound"]))
                continue
        found = places.building(compound_id, values["building"]) if values["building"] else []
        if len(found) != 1:
            kind = Problem.AMBIGUOUS if found else Problem.BUILDING
            problems.append(RegisterProblem(kind, line, values["building"]))
            continue
        building = found[0]
        unit = _unit(values.get("unit", ""), building)
        room = normalise_room(values["room"])
        if unit is None:
            problems.append(RegisterProblem(Problem.UNIT, line, values.get("unit", "")))
            continue
        if not room or len(room) > MAX_ROOM:
            problems.append(RegisterProblem(Problem.ROOM, line, values["room"]))
            continue
        name = clean(values["name"])[:MAX_NAME]
        entry = rooms.setdefault((building.id, unit, room), _Room(building.id, unit, room))
        entry.people[(name, phone_digest(secret, values["phone"]))] = None
    if problems:
        raise RegisterFileError(problems)
    return count, rooms


# --- importing -------------------------------------------------------------------------------------------


async def community_for_register(session: AsyncSession, code: str | None) -> Community:
    """The community a register belongs to: the one named, or the only one there is."""
    async with session.begin():
        communities = list(await session.scalars(select(Community).order_by(Community.id)))
    if code is not None:
        communities = [c for c in communities if c.code == code]
    if len(communities) != 1:
        raise NoRegisterColumns(
            f"no community {code!r}" if code else "several communities: name one (--community CODE)"
        )
    return communities[0]


async def import_register(
    session: AsyncSession, *, community_id: int, data: bytes, filename: str, secret: bytes, now: datetime
) -> RegisterReport:
    """Read the register file and bring the community's households in line with it, in one transaction.

    Raises NoRegisterColumns when the community file has no [register] section, RegisterFileError (nothing
    written) for a file with mistakes, and NoPhoneSecret when HOUSEHOLD_PHONE_SECRET is not set.
    """
    async with session.begin():
        community = await session.get(Community, community_id)
        record = (community.register_columns if community else None) or {}
        columns = {k: v for k, v in record.get("columns", {}).items() if v}
        if community is None or any(key not in columns for key in REGISTER_REQUIRED):
            raise NoRegisterColumns("the community file has no [register] section naming the register's columns")
        compounds = list(
            await session.scalars(
                select(Compound).where(Compound.community_id == community_id, Compound.active.is_(True))
            )
        )
        buildings = list(
            await session.scalars(
                select(Building).where(Building.compound_id.in_([c.id for c in compounds]), Building.active.is_(True))
            )
        )
        rows, rooms = read_rooms(
            _table(data, filename, str(record.get("sheet", ""))), columns, _Places(compounds, buildings), secret
        )
        report = RegisterReport(community.code, rows=rows)
        await _apply(session, community_id, rooms, now, report)
    return report


async def _apply(
    session: AsyncSession,
    community_id: int,
    rooms: dict[tuple[int, int, str], _Room],
    now: datetime,
    report: RegisterReport,
) -> None:
    existing = {
        (h.building_id, h.unit, h.room): h
        for h in await session.scalars(select(Household).where(Household.community_id == community_id))
    }
    people: dict[int, set[tuple[str, str]]] = {}
    for member in await session.scalars(
        select(HouseholdMember).join(Household).where(Household.community_id == community_id)
    ):
        people.setdefault(member.household_id, set()).add((member.name, member.phone_hash))

    listed: list[tuple[Household, _Room]] = []
    for key, room in rooms.items():
        household = existing.get(key)
        if household is None:
            household = Household(
                community_id=community_id,
                building_id=room.building_id,
                unit=room.unit,
                room=room.room,
                in_register=True,
                active=True,
                created_at=now,
                updated_at=now,
            )
            session.add(household)
            report.created += 1
        elif not household.active:
            household.active, household.moved_out_at, household.in_register = True, None, True
            household.updated_at = now
            report.returned += 1
        elif not household.in_register or people.get(household.id, set()) != room.people.keys():
            household.in_register, household.updated_at = True, now
            report.updated += 1
        else:
            report.unchanged += 1
        listed.append((household, room))
    await session.flush()

    # The people of every room that is new or changed: replaced as a whole (nothing refers to them).
    changed = [(h, r) for h, r in listed if people.get(h.id, set()) != r.people.keys()]
    for start in range(0, len(changed), CHUNK):
        chunk = changed[start : start + CHUNK]
        await session.execute(delete(HouseholdMember).where(HouseholdMember.household_id.in_([h.id for h, _ in chunk])))
        members = [
            {"household_id": h.id, "name": name, "phone_hash": digest} for h, r in chunk for name, digest in r.people
        ]
        if members:
            await session.execute(insert(HouseholdMember), members)

    kept = {id(h) for h, _ in listed}
    gone = [h for h in existing.values() if h.active and h.in_register and id(h) not in kept]
    for household in gone:
        household.active, household.moved_out_at, household.updated_at = False, now, now
    report.moved_out = len(gone)
    report.unverified = await end_for_households(session, [h.id for h in gone], now)
