"""Structured logging (logfmt or JSON) with every line passed through a secret redactor.

Call sites attach key/value pairs with `log(logger, level, msg, key=value, ...)`; the
formatter renders them after `ts`, `level`, `logger` and `msg`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from exporter.redact import Redact


def _unchanged(text: str) -> str:
    return text


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}


def _fields(record: logging.LogRecord, redact: Redact) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": _LEVEL_NAMES.get(record.levelno, "error"),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update(getattr(record, "fields", {}))
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out["err"] = f"{type(exc).__name__}: {exc}"
    # Redact values before encoding too: escaping could otherwise split a secret the final
    # pass over the line would no longer recognise.
    return {k: redact(v) if isinstance(v, str) else v for k, v in out.items()}


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class _RedactingFormatter(logging.Formatter):
    """Holds the redactor every line passes through."""

    def __init__(self, redact: Redact = _unchanged) -> None:
        super().__init__()
        self.redact = redact


class LogfmtFormatter(_RedactingFormatter):
    """`ts=... level=... logger=... msg=... key=value` lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self.redact)
        return self.redact(" ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items()))


class JsonFormatter(_RedactingFormatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self.redact)
        return self.redact(json.dumps(fields, ensure_ascii=False, default=str))


def setup(level: str = "info", fmt: str = "logfmt", redact: Redact = _unchanged) -> None:
    """Send every log line to stderr in `fmt`, through `redact`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else LogfmtFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # aiohttp's access log would print one line per scrape at info; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields}, stacklevel=2)
