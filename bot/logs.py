"""Log lines: plain text by default, one JSON object per line when LOG_FORMAT=json (for a log collector)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str = "INFO", form: str = "plain") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(PLAIN))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Chatter at INFO that says nothing to an operator: every webhook request, Alembic's plugin set-up, and
    # APScheduler's two lines for every run of every job (thousands a day; the jobs log what they changed).
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in ("aiohttp.access", "alembic.runtime.plugins", "apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(name).setLevel(quiet)
