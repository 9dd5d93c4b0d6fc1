"""Logging for the entry points: one ``dictConfig``, text for people or one JSON object a line."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime

#: Fields that log calls pass in ``extra=`` and that the JSON format keeps.
FIELDS = ("tenant", "subscription", "payload_id", "job_id", "job_ids")


class JSONFormatter(logging.Formatter):
    """One JSON object a line, with the stable fields of ``FIELDS`` when a record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger; only entry points call this."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "text": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
                "json": {"()": JSONFormatter},
            },
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": fmt}},
            "root": {"handlers": ["stderr"], "level": level},
            # RQ logs three lines a job, httpx one a request (the Graph upkeep's renewals say what they did)
            "loggers": {name: {"level": "WARNING" if level == "INFO" else level} for name in ("rq.worker", "httpx")},
        }
    )
