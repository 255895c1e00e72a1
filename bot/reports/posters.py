"""Printable stairwell posters: one page per building, one PDF per compound, so an office prints them in one go.

Each page: the building's name, "扫码反映问题" with two lines on what to do, its QR code (the same deep link as
``python -m bot qr``) large enough to scan from a metre away, and the grid with its workers' names (a phone
only when the community file gives one). Chinese first, English beneath, in the packaged CJK font.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from itertools import groupby
from pathlib import Path

from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import lazy_gettext as __
from babel.support import LazyProxy
from fpdf import FPDF

from bot.qr import deep_link, qr_png
from bot.reports.fonts import CJK_FONT
from domain.posters import PosterBuilding


@dataclass(frozen=True)
class PaperSize:
    name: str
    width: float  # mm
    height: float
    qr: float  # the QR code's side in mm: about a tenth of the distance it scans from
    scale: float  # type sizes relative to A4


A4 = PaperSize("A4", 210, 297, 140, 1.0)
A5 = PaperSize("A5", 148, 210, 100, 0.72)
FONT = "cjk"
MARGIN = 14
# fpdf2 subsets the font with fontTools, which reports every table it prunes at INFO.
logging.getLogger("fontTools").setLevel(logging.WARNING)


# The poster speaks both languages at once: each text in Chinese, then smaller in English.
TITLE = __("Scan to report a problem")
STEP_ONE = __("① Scan with your phone, open this building's bot in Telegram and press Start.")
STEP_TWO = __("② Write what is wrong and add a photo; your grid worker takes it and tells you every step.")
GRID_WORKERS = __("{grid} · grid worker: {people}")


class Poster:
    """One PDF being written, with the words of both languages at hand."""

    def __init__(self, i18n: I18n, paper: PaperSize) -> None:
        self.i18n, self.paper = i18n, paper
        self.pdf = FPDF(format=(paper.width, paper.height))
        self.pdf.set_auto_page_break(False)
        self.pdf.set_margins(MARGIN, MARGIN, MARGIN)
        self.pdf.add_font(FONT, fname=str(CJK_FONT))

    def words(self, text: LazyProxy, locale: str, **values: str) -> str:
        with self.i18n.context(), self.i18n.use_locale(locale):
            return str(text).format(**values)

    def line(self, text: str, size: float, *, grey: bool = False, gap: float = 1.5) -> None:
        size *= self.paper.scale
        self.pdf.set_font(FONT, size=size)
        self.pdf.set_text_color(110 if grey else 0)
        self.pdf.multi_cell(0, size * 0.45, text, align="C", new_x="LMARGIN", new_y="NEXT")
        self.pdf.ln(gap * self.paper.scale)

    def both(self, text: LazyProxy, size: float, **values: str) -> None:
        self.line(self.words(text, "zh_CN", **values), size, gap=0.5)
        self.line(self.words(text, "en", **values), max(size * 0.55, 8), grey=True)

    def page(self, poster: PosterBuilding, url: str) -> None:
        link, paper = poster.link, self.paper
        self.pdf.add_page()
        self.pdf.set_y(MARGIN)
        self.line(f"{link.community_name} · {link.compound_name}", 16, grey=True)
        self.line(link.building_name, 44, gap=3)
        self.both(TITLE, 40)
        top = self.pdf.get_y() + 2 * paper.scale
        self.pdf.image(BytesIO(qr_png(url)), x=(paper.width - paper.qr) / 2, y=top, w=paper.qr, h=paper.qr)
        self.pdf.set_y(top + paper.qr + 4 * paper.scale)
        self.both(STEP_ONE, 15)
        self.both(STEP_TWO, 15)
        people = "、".join(f"{w.name} {w.phone}".strip() for w in poster.workers) or "—"
        self.line(self.words(GRID_WORKERS, "zh_CN", grid=poster.grid_name, people=people), 16, gap=0.5)
        self.line(self.words(GRID_WORKERS, "en", grid=poster.grid_name_en, people=people), 9, grey=True)

    def output(self) -> bytes:
        return bytes(self.pdf.output())


def compound_pdf(posters: Iterable[PosterBuilding], bot_username: str, i18n: I18n, paper: PaperSize = A4) -> bytes:
    """One page per building, in the order given."""
    pdf = Poster(i18n, paper)
    for poster in posters:
        pdf.page(poster, deep_link(bot_username, poster.link.link_key))
    return pdf.output()


def write_posters(
    posters: list[PosterBuilding], bot_username: str, out_dir: Path, i18n: I18n, paper: PaperSize = A4
) -> list[Path]:
    """``<community>_<compound>.pdf`` per compound (codes are A-Za-z0-9- only: safe file names)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    by_compound = groupby(posters, key=lambda p: (p.link.community_code, p.link.compound_code))
    for (community, compound), pages in by_compound:
        path = out_dir / f"{community}_{compound}.pdf"
        path.write_bytes(compound_pdf(pages, bot_username, i18n, paper))
        written.append(path)
    return written
