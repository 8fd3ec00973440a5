"""The nftables enforcer and its thin ``nft`` adapter (subprocess, batch scripts, ``nft -j``).

The table (family ``inet``, name from ``[shield] nft_table``, by default one per data dir)::

    table inet stockade_1a2b3c4d {
        comment "stockade instance 1a2b3c4d5e6f7a8b"
        set banned4 { type ipv4_addr; flags interval, timeout; }
        set banned6 { type ipv6_addr; flags interval, timeout; }
        chain input {
            type filter hook input priority filter - 5; policy accept;
            tcp dport { 2222 } ip saddr @banned4 drop
            tcp dport { 2222 } ip6 saddr @banned6 drop
        }
    }

Elements carry the ban's remaining time as their ``timeout``, so the kernel lifts a ban on time
even when Stockade is down. At start the table is rebuilt from the ban store in one atomic batch,
but only when it is absent or carries this instance's comment: an instance never deletes or
rebuilds a table another instance (or anyone else) made; it reports the clash and enforces nothing.
Bans and unbans are queued and written by one task: what queued up while ``nft`` ran goes into
the next single ``nft -f`` (a wave of bans costs a few runs, not one per ban); a batch that
fails is retried one change at a time, so one bad element does not hold back the others.
``nft`` missing or not permitted is reported once; the enforcer then does nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
from collections.abc import Sequence
from typing import Any

import structlog

from ._model import Ban, parse_source

__all__ = ["Nft", "NftError", "NftablesEnforcer"]

_log = structlog.get_logger("stockade.shield.nft")  # lazy: honours configure_logging run later


class NftError(Exception):
    """``nft`` failed; ``missing`` when the program is absent, ``denied`` when not permitted."""

    def __init__(self, message: str, *, missing: bool = False, denied: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        self.denied = denied


class Nft:
    """Runs ``nft`` (optionally inside a network namespace) with a script on stdin."""

    def __init__(self, *, netns: str | None = None, program: str = "nft") -> None:
        self.netns = netns
        self.program = program

    def _argv(self, *args: str) -> list[str]:
        base = [self.program, *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    async def run(self, *args: str, script: str | None = None) -> str:
        """Run ``nft ARGS`` (``-f -`` with ``script``); returns stdout, raises :class:`NftError`."""
        if script is not None:
            args = (*args, "-f", "-")
        if shutil.which(self.program) is None:
            raise NftError(
                f"{self.program} is not installed (apt-get install nftables)", missing=True
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(*args),
                stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NftError(f"cannot run {self.program}: {exc}", missing=True) from exc
        out, err = await proc.communicate(script.encode() if script is not None else None)
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            denied = "Operation not permitted" in text or "Permission denied" in text
            raise NftError(text.splitlines()[0] if text else "nft failed", denied=denied)
        return out.decode()

    async def json(self, *args: str) -> list[dict[str, Any]]:
        """``nft -j ARGS`` parsed: the ``nftables`` list of objects."""
        data = json.loads(await self.run("-j", *args) or "{}")
        return list(data.get("nftables", []))


_TABLE_COMMENT = re.compile(r'\Atable inet \S+ \{\n\s*comment "(?P<comment>[^"\n]*)"')


def _timeout(seconds: float) -> str:
    return f"{max(1000, math.ceil(seconds * 1000))}ms"


class NftablesEnforcer:
    """Keeps the kernel's ban sets equal to the active bans (see the module docstring)."""

    name = "nftables"

    def __init__(
        self,
        nft: Nft,
        *,
        table: str = "stockade",
        ports: Sequence[int] = (22,),
        owner: str = "default",
    ) -> None:
        self.nft = nft
        self.table = table
        self.owner = owner
        """Who this instance is (its data dir's id): the table's comment says it made it."""
        self.ports = sorted(set(ports))
        self.problem: str | None = None
        """Why the enforcer is off (``nft`` missing or not permitted), after :meth:`reconcile`."""
        self.failures = 0
        self.runs = 0
        """``nft`` runs made for bans and unbans (batches)."""
        self._queued: list[str] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self.problem is None

    def _set(self, ban: Ban) -> str:
        return "banned4" if ban.network.version == 4 else "banned6"

    def _skeleton(self) -> str:
        ports = ", ".join(str(p) for p in self.ports)
        t = self.table
        return (
            f"table inet {t}\n"
            f"delete table inet {t}\n"
            f"table inet {t} {{\n"
            f'  comment "{self.mark}";\n'
            "  set banned4 { type ipv4_addr; flags interval, timeout; }\n"
            "  set banned6 { type ipv6_addr; flags interval, timeout; }\n"
            "  chain input {\n"
            "    type filter hook input priority filter - 5; policy accept;\n"
            f"    tcp dport {{ {ports} }} ip saddr @banned4 drop\n"
            f"    tcp dport {{ {ports} }} ip6 saddr @banned6 drop\n"
            "  }\n"
            "}\n"
        )

    @property
    def mark(self) -> str:
        """The comment this instance puts on its table."""
        return f"stockade instance {self.owner}"

    async def owner_of_table(self) -> str | None:
        """The table's comment (``""`` without one); ``None`` when the table does not exist."""
        try:
            text = await self.nft.run("list", "table", "inet", self.table)
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        found = _TABLE_COMMENT.match(text)
        return found.group("comment") if found else ""

    async def reconcile(self, bans: Sequence[Ban], now: float) -> None:
        """Rebuild the table with exactly ``bans`` in one atomic batch, if it is ours."""
        try:
            owner = await self.owner_of_table()
        except NftError as exc:
            self._report(exc)
            return
        if owner is not None and owner != self.mark:
            self.problem = (
                f"nft table inet {self.table} exists and was not made by this instance"
                f" ({owner or 'no Stockade mark'}); set shield.nft_table to another name"
            )
            _log.error("nft_table_taken", table=self.table, owner=owner, mine=self.mark)
            return
        lines = [self._skeleton()]
        for ban in bans:
            if ban.remaining(now) > 0:
                lines.append(
                    f"add element inet {self.table} {self._set(ban)} "
                    f"{{ {ban.source} timeout {_timeout(ban.remaining(now))} }}\n"
                )
        try:
            await self.nft.run(script="".join(lines))
        except NftError as exc:
            self._report(exc)
            return
        self.problem = None
        _log.info("nft_reconciled", table=self.table, bans=len(lines) - 1, ports=self.ports)

    def _report(self, exc: NftError) -> None:
        if exc.missing or exc.denied:
            if self.problem is None:
                _log.error("nft_unavailable", error=str(exc), effect="nftables enforcer off")
            self.problem = str(exc)
        else:
            self.failures += 1
            _log.error("nft_failed", error=str(exc))

    async def apply(self, ban: Ban, now: float) -> None:
        """Queue ``ban`` for the kernel (see the module docstring); :meth:`drain` waits for it."""
        if not self.available or ban.remaining(now) <= 0:
            return
        element = f"inet {self.table} {self._set(ban)} {{ {ban.source} }}"
        self._queue(
            f"add element {element}\n"
            f"delete element {element}\n"
            f"add element inet {self.table} {self._set(ban)} "
            f"{{ {ban.source} timeout {_timeout(ban.remaining(now))} }}\n"
        )

    async def remove(self, source: str) -> None:
        """Queue the removal of ``source``'s element; :meth:`drain` waits for it."""
        if not self.available:
            return
        network = parse_source(source)
        name = "banned4" if network.version == 4 else "banned6"
        element = f"inet {self.table} {name} {{ {source} }}"
        # add first so that the delete never fails on an absent (expired) element
        self._queue(f"add element {element}\ndelete element {element}\n")

    def _queue(self, script: str) -> None:
        self._queued.append(script)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"nft-{self.table}")

    async def _write(self) -> None:
        while self._queued:
            scripts, self._queued = self._queued, []
            self.runs += 1
            try:
                await self.nft.run(script="".join(scripts))
            except Exception as exc:
                if not isinstance(exc, NftError):
                    self.failures += 1
                    _log.exception("nft_failed", error=str(exc))
                    continue
                if exc.missing or exc.denied or len(scripts) == 1:
                    self._report(exc)
                    continue
                for script in scripts:  # find the bad one; the others still go in
                    self.runs += 1
                    try:
                        await self.nft.run(script=script)
                    except NftError as one:
                        self._report(one)
                    except Exception as one:
                        self.failures += 1
                        _log.exception("nft_failed", error=str(one))

    async def drain(self) -> None:
        """Wait until every queued ban and unban was handed to ``nft``."""
        for _ in range(1000):  # each round waits for one writer; new ones only if more queued
            writer = self._writer
            if writer is None or writer.done():
                return
            await asyncio.shield(writer)

    async def elements(self) -> dict[str, float]:
        """Sources in the kernel's sets with their seconds left (empty when unavailable)."""
        found: dict[str, float] = {}
        for name in ("banned4", "banned6"):
            try:
                objects = await self.nft.json("list", "set", "inet", self.table, name)
            except (NftError, ValueError):
                continue
            for obj in objects:
                for elem in obj.get("set", {}).get("elem", []) or []:
                    found.update(_element(elem))
        return found


def _element(elem: Any) -> dict[str, float]:
    value = elem.get("elem", elem) if isinstance(elem, dict) else elem
    expires = float(value.get("expires", 0)) if isinstance(value, dict) else 0.0
    val = value.get("val", value) if isinstance(value, dict) else value
    if isinstance(val, dict) and "prefix" in val:
        prefix = val["prefix"]
        return {f"{prefix['addr']}/{prefix['len']}": expires}
    if isinstance(val, dict) and "range" in val:
        return {f"{val['range'][0]}-{val['range'][1]}": expires}
    return {str(val): expires}
