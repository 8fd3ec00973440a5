"""Homes never change hands silently.

Removing a user or a workspace leaves its home on disk (data is not destroyed by an account
change). Re-creating the name later must not hand that home to whoever now holds the name: the
home records its owner, and :func:`check_home` refuses a home owned by someone else unless the
administrator chose ``reuse`` (hand it over) or ``purge`` (delete it first).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

from stockade.core.errors import InvalidInput
from stockade.core.files import write_private

from ._uids import UidAllocator
from ._volumes import unmount_below

__all__ = [
    "HOME_OWNER_FILE",
    "check_home",
    "claim_home",
    "claim_homes",
    "guard_homes",
    "home_digest",
    "workspace_homes",
]

#: The file (outside the user's reach: in the parent's ``.owners`` directory) naming a home's owner.
HOME_OWNER_FILE = ".owners"


def _record(home: Path) -> Path:
    return home.parent / HOME_OWNER_FILE / f"{home.name}.json"


def check_home(
    home: Path, owner: str, *, owner_id: str, choice: Literal["refuse", "reuse", "purge"] = "refuse"
) -> None:
    """Before (re-)creating the user or workspace whose home is ``home`` for ``owner``
    (``owner_id`` the store's stable id, so a re-created user with the same name is a different
    owner): pass when no home exists or it is already theirs; with ``reuse`` hand it over; with
    ``purge`` delete it; otherwise raise :class:`InvalidInput` saying which flag to give."""
    record = _record(home)
    if not home.exists():
        return
    previous: dict[str, str] = {}
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except ValueError:
            previous = {}
    if previous.get("owner_id") == owner_id:
        return
    if choice == "purge":
        unmount_below(home)  # a Podman claim's image may be mounted there: rmtree stops at none
        shutil.rmtree(home)
        record.unlink(missing_ok=True)
        return
    if choice == "reuse":
        claim_home(home, owner, owner_id=owner_id)
        return
    held = previous.get("owner", "an unknown owner")
    raise InvalidInput(
        str(home),
        f"this home belonged to {held} (id {previous.get('owner_id', '?')}); "
        "give --reuse-home to hand it to the new owner or --purge to delete it",
    )


def claim_home(home: Path, owner: str, *, owner_id: str) -> None:
    """Record ``owner`` as the holder of ``home`` (call when creating it)."""
    write_private(_record(home), json.dumps({"owner": owner, "owner_id": owner_id}).encode())


def home_digest(workspace: str) -> str:
    """The directory name of a Podman workspace's persistent claims (``homes/<digest>``)."""
    return hashlib.sha256(workspace.encode()).hexdigest()[:16]


def workspace_homes(data_dir: Path, workspace: str) -> list[Path]:
    """Every place ``workspace``'s home can be under ``data_dir``: the sandbox's
    ``workspaces/<name>`` and the Podman runtime's ``homes/<digest>``."""
    return [data_dir / "workspaces" / workspace, data_dir / "homes" / home_digest(workspace)]


_NOBODY_YET = "\0not-created-yet"
"""An owner id no record holds: before creation, every existing home is someone else's."""


def guard_homes(
    data_dir: Path,
    workspace: str,
    owner: str,
    *,
    choice: Literal["refuse", "reuse", "purge"] = "refuse",
    uids: UidAllocator | None = None,
) -> None:
    """Before a user or workspace named ``workspace`` is (re-)created: refuse when one of its
    homes exists (left by an earlier holder of the name), unless ``choice`` is ``reuse`` (kept,
    handed over by :func:`claim_homes`) or ``purge`` (deleted now, with its uid released so the
    newcomer gets a fresh one)."""
    homes = [home for home in workspace_homes(data_dir, workspace) if home.exists()]
    if choice == "reuse":
        return
    for home in homes:
        check_home(home, owner, owner_id=_NOBODY_YET, choice=choice)
    if choice == "purge":
        (uids or UidAllocator(data_dir / "workspace-uids.json")).release(workspace)


def claim_homes(data_dir: Path, workspace: str, owner: str, *, owner_id: str) -> None:
    """After creating it: record ``owner`` (``owner_id``, stable per creation) as the holder of
    every home of ``workspace``, existing or still to come."""
    for home in workspace_homes(data_dir, workspace):
        claim_home(home, owner, owner_id=owner_id)
