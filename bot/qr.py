"""QR codes for stairwell notice boards: one tap binds a resident to their building.

Each code carries ``https://t.me/<bot>?start=<link_key>``; the bot's /start handler looks the key up.
Besides the PNG files an ``index.csv`` lists compound, building and link for printing labels.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path

import segno

from domain.community_file import MAX_LINK_KEY, BuildingLink

PAYLOAD_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_LINK_KEY}}}")
USERNAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{4,31}")
SCALE = 10  # pixels per module: a t.me link becomes about 450 px square, 4 cm at 300 dpi
BORDER = 4  # the quiet zone the QR standard asks for, in modules
INDEX_FILE = "index.csv"
INDEX_COLUMNS = ("community", "compound", "building", "units", "link_key", "link", "file")


def deep_link(bot_username: str, link_key: str) -> str:
    """``https://t.me/<bot>?start=<link_key>``; the payload must be 1–64 characters of A-Za-z0-9_-."""
    username = bot_username.strip().removeprefix("@")
    if not USERNAME_PATTERN.fullmatch(username):
        raise ValueError(f"not a Telegram bot username: {bot_username!r}")
    if not PAYLOAD_PATTERN.fullmatch(link_key):
        raise ValueError(f"not a valid /start payload (1-{MAX_LINK_KEY} of A-Za-z0-9_-): {link_key!r}")
    return f"https://t.me/{username}?start={link_key}"


def qr_png(url: str, scale: int = SCALE) -> bytes:
    """The QR code of ``url`` as a PNG image, with the quiet zone the standard asks for."""
    out = BytesIO()
    # Error level Q survives a dirty or partly torn notice; boost_error keeps the smallest version.
    segno.make_qr(url, error="q").save(out, kind="png", scale=scale, border=BORDER)
    return out.getvalue()


def write_qr_codes(links: Iterable[BuildingLink], bot_username: str, out_dir: str | Path) -> list[Path]:
    """Write ``<link_key>.png`` per building (e.g. ``jsx_yinba_11.png``) and ``index.csv`` into out_dir.

    Returns the PNG paths in the order of ``links``. The index is written with a byte-order mark so that
    Excel opens the Chinese names correctly; it is UTF-8 all the same.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for link in links:
        url = deep_link(bot_username, link.link_key)
        # The key is A-Za-z0-9_- only (checked by deep_link), so it is a safe, readable file name.
        path = out / f"{link.link_key}.png"
        path.write_bytes(qr_png(url))
        written.append(path)
        rows.append(
            {
                "community": link.community_name,
                "compound": link.compound_name,
                "building": link.building_name,
                "units": link.units,
                "link_key": link.link_key,
                "link": url,
                "file": path.name,
            }
        )
    with (out / INDEX_FILE).open("w", encoding="utf-8-sig", newline="") as index:
        writer = csv.DictWriter(index, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return written
