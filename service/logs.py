"""Logging for the service: readable text by default, one JSON object per line for log pipelines.

The request id lives in a context variable (``service.request_context``), set by the API's outermost
middleware for the duration of a request: every log record made while answering it (ours, and uvicorn's
error lines) carries it, without any function passing it along. Nothing here imports FastAPI, so domain
modules may log freely.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from service.request_context import REQUEST_ID

LogFormat = Literal["text", "json"]

# Fields an access record carries (``logger.info(..., extra=access_fields(...))``); the JSON formatter
# writes each one that is present as its own key, the text formatter appends them to the message.
ACCESS_FIELDS = ("method", "route", "path", "status", "duration_ms", "client", "model", "version")
_LOGGERS = ("calibserve", "uvicorn", "uvicorn.error")


class RequestIdFilter(logging.Filter):
    """Stamps every record with the request being answered (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, request id, access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        entry["request_id"] = None if request_id == "-" else request_id
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """uvicorn's look (``INFO:     name: message``) with the request id where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        message = f"{record.levelname + ':':<9} {record.name}: {record.getMessage()}"
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            message += f" [request_id={request_id}]"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message


def formatter_for(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Our loggers and uvicorn's write through one handler in the chosen format.

    Idempotent (every worker process builds its app, tests build many). uvicorn's own access logger is
    switched off by ``calibserve serve``: the access line comes from ``calibserve.access``, which knows the
    route template, the request id and the model.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(log_format))
    handler.addFilter(RequestIdFilter())
    handler.set_name("calibserve")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "calibserve" or name != "calibserve"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("calibserve").setLevel(level.upper())
    logging.getLogger("uvicorn.error").setLevel(level.upper())
