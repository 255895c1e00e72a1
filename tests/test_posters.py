"""Stairwell posters: a page per building, a file per compound; the QR code printed on a page decodes back to
that building's deep link, and is large enough to scan from a metre away."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest
import zxingcpp

from bot.i18n import create_i18n
from bot.qr import deep_link
from bot.reports.posters import A4, A5, PaperSize, compound_pdf, write_posters
from domain.posters import poster_buildings
from storage.db import SessionFactory

BOT = "jsx_feedback_bot"
POINTS_PER_MM = 72 / 25.4


def read_page(pdf: bytes, index: int) -> tuple[str, list[zxingcpp.Barcode], float]:
    """The page's text, the QR codes found on it rendered at 144 dpi, and how many pixels make a millimetre."""
    document = pdfium.PdfDocument(pdf)
    page = document[index]
    text = page.get_textpage().get_text_range()
    scale = 2
    image = page.render(scale=scale).to_pil()
    return text, zxingcpp.read_barcodes(image), POINTS_PER_MM * scale


@pytest.mark.parametrize("paper", [A4, A5], ids=lambda p: p.name)
async def test_a_page_decodes_back_to_its_buildings_deep_link(
    session_factory: SessionFactory, community: None, paper: PaperSize
) -> None:
    async with session_factory() as session:
        posters = await poster_buildings(session, "jsx")
    yinba = [p for p in posters if p.link.compound_code == "yinba"]
    pdf = compound_pdf(yinba, BOT, create_i18n(), paper)
    assert len(pdfium.PdfDocument(pdf)) == len(yinba) == 17  # 9 buildings in grid 1, 8 in grid 2
    for index in (0, 16):
        text, codes, px_per_mm = read_page(pdf, index)
        link = yinba[index].link
        assert [code.text for code in codes] == [deep_link(BOT, link.link_key)]
        assert link.building_name in text and "扫码反映问题" in text and "Scan to report a problem" in text
        # A code scans from about ten times its width: 10 cm and more is a metre.
        position = codes[0].position
        side = (position.top_right.x - position.top_left.x) / px_per_mm
        assert side >= 80, side
    first, _, _ = read_page(pdf, 0)
    assert "第一网格 · 网格员：李娟 0951-5012345、马丽" in first  # a phone only where the file gives one
    building_9 = next(i for i, p in enumerate(yinba) if p.link.building_code == "9")
    grid_2, _, _ = read_page(pdf, building_9)
    assert "第二网格 · 网格员：杨敏" in grid_2 and "0951" not in grid_2


async def test_one_file_per_compound(session_factory: SessionFactory, community: None, tmp_path: Path) -> None:
    async with session_factory() as session:
        posters = await poster_buildings(session)
    files = write_posters(posters, BOT, tmp_path, create_i18n())
    assert [f.name for f in files] == ["jsx_yinba.pdf", "jsx_xingfu.pdf", "jsx_chaoyang.pdf"]
    assert [len(pdfium.PdfDocument(f.read_bytes())) for f in files] == [17, 3, 6]
