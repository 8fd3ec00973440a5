"""Moved to :mod:`stockade.workspace` (the runtimes' fd wrappers); re-exported for the gateway."""

from stockade.workspace import CHUNK, FdReader, FdWriter

__all__ = ["CHUNK", "FdReader", "FdWriter"]
