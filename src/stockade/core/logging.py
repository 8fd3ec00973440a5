"""Structured logging: structlog, JSON lines when stderr is not a TTY, secrets redacted.

Sensitive keys (:data:`SENSITIVE_KEYS`) are replaced by ``[secure]`` wherever they appear in an
event, nested dicts included; bytes and strings that came from a peer are passed through
:func:`escape_peer` before they are logged, so control characters cannot forge log lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

__all__ = ["REDACTED", "SENSITIVE_KEYS", "configure_logging", "escape_peer", "get_logger", "redact"]

REDACTED = "[secure]"

#: Field names whose values never reach a log line. Matching is case-insensitive and also
#: catches names that end with one of these (``vault_token``, ``db_password``).
SENSITIVE_KEYS = frozenset(
    {
        "password",
        "passphrase",
        "secret",
        "token",
        "authorization",
        "private_key",
        "totp_secret",
        "api_key",
        "cookie",
        "credential",
    }
)


def _is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return any(lowered == name or lowered.endswith("_" + name) for name in SENSITIVE_KEYS)


def redact(value: Any) -> Any:
    """Return ``value`` with every sensitive key's value replaced by ``[secure]``."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _is_sensitive(k) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key != "event" and _is_sensitive(key):
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], Mapping | list | tuple):
            event_dict[key] = redact(event_dict[key])
    return event_dict


def escape_peer(data: str | bytes, limit: int = 256) -> str:
    """Make peer-supplied text safe to log: non-printables escaped, length capped."""
    if isinstance(data, bytes):
        text = data[:limit].decode("utf-8", "backslashreplace")
    else:
        text = data[:limit]
    escaped = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
    return escaped + ("..." if len(data) > limit else "")


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # resolved per logger, so a replaced sys.stderr (daemonizing, test capture) is followed
    return structlog.PrintLogger(sys.stderr)


def configure_logging(level: str = "info", json_output: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once, at process start."""
    if json_output is None:
        json_output = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str, **context: Any) -> Any:
    """A lazy structlog logger for ``name`` with ``context`` fields.

    Lazy: it picks up :func:`configure_logging` even when created at import time, before the
    configuration ran (binding eagerly would freeze structlog's defaults into it).
    """
    return structlog.get_logger(name, **context)
