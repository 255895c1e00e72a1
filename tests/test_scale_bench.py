"""bench/scale.py at a tiny size, so the benchmark cannot silently rot: it builds a district, measures every
figure through the product's own functions, measures again on the reused build, and prints the result line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bench.scale import Sizes, run
from tests.conftest import require_postgresql, require_redis

TINY = Sizes(
    tickets=3_000,
    residents=300,
    communities=3,
    route_open=60,
    filings=20,
    route_rounds=1,
    sent=100,
    wizards=4,
    wizard_rounds=1,
    rounds=2,
    queue_rounds=1,
)
NUMBER = r"\d+(\.\d+)?"
LINE = re.compile(
    rf"scale: tickets=3000 stats_ms={NUMBER} candidates_ms={NUMBER} sweep_ms={NUMBER} queue_100k_s={NUMBER} "
    rf"queue_rss_growth_mb=-?{NUMBER} sender_unlimited_per_s={NUMBER} route_p99_ms={NUMBER} "
    rf"pg_concurrent_ratio=(?P<ratio>{NUMBER}|n/a) pg_errors=(?P<errors>\d+|n/a)"
)


async def test_sqlite_district_built_then_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):  # the second run reuses the build, after putting back what the first one changed
        report, line = await run(TINY, tmp_path, None, None)
        found = LINE.fullmatch(line)
        assert found, line
        assert found["errors"] == "n/a"
    assert report.final["sqlite"]["queue_100k_s"] > 0
    assert set(report.final["sqlite, 3 communities"]) == {"stats_ms", "sweep_ms", "candidates_ms", "autoclose_ms"}
    # --routing-only: the same filing figure alone, on the reused build.
    report, line = await run(TINY, tmp_path, None, None, routing_only=True)
    assert report.final == {"sqlite": {"route_p99_ms": report.final["sqlite"]["route_p99_ms"]}}, line
    # Beside the filing, the floor under any commit of this process, its scratch file removed afterwards.
    assert re.search(
        rf"; floor \(the same, by sqlite3 in this thread\) p50 {NUMBER} ms, p99 {NUMBER} ms", capsys.readouterr().out
    )
    assert not [name for name in os.listdir(tmp_path) if name.startswith("floor")]


async def test_postgresql_district_with_wizards_in_flight(tmp_path: Path) -> None:
    postgres, redis = require_postgresql(), require_redis()
    report, line = await run(TINY, tmp_path, postgres, redis, sqlite=False)
    found = LINE.fullmatch(line.replace("=n/a", "=0"))  # the SQLite figures were not asked for
    assert found, line
    assert found["errors"] == "0" and float(found["ratio"]) > 0
    assert {"stats_ms", "sweep_ms", "candidates_ms", "route_p99_ms", "sender_unlimited_per_s"} <= set(
        report.final["postgresql"]
    )
