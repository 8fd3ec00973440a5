"""Homes never change hands silently.

Removing a user or a workspace leaves its home on disk (data is not destroyed by an account
change). Re-creating the name later must not hand that home to whoever now holds the name: the
home records its owner, and :func:`check_home` refuses a home owned by someone else unless the
administrator chose ``reuse`` (hand it over) or ``purge`` (delete it first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from stockade.core.errors import InvalidInput
from stockade.core.files import write_private

__all__ = ["HOME_OWNER_FILE", "check_home", "claim_home"]

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
