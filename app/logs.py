"""Log output: text for people, or one JSON object a line (XMODAL_LOG_FORMAT=json), with the request id.

Clients write into logs (paths, headers, file names in errors), so control characters never reach a log line
raw: `escape` turns them into visible `\\xNN`-style escapes in every access field and, in the text format, in
every message, so a `%0d%0a` in a URL cannot forge a line (JSON escapes them again on its own).
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("xmodal_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi controls that reorder a line.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}


def escape(value: object) -> object:
    """A string with its control characters escaped (`\\n`, `\\r`, `\\t`, `\\xNN`, `\\uNNNN`); other
    values as they are."""
    if not isinstance(value, str):
        return value
    return _CONTROLS.sub(lambda m: _NAMED.get(m.group(), ascii(m.group())[1:-1]), value)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with the message's control characters escaped (tracebacks stay multi-line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = str(escape(record.message))
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, ...access fields, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": escape(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: escape(v) for k, v in (getattr(record, "access", None) or {}).items()})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def make_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    return handler
