"""regorus at the edge: compiling bundles, mapping its errors, one engine per thread.

``regorus.Engine`` is a pyo3 class marked *unsendable*: an engine may only be used — even
cloned or dropped — on the thread that created it; anything else panics. So an engine never
leaves its thread. :class:`EnginePool` keeps, per thread, the engine compiled from the bundle
that thread last evaluated; when the owner swaps in a new :class:`~._bundle.Bundle`, each thread
compiles its own engine from that immutable snapshot on its next decision. An evaluation thus
runs wholly on one bundle, old or new, never a mix.

regorus reports errors as ``RuntimeError`` text (``--> file:line:col`` ... ``error: msg``,
plus a Rust backtrace when ``RUST_BACKTRACE`` is set); :func:`describe_error` extracts the
message and ``file:line`` and drops the rest.
"""

from __future__ import annotations

import itertools
import re
import threading
import weakref

import regorus

from stockade.core.errors import PolicyError

from ._bundle import Bundle

__all__ = ["EnginePool", "compile_engine", "describe_error", "is_engine_panic"]

_LOCATION = re.compile(r"-->\s*(?P<file>[^\n]+?):(?P<line>\d+):\d+")
_MESSAGE = re.compile(r"^error:\s*(?P<msg>.*\S)", re.MULTILINE)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(message, "file:line")`` from a regorus error; the location is ``""`` when unknown."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    locations = [f"{m.group('file')}:{m.group('line')}" for m in _LOCATION.finditer(text)]
    found = _MESSAGE.search(text)
    if found is not None:
        message = found.group("msg")
    else:
        message = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    if message.endswith(":") and len(locations) > 1:  # "rule conflicts with the following rule:"
        message = f"{message[:-1]} at {locations[1]}"
    return message, locations[0] if locations else ""


def is_engine_panic(exc: BaseException) -> bool:
    """pyo3 panics (``pyo3_runtime.PanicException``) derive from BaseException, not Exception."""
    return type(exc).__name__ == "PanicException"


def compile_engine(bundle: Bundle) -> regorus.Engine:
    """A regorus engine holding ``bundle``, parsed and analysed (unsafe variables and the like).

    Raises :class:`~stockade.core.errors.PolicyError` with ``file:line`` when it does not compile.
    """
    engine = regorus.Engine()
    try:
        for source in bundle.sources:
            engine.add_policy(source.path, source.text)
        if bundle.data is not None:
            engine.add_data_json(bundle.data)
        engine.eval_query("true")  # makes regorus run its static analysis now
    except Exception as exc:
        message, location = describe_error(exc)
        raise PolicyError(message, location=location) from None
    return engine


_tokens = itertools.count()
_live: set[int] = set()
_local = threading.local()


def _thread_engines() -> dict[int, tuple[Bundle, regorus.Engine]]:
    try:
        engines: dict[int, tuple[Bundle, regorus.Engine]] = _local.engines
    except AttributeError:
        engines = _local.engines = {}
    return engines


class EnginePool:
    """Per-thread engines for one owner's current bundle.

    Engines live in a module-level thread-local keyed by the pool's token, so they are only
    ever dropped by their own thread: when it swaps in a newer bundle's engine, when it finds
    the entry of a pool that no longer exists, or when the thread exits.
    """

    def __init__(self) -> None:
        self._token = next(_tokens)
        _live.add(self._token)
        weakref.finalize(self, _live.discard, self._token)

    def engine_for(self, bundle: Bundle) -> regorus.Engine:
        """This thread's engine for ``bundle``, compiled on first use (may raise PolicyError)."""
        engines = _thread_engines()
        entry = engines.get(self._token)
        if entry is not None and entry[0] is bundle:
            return entry[1]
        if entry is None:
            for token in [t for t in engines if t not in _live]:
                del engines[token]
        engine = compile_engine(bundle)
        engines[self._token] = (bundle, engine)
        return engine

    def adopt(self, bundle: Bundle, engine: regorus.Engine) -> None:
        """Use ``engine`` (compiled on this thread from ``bundle``) for this thread."""
        _thread_engines()[self._token] = (bundle, engine)
