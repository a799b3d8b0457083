"""Process-wide logging set-up: plain text for people, or one JSON object per line.

Every line carries the id of the HTTP request it belongs to, taken from a context
variable that broker/request_id.py sets for the duration of each request. Lines logged
outside a request (start-up, background threads) show "-" instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

NO_REQUEST_ID = "-"
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=NO_REQUEST_ID
)
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] [%(request_id)s] %(name)s: %(message)s"

# Loggers of libraries that log whole URLs or bodies at DEBUG. They stay at WARNING even
# when LOG_LEVEL=DEBUG, so a request form or response body can never reach the output.
_QUIET_LIBRARIES = ("urllib3", "requests", "hvac")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's id, or "-" outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with time, level, logger, request id and message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", current_request_id.get()),
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str, stream=None) -> None:
    """Send the service's logs to `stream` (stderr by default) at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
