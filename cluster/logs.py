"""Structured logs: one JSON object per line on stderr, which Ray collects per actor (and
`ray logs` / a log shipper reads), with the ids that tie a line to a request —
`event_id`, `notification_id`, `campaign_id`, `entry_id` — passed as `extra=`.

Device tokens are credentials (whoever holds one can push to that phone), so every string
in a record — message, extras, formatted traceback — is scrubbed of APNs and FCM token
shapes before it is written; a token keeps its first 6 characters, enough to match it with
a support ticket.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from cluster.settings import HeraldSettings

# APNs: 64 hex characters (32 bytes). FCM registration tokens: "<instance id>:<APA91…>".
_TOKEN = re.compile(r"\b[0-9a-fA-F]{64}\b|\b[\w-]{11,}:APA91[\w-]{20,}")
_SECRET_FIELDS = frozenset({"token", "authorization", "api_key", "private_key"})
_HANDLER_NAME = "herald-structured"
_LIBRARY_LOGGERS = ("aiokafka",)


def redact(text: str) -> str:
    """The text with every device token cut to its first 6 characters."""
    return _TOKEN.sub(lambda m: f"{m.group(0)[:6]}…[redacted]", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


class RedactingJsonFormatter(JsonFormatter):
    """JSON lines whose every string value went through `redact`; fields named like a
    secret are dropped to a marker whatever their shape."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {
            key: "[redacted]" if key.lower() in _SECRET_FIELDS else _scrub(value)
            for key, value in log_data.items()
        }


def configure_logging(settings: HeraldSettings) -> None:
    """Send the `herald.*` loggers to stderr as redacted JSON lines (or plain text with
    `HERALD_LOG_FORMAT=text`). Idempotent: every actor and replica calls it on start."""
    root = logging.getLogger("herald")
    root.setLevel(settings.log.level.upper())
    if any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if settings.log.format == "json":
        handler.setFormatter(
            RedactingJsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(_RedactingText("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.propagate = False
    # The clients whose warnings matter in a post-mortem, in the same format and with times.
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.addHandler(handler)
        library.propagate = False


class _RedactingText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
