"""QR codes for stairwell notice boards, and the deep links they carry."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest

from bot.qr import deep_link, write_qr_codes
from domain.community_file import BuildingLink, building_links, import_community, load_community_file
from storage.db import SessionFactory
from tests.conftest import SAMPLE_COMMUNITY, FakeClock

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOT = "JianshexiangBot"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_index(directory: Path) -> list[dict[str, str]]:
    with (directory / "index.csv").open(encoding="utf-8-sig", newline="") as index:
        return list(csv.DictReader(index))


def test_deep_link_format() -> None:
    assert deep_link(BOT, "jsx_yinba_11") == "https://t.me/JianshexiangBot?start=jsx_yinba_11"
    assert deep_link("@JianshexiangBot", "jsx_yinba_11") == "https://t.me/JianshexiangBot?start=jsx_yinba_11"
    assert deep_link(BOT, "a" * 64).endswith("?start=" + "a" * 64)


@pytest.mark.parametrize("payload", ["", "a" * 65, "jsx yinba", "jsx/yinba", "银巴_11", "jsx_yinba_11?x=1"])
def test_deep_link_refuses_payloads_telegram_would_drop(payload: str) -> None:
    with pytest.raises(ValueError, match="payload"):
        deep_link(BOT, payload)


@pytest.mark.parametrize("username", ["", "t.me/JianshexiangBot", "my bot", "ab", "https://t.me/x"])
def test_deep_link_refuses_bad_usernames(username: str) -> None:
    with pytest.raises(ValueError, match="username"):
        deep_link(username, "jsx_yinba_11")


async def test_one_printable_png_per_active_building_and_an_index(
    session_factory: SessionFactory, clock: FakeClock, tmp_path: Path
) -> None:
    spec = load_community_file(SAMPLE_COMMUNITY)
    async with session_factory() as session:
        await import_community(session, spec, clock.now)
    async with session_factory() as session:
        links = await building_links(session, "jsx")
    out = tmp_path / "qr" / "jsx"

    paths = write_qr_codes(links, BOT, out)

    assert len(paths) == len(links) == len(spec.buildings()) == 26
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{link.link_key}.png" for link in links)
    assert [p.name for p in paths] == [f"{link.link_key}.png" for link in links]
    assert (out / "jsx_yinba_11.png") in paths
    for path in paths:
        width, height = png_size(path)
        # Square, 10 px per module plus a 4-module quiet zone: at least a version-1 code of 21 modules.
        assert width == height >= (21 + 2 * 4) * 10
        assert width % 10 == 0
    assert len({p.read_bytes() for p in paths}) == len(paths)  # every building has its own code

    rows = read_index(out)
    assert len(rows) == len(paths)
    assert {"compound", "building", "link", "file"} <= set(rows[0])
    by_file = {row["file"]: row for row in rows}
    assert by_file["jsx_yinba_11.png"]["compound"] == "银巴小区"
    assert by_file["jsx_yinba_11.png"]["building"] == "11号楼"
    assert by_file["jsx_yinba_11.png"]["link"] == "https://t.me/JianshexiangBot?start=jsx_yinba_11"
    assert by_file["jsx_chaoyang_3.png"]["compound"] == "朝阳花园小区"
    assert [row["file"] for row in rows] == [p.name for p in paths]
    for row in rows:
        assert (out / row["file"]).is_file()
        assert row["link"] == deep_link(BOT, row["file"].removesuffix(".png"))
    # UTF-8 (with a byte-order mark so that Excel shows the Chinese names).
    (out / "index.csv").read_bytes().decode("utf-8")


def test_no_buildings_write_an_empty_index(tmp_path: Path) -> None:
    assert write_qr_codes([], BOT, tmp_path / "empty") == []
    assert read_index(tmp_path / "empty") == []
    assert list((tmp_path / "empty").glob("*.png")) == []


def test_a_bad_link_key_writes_nothing_misleading(tmp_path: Path) -> None:
    bad = BuildingLink("jsx", "建设巷社区", "yinba", "银巴小区", "11", "11号楼", 2, "jsx/../../etc")
    with pytest.raises(ValueError):
        write_qr_codes([bad], BOT, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.png"))
