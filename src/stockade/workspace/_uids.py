"""Per-workspace uids: each workspace runs as its own uid, stable across restarts.

The allocation is a small JSON file in the data dir (``workspace-uids.json``, 0600), changed
under an exclusive ``flock`` so two processes never hand out one uid twice. uids come from a
range no account on the host uses (default 200000-265535); a released workspace's uid is not
reused, so files left behind never belong to a newcomer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from stockade.core.errors import InvalidInput
from stockade.core.files import write_private

__all__ = ["UidAllocator"]


class UidAllocator:
    """Stable workspace -> uid map stored at ``path``."""

    def __init__(self, path: Path, *, first: int = 200000, count: int = 65536) -> None:
        if first < 1000 or count < 1:
            raise InvalidInput("uid range", "must start at 1000 or above and hold one uid")
        self.path = path
        self.first = first
        self.count = count

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, object]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state: dict[str, object] = {"uids": {}, "next": self.first}
            if self.path.is_file():
                try:
                    state = json.loads(self.path.read_text())
                except ValueError:
                    raise InvalidInput(str(self.path), "not valid JSON; restore it") from None
            before = json.dumps(state, sort_keys=True)
            yield state
            after = json.dumps(state, sort_keys=True)
            if after != before:
                write_private(self.path, after.encode())
        finally:
            os.close(lock)

    def uid(self, workspace: str) -> int:
        """The uid of ``workspace``, allocated on first use."""
        with self._locked() as state:
            uids = state.setdefault("uids", {})
            assert isinstance(uids, dict)
            if workspace in uids:
                return int(uids[workspace])
            nxt = int(str(state.get("next", self.first)))
            if nxt >= self.first + self.count:
                raise InvalidInput("uid range", f"all {self.count} workspace uids are taken")
            uids[workspace] = nxt
            state["next"] = nxt + 1
            return nxt

    def known(self) -> dict[str, int]:
        """Every allocation so far."""
        with self._locked() as state:
            uids = state.get("uids", {})
            assert isinstance(uids, dict)
            return {str(k): int(v) for k, v in uids.items()}

    def release(self, workspace: str) -> None:
        """Forget ``workspace``'s uid (its home was purged): the name gets a new uid next time;
        the old one is never handed out again."""
        with self._locked() as state:
            uids = state.setdefault("uids", {})
            assert isinstance(uids, dict)
            uids.pop(workspace, None)
