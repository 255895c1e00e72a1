"""The CJK font every picture and printout uses, shipped by a Python package (mplfonts), never a system font.

A fresh machine with only Python has no Chinese font; a chart drawn with the default one shows boxes.
Noto Sans CJK SC covers Chinese, Latin letters and digits, so one font serves both languages.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from mplfonts.conf import FONT_DIR

CJK_FONT = Path(FONT_DIR) / "NotoSansCJKsc-Regular.otf"


@cache
def missing_glyphs(text: str) -> str:
    """The characters of ``text`` (other than whitespace) the font has no glyph for."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(CJK_FONT))
    return "".join(sorted({ch for ch in text if not ch.isspace() and font.get_char_index(ord(ch)) == 0}))
