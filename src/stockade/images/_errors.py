"""The one error of this package that is not bad input: a layer failed an integrity check."""

from __future__ import annotations

from stockade.core.errors import StockadeError

__all__ = ["IntegrityError"]


class IntegrityError(StockadeError):
    """A layer's HMAC, digest or size did not match, or no given key opens it (exit 1)."""

    exit_code = 1
