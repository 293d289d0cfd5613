"""Log lines: one record per line in logfmt or JSON, whatever the names in them contain."""

from __future__ import annotations

import json
import logging
import sys

from exporter.commands.log_format import JsonFormatter, LogfmtFormatter, escape_control

FORGED = "web-1\nlevel=error msg=forged\x1b[2J\x00\r"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "exporter.test", logging.WARNING, "/x/controller.py", 42, msg, args, None
    )
    made.__dict__.update(extra)
    return made


def test_control_characters_are_written_as_hex_escapes():
    assert escape_control("a\nb\x1b\x00\r\x7f\x85c") == "a\\x0ab\\x1b\\x00\\x0d\\x7f\\x85c"


def test_a_logfmt_line_has_time_level_source_and_quoted_message():
    line = LogfmtFormatter().format(record("started pull of %s", "web-1/vda"))
    assert line.startswith("time=")
    assert ' level=warn source=controller.py:42 msg="started pull of web-1/vda"' in line


def test_a_name_with_a_newline_cannot_forge_a_second_logfmt_line():
    line = LogfmtFormatter().format(record("pull of %s completed", FORGED))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "web-1\\x0alevel=error" in line


def test_extra_fields_follow_the_message_in_logfmt():
    line = LogfmtFormatter().format(record("aborted", domain="db 1", disk="vda", reason="held"))
    assert line.endswith('msg=aborted domain="db 1" disk=vda reason=held')


def test_a_quote_in_a_logfmt_value_is_escaped():
    line = LogfmtFormatter().format(record('bad "x"'))
    assert 'msg="bad \\"x\\""' in line


def test_a_json_line_is_one_object_with_the_fields_and_no_raw_control_characters():
    line = JsonFormatter().format(record("pull of %s completed", FORGED, domain=FORGED))
    assert "\n" not in line and "\x1b" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warn" and parsed["domain"] == FORGED
    assert parsed["msg"] == f"pull of {FORGED} completed"


def test_a_traceback_stays_inside_its_record():
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(made)
    assert "\n" not in line and "exception=" in line and "ValueError: boom" in line
