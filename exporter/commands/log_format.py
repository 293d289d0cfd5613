"""Log records as one line each, in logfmt or JSON, the way Prometheus exporters write them.

Names in log lines come from outside (libvirt domains, policy files, HTTP clients), so no
character of theirs may end a line early or drive a terminal: every control character is
written as `\\xNN` in logfmt, and JSON escapes them itself. A traceback stays in its record,
as an `exception` field, so one event is one line whatever it carries.

Structured fields are passed as `extra={"domain": ..., "disk": ...}` and written after `msg`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

FORMATS = ("logfmt", "json")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
LEVELS |= {"warning": logging.WARNING, "error": logging.ERROR}  # "warning": Python's spelling

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f]|^$')


def escape_control(text: str) -> str:
    """`text` with every C0/C1 control character (newline included) written as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _logfmt_value(value: object) -> str:
    text = str(value)
    if _NEEDS_QUOTES.search(text):  # quote first, so that only the text's own \ is doubled
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escape_control(text)


class _LineFormatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: list[tuple[str, Any]] = [
            ("time", stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
            ("level", _LEVEL_NAMES.get(record.levelno, record.levelname.lower())),
            ("source", f"{record.filename}:{record.lineno}"),
            ("msg", record.getMessage()),
        ]
        out += [(k, v) for k, v in record.__dict__.items() if k not in _STANDARD]
        if record.exc_info:
            out.append(("exception", self.formatException(record.exc_info)))
        return out


class LogfmtFormatter(_LineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in self.fields(record))


class JsonFormatter(_LineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(self.fields(record)), default=str)


def setup_logging(level: str, fmt: str = "logfmt") -> None:
    """Send every record of the process to stderr, one line each (systemd's journal reads it)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
