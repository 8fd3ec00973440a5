"""Per-workspace uids and home ownership records."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.core.errors import InvalidInput
from stockade.workspace import UidAllocator, check_home, claim_home


def test_uids_are_stable_distinct_and_stored(tmp_path: Path) -> None:
    store = tmp_path / "uids.json"
    first = UidAllocator(store)
    a, b = first.uid("a"), first.uid("b")
    assert a != b
    assert a >= 200000
    again = UidAllocator(store)
    assert again.uid("a") == a
    assert again.uid("b") == b
    assert store.stat().st_mode & 0o777 == 0o600


def test_uid_range_exhaustion_is_refused(tmp_path: Path) -> None:
    tiny = UidAllocator(tmp_path / "u.json", first=5000, count=1)
    tiny.uid("one")
    with pytest.raises(InvalidInput, match="taken"):
        tiny.uid("two")


def test_homes_never_change_hands_silently(tmp_path: Path) -> None:
    home = tmp_path / "homes" / "alice"
    check_home(home, "alice", owner_id="1")  # nothing there yet
    home.mkdir(parents=True)
    (home / "notes").write_text("private")
    claim_home(home, "alice", owner_id="1")
    check_home(home, "alice", owner_id="1")  # still hers
    with pytest.raises(InvalidInput, match="--reuse-home"):
        check_home(home, "alice", owner_id="7")  # a re-created alice is someone else
    check_home(home, "alice", owner_id="7", choice="reuse")
    check_home(home, "alice", owner_id="7")
    check_home(home, "bob", owner_id="9", choice="purge")
    assert not home.exists()


def test_an_unrecorded_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "old"
    home.mkdir()
    with pytest.raises(InvalidInput, match="unknown owner"):
        check_home(home, "new", owner_id="2")
