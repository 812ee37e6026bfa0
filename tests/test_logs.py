"""Log lines: one per event, in text (key=value) or JSON, tracebacks escaped onto the same line."""

from __future__ import annotations

import json
import logging

from kvserve.server.ops.logs import JsonFormatter, TextFormatter


def _record(message: str, fields: dict | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("kvserve.test", logging.INFO, __file__, 1, message, (), exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_text_lines_are_one_line_with_fields():
    line = TextFormatter().format(_record("rpc", {"method": "ModelInfer", "id": "a b", "code": "OK", "empty": ""}, exc=True))
    assert "\n" not in line
    assert "INFO kvserve.test: rpc method=ModelInfer id=\"a b\" code=OK empty=\"\"" in line
    assert "exc=" in line and "boom" in line


def test_json_lines_parse_and_keep_fields():
    line = JsonFormatter().format(_record("multi\nline", {"method": "Upload", "ms": 1.5}, exc=True))
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "multi\nline" and data["method"] == "Upload" and data["ms"] == 1.5
    assert data["level"] == "INFO" and data["logger"] == "kvserve.test" and "boom" in data["exc"]
