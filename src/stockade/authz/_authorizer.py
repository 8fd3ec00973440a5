"""The in-process authorizer: decide, hot-reload the bundle, log decisions."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stockade.core.errors import PolicyError
from stockade.core.logging import get_logger
from stockade.core.settings import AuthzSettings
from stockade.core.tasks import cancel_and_wait

from ._bundle import DEFAULT_BUNDLE_DIR, Bundle, read_bundle
from ._decision import DECISION_RULE, Decision, decision_from_value
from ._decision_log import DecisionLog, DecisionSink
from ._engine import EnginePool, compile_engine, describe_error, is_engine_panic
from ._input import Context, Resource, Subject, build_input

__all__ = ["Authorizer"]

_log = get_logger("stockade.authz")

_RULE_PATH = re.compile(r"data(\.[A-Za-z_][A-Za-z0-9_]*)+")

#: Where a bundle declares the roles it knows.
ROLES_RULE = "data.stockade.roles"

#: A request every bundle must be able to evaluate before it is put in service.
_PROBE = build_input(
    "ssh.connect",
    Resource(kind="workspace", name="probe", owner="probe"),
    Context(user=Subject(name="probe")),
)


class Authorizer:
    """Evaluates ``data.stockade.decision`` of a policy bundle in-process.

    ``bundle_dir`` wins over ``settings.policy_dir``; with neither, the bundle shipped with
    Stockade is used. The constructor compiles the bundle and raises
    :class:`~stockade.core.errors.PolicyError` (``file:line``) when it does not compile or has
    no ``data.stockade.decision`` rule. :meth:`decide` is synchronous, thread-safe and never
    raises. :meth:`start` begins hot reload (polling every ``settings.reload_interval``) and,
    with a ``decision_sink`` and ``settings.decision_log``, publishing the decision log;
    :meth:`stop` ends both and flushes the log.
    """

    def __init__(
        self,
        *,
        settings: AuthzSettings,
        bundle_dir: Path | None = None,
        decision_sink: DecisionSink | None = None,
    ) -> None:
        self._settings = settings
        self._root = bundle_dir or settings.policy_dir or DEFAULT_BUNDLE_DIR
        self._pool = EnginePool()
        self._reload_lock = threading.Lock()
        self._bundle = self._prepare(read_bundle(self._root))
        self._failed_revision = ""
        self._log = (
            DecisionLog(decision_sink, fold_window=settings.fold_window)
            if decision_sink is not None and settings.decision_log
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<Authorizer bundle={str(self._root)!r} revision={self.revision}>"

    @property
    def bundle_dir(self) -> Path:
        """The directory the bundle is read from."""
        return self._root

    @property
    def revision(self) -> str:
        """Short hash of the bundle in service (names and contents of its files)."""
        return self._bundle.revision[:12]

    def _prepare(self, bundle: Bundle) -> Bundle:
        """Compile ``bundle`` and evaluate a probe request; adopt the engine for this thread."""
        engine = compile_engine(bundle)
        engine.set_input(_PROBE)
        try:
            engine.eval_rule(DECISION_RULE)
        except Exception as exc:
            message, location = describe_error(exc)
            if message == "not a valid rule path":
                raise PolicyError(
                    f"policy bundle {bundle.root} defines no {DECISION_RULE} rule"
                ) from None
            raise PolicyError(message, location=location) from None
        self._pool.adopt(bundle, engine)
        return bundle

    def decide(self, input_doc: Mapping[str, Any]) -> Decision:
        """Evaluate ``input_doc`` (see :func:`build_input`) against the bundle in service.

        Any failure — evaluation error, undefined or malformed decision — is a deny whose reason
        says what went wrong; it is logged and never raised. The caller must not mutate
        ``input_doc`` afterwards (the decision log reads it later).
        """
        bundle = self._bundle
        try:
            engine = self._pool.engine_for(bundle)
            engine.set_input(input_doc)
            decision = decision_from_value(engine.eval_rule(DECISION_RULE))
        except Exception as exc:
            decision = self._failed(exc, input_doc)
        except BaseException as exc:
            if not is_engine_panic(exc):
                raise
            decision = self._failed(exc, input_doc)
        if self._log is not None:
            self._log.record(input_doc, decision)
        return decision

    def query(self, input_doc: Mapping[str, Any], rule: str) -> Any:
        """The raw value of ``rule`` (a ``data.`` path such as ``data.stockade.obligations``)
        for ``input_doc``; ``None`` when undefined. Unlike :meth:`decide` this raises
        :class:`~stockade.core.errors.PolicyError` when evaluation fails (it serves ``stockade
        policy eval --query``, a debugging aid, never an access decision)."""
        if not _RULE_PATH.fullmatch(rule):
            raise PolicyError(f"--query: {rule!r} is not a rule path such as {DECISION_RULE}")
        engine = self._pool.engine_for(self._bundle)
        try:
            engine.set_input(input_doc)
            return engine.eval_rule(rule)
        except Exception as exc:
            message, location = describe_error(exc)
            if message == "not a valid rule path":
                return None
            raise PolicyError(message, location=location) from None

    def roles(self) -> frozenset[str]:
        """The roles the bundle in service declares (``data.stockade.roles``, a set of strings).

        Callers refuse any other role, so a typo never silently grants nothing. Raises
        :class:`~stockade.core.errors.PolicyError` when the bundle declares none or the value is
        not a set (or array) of strings.
        """
        bundle = self._bundle
        try:
            value = self._pool.engine_for(bundle).eval_rule(ROLES_RULE)
        except PolicyError:
            raise
        except Exception as exc:
            message, location = describe_error(exc)
            if message != "not a valid rule path":
                raise PolicyError(message, location=location) from None
            value = None
        if value is None or value == {}:  # regorus answers {} for an undefined rule path
            raise PolicyError(
                f"policy bundle {bundle.root} declares no {ROLES_RULE}; add"
                ' roles := {"admin", ...} to package stockade'
            )
        if not isinstance(value, set | frozenset | list | tuple) or not all(
            isinstance(role, str) and role for role in value
        ):
            raise PolicyError(f"{ROLES_RULE} must be a set of role names, got {value!r}")
        return frozenset(value)

    async def decide_async(self, input_doc: Mapping[str, Any]) -> Decision:
        """:meth:`decide` for callers written against the remote (gRPC) authz interface."""
        return self.decide(input_doc)

    def _failed(self, exc: BaseException, input_doc: Mapping[str, Any]) -> Decision:
        if isinstance(exc, PolicyError):
            detail = str(exc)
        else:
            message, location = describe_error(exc)
            detail = f"{location}: {message}" if location else message
        reason = f"policy evaluation failed: {detail}"
        action = input_doc.get("action") if isinstance(input_doc, Mapping) else None
        _log.warning("authz.evaluation_failed", reason=reason, action=str(action))
        return Decision.deny(reason)

    def reload(self) -> bool:
        """Swap in the bundle on disk if it changed and compiles; True when swapped.

        A bundle that fails to compile keeps the one in service and is logged with file:line
        (once per distinct broken revision). The bundle is read twice and only used when both
        reads agree, so a reload never picks up a half-written set of files.
        """
        with self._reload_lock:
            try:
                bundle = read_bundle(self._root)
            except PolicyError as exc:
                self._reject(f"unreadable: {exc}", exc)
                return False
            if bundle.revision == self._bundle.revision:
                self._failed_revision = ""
                return False
            if bundle.revision == self._failed_revision:
                return False
            with contextlib.suppress(PolicyError):
                if read_bundle(self._root).revision != bundle.revision:
                    return False  # still being written; the next poll sees it settled
            try:
                prepared = self._prepare(bundle)
            except PolicyError as exc:
                self._reject(bundle.revision, exc)
                return False
            self._bundle = prepared
            self._failed_revision = ""
        _log.info("authz.reloaded", bundle=str(self._root), revision=self.revision)
        return True

    def _reject(self, revision: str, exc: PolicyError) -> None:
        if revision == self._failed_revision:
            return
        self._failed_revision = revision
        _log.error(
            "authz.reload_failed",
            error=str(exc),
            location=exc.location,
            keeping=self.revision,
        )

    async def start(self) -> None:
        """Start hot reload and the decision log's publisher (idempotent)."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._watch(), name="authz-reload"))
        if self._log is not None:
            self._log.reopen()
            self._tasks.append(asyncio.create_task(self._log.run(), name="authz-decision-log"))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_interval)
            try:
                self.reload()
            except Exception:  # the watcher must outlive any surprise
                _log.exception("authz.reload_crashed", bundle=str(self._root))

    async def stop(self) -> None:
        """Stop hot reload and publish every decision still held by the decision log."""
        tasks, self._tasks = self._tasks, []
        if tasks:
            await cancel_and_wait(tasks[0], what="policy reload")
        if self._log is not None:
            await self._log.close()
            await asyncio.gather(*tasks[1:])
