"""Settings, errors, events and logging: the parts every other package builds on.

``core`` imports nothing else of Stockade's.
"""

from . import errors, events
from .durations import format_duration, parse_duration
from .errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    BusUnavailable,
    ConfigError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PolicyError,
    SecretsBackendUnavailable,
    StockadeError,
    StoreUnavailable,
    TokenRejected,
    ToolMissing,
    UserError,
)
from .files import write_private
from .logging import configure_logging, escape_peer, get_logger, redact
from .settings import Settings, load_settings

__all__ = [
    "AlreadyExists",
    "AuthenticationError",
    "BackendError",
    "BusUnavailable",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "SecretsBackendUnavailable",
    "Settings",
    "StockadeError",
    "StoreUnavailable",
    "TokenRejected",
    "ToolMissing",
    "UserError",
    "configure_logging",
    "errors",
    "escape_peer",
    "events",
    "format_duration",
    "get_logger",
    "load_settings",
    "parse_duration",
    "redact",
    "write_private",
]
